//! Writes what authz has let in as usage records in its own namespace ([`crate::core::usage`]): each
//! `--usage-flush-interval`, the credentials due (first seen, or seen a granularity after their last
//! write) go into their shard's record, one request per shard that changed, merged with what other
//! replicas wrote so a last use never moves backwards. Checks only bump a counter in the map they
//! were checked against ([`super::map::Credentials::note_use`]); this task reads those counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use super::Shared;
use super::map::Credentials;
use crate::core::usage::{self, Ledger, Minute};

/// How long the write at shutdown may take.
pub const LAST_WRITE: Duration = Duration::from_secs(5);
/// Attempts of one record's write when other replicas write it at the same time.
const ATTEMPTS: usize = 4;

/// Where and how often to write.
pub struct Settings {
    pub client: kube::Client,
    /// authz's own namespace.
    pub namespace: String,
    /// `namespace/name` of the verifier served.
    pub verifier: String,
    pub granularity: Duration,
    pub every: Duration,
}

/// Uses noted in maps that have since been replaced: taken at the swap, so a reload loses none.
#[derive(Debug, Default)]
pub struct Replaced(Mutex<Vec<(String, String, Minute)>>);

impl Replaced {
    /// Keeps the uses noted in `old`.
    pub(super) fn keep(&self, old: &Credentials) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend(
            uses(old).map(|(key, token, minute)| (key.to_owned(), token.into_owned(), minute)),
        );
    }

    fn take(&self) -> Vec<(String, String, Minute)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Notes every use seen since the last look into `ledger`.
fn gather(shared: &Shared, ledger: &mut Ledger) {
    if let Some(replaced) = &shared.replaced {
        for (key, token, minute) in replaced.take() {
            ledger.note(&key, &token, minute);
        }
    }
    if let Some(credentials) = shared.loaded() {
        for (key, token, minute) in uses(&credentials) {
            ledger.note(key, &token, minute);
        }
    }
}

/// The uses noted in `credentials`: access key, token (`namespace/name`), minute.
fn uses(
    credentials: &Credentials,
) -> impl Iterator<Item = (&str, std::borrow::Cow<'_, str>, Minute)> {
    credentials.uses().map(|(grant, minute)| {
        let token = String::from_utf8_lossy(grant.token.as_bytes());
        (grant.access_key.as_str(), token, minute)
    })
}

/// Writes usage records until `stop` turns true, then once more.
pub async fn write(
    settings: Settings,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut writer = Writer {
        api: Api::namespaced(settings.client.clone(), &settings.namespace),
        verifier: settings.verifier.clone(),
        granularity: settings.granularity.as_secs().to_string(),
        known: HashMap::new(),
        shared: shared.clone(),
    };
    let mut ledger = Ledger::new(settings.granularity);
    tracing::info!(namespace = %settings.namespace, verifier = %settings.verifier,
        granularity = ?settings.granularity, "recording last use of credentials");
    // The first record says which verifier this authz serves, used or not: its tokens' last use is
    // known (`never` until one is let in), not unknown.
    writer.write_shard(0, &[]).await.ok();
    let mut tick = tokio::time::interval(settings.every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        gather(&shared, &mut ledger);
        for (shard, entries) in ledger.due() {
            match writer.write_shard(shard, &entries).await {
                Ok(()) => ledger.written(&entries),
                Err(e) => {
                    tracing::warn!(shard, error = %e, "could not write a usage record; will retry")
                }
            }
        }
        ledger.forget_idle(usage::minute_of(Timestamp::now()));
        if stopping {
            return;
        }
    }
}

/// Why a record was not written this time.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("written by other replicas {0} times in a row")]
    Contended(usize),
}

struct Writer {
    api: Api<ConfigMap>,
    verifier: String,
    /// The granularity in seconds, as the records say it.
    granularity: String,
    /// The last version of each record read or written: a write needs no read unless another
    /// replica wrote in between.
    known: HashMap<u8, ConfigMap>,
    shared: Arc<Shared>,
}

impl Writer {
    /// Merges `entries` into record `shard`, creating it if absent.
    async fn write_shard(
        &mut self,
        shard: u8,
        entries: &[(String, String, Minute)],
    ) -> Result<(), WriteError> {
        let name = usage::record_name(&self.verifier, shard);
        let metrics = &self.shared.metrics;
        for _ in 0..ATTEMPTS {
            let current = match self.known.get(&shard) {
                Some(known) => Some(known.clone()),
                None => {
                    metrics.requested("get");
                    self.api.get_opt(&name).await?
                }
            };
            let now = Timestamp::now();
            let uses = entries.iter().map(|(k, t, m)| (k.as_str(), t.as_str(), *m));
            let result = match current {
                None => {
                    let data = usage::merge(&BTreeMap::new(), uses, now);
                    metrics.requested("create");
                    self.api
                        .create(&PostParams::default(), &self.record(&name, data, None))
                        .await
                }
                Some(existing) => {
                    let old = existing.data.clone().unwrap_or_default();
                    let data = usage::merge(&old, uses, now);
                    if data == old && self.is_ours(&existing) {
                        return Ok(());
                    }
                    let version = existing.metadata.resource_version.clone();
                    metrics.requested("update");
                    self.api
                        .replace(
                            &name,
                            &PostParams::default(),
                            &self.record(&name, data, version),
                        )
                        .await
                }
            };
            match result {
                Ok(written) => {
                    self.known.insert(shard, written);
                    return Ok(());
                }
                // Another replica wrote it (or it was deleted): read it again and merge.
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    self.known.remove(&shard);
                }
                Err(e) => {
                    self.known.remove(&shard);
                    return Err(e.into());
                }
            }
        }
        Err(WriteError::Contended(ATTEMPTS))
    }

    fn is_ours(&self, record: &ConfigMap) -> bool {
        let labelled = record
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(usage::RECORD_LABEL))
            .is_some_and(|v| v == usage::RECORD_VERSION);
        let annotation = |key: &str| {
            let annotations = record.metadata.annotations.as_ref();
            annotations.and_then(|a| a.get(key)).cloned()
        };
        labelled
            && annotation(usage::VERIFIER_ANNOTATION).as_ref() == Some(&self.verifier)
            && annotation(usage::GRANULARITY_ANNOTATION).as_ref() == Some(&self.granularity)
    }

    fn record(
        &self,
        name: &str,
        data: BTreeMap<String, String>,
        resource_version: Option<String>,
    ) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version,
                labels: Some(BTreeMap::from([
                    (
                        usage::RECORD_LABEL.to_owned(),
                        usage::RECORD_VERSION.to_owned(),
                    ),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "tokenmint-authz".to_owned(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([
                    (usage::VERIFIER_ANNOTATION.to_owned(), self.verifier.clone()),
                    (
                        usage::GRANULARITY_ANNOTATION.to_owned(),
                        self.granularity.clone(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        }
    }
}
