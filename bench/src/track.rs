//! Watch-based observers: when did each token become Active, when did each credential rotate, and
//! when did each credential enter or leave each verifier output.
//!
//! Every time is taken when the watch event reaches the bench, so it includes the API server's
//! watch delivery, as a user waiting on `kubectl wait` would see it.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokenmint::api::verifier::VERIFIER_LABEL;
use tokenmint::api::{ApiToken, Phase};
use tokenmint::core::token::secret::{ROTATIONS_ANNOTATION, managed_selector};
use tokio::sync::watch;

use crate::BenchResult;

/// What one object says right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Reading {
    active: bool,
    rotations: u64,
    next_rotation: Option<i64>,
    /// The current credential's access key (a token's status, a token Secret's `username`).
    access_key: Option<String>,
    /// What a verifier output lets in (outputs only).
    output: Option<OutputReading>,
}

/// A verifier output as one watch event shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OutputReading {
    resource_version: String,
    /// Access keys with a credential in it: htpasswd users, sha256-map `accessKey`s.
    access_keys: HashSet<String>,
    /// Bytes of its data.
    bytes: usize,
}

/// Parses an output Secret: htpasswd lines, or a sha256-map (`{"tokens": {hash: {accessKey, ..}}}`).
fn read_output(secret: &Secret) -> OutputReading {
    let mut reading = OutputReading {
        resource_version: secret.resource_version().unwrap_or_default(),
        ..OutputReading::default()
    };
    for data in secret.data.iter().flat_map(|d| d.values()) {
        reading.bytes += data.0.len();
        let text = String::from_utf8_lossy(&data.0);
        if text.starts_with('{') {
            let map: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let items = map["tokens"]
                .as_object()
                .into_iter()
                .flat_map(|t| t.values());
            reading
                .access_keys
                .extend(items.filter_map(|item| item["accessKey"].as_str().map(str::to_owned)));
        } else {
            let users = text.lines().filter_map(|line| line.split_once(':'));
            reading
                .access_keys
                .extend(users.map(|(user, _)| user.to_owned()));
        }
    }
    reading
}

/// Per object, the first time each reading was seen.
#[derive(Default)]
pub struct Seen {
    /// First time the object was seen Active (tokens only).
    pub active_at: HashMap<String, Instant>,
    /// First time a given rotation count was seen: (monotonic, wall clock).
    pub rotations_at: HashMap<(String, u64), (Instant, SystemTime)>,
    /// Latest `status.nextRotationAt` (tokens only), Unix seconds.
    pub next_rotation: HashMap<String, i64>,
    /// Latest rotation count.
    pub rotations: HashMap<String, u64>,
    /// Latest access key of each token or token Secret.
    pub access_keys: HashMap<String, String>,
    /// Outputs: the access keys each holds now.
    pub held: HashMap<String, HashSet<String>>,
    /// Outputs: first time (output, access key) was seen in it, and first time it was seen gone.
    pub appeared_at: HashMap<(String, String), Instant>,
    pub vanished_at: HashMap<(String, String), Instant>,
    /// Outputs: distinct resourceVersions seen (one per write while the watch runs).
    pub versions: HashMap<String, u64>,
    last_version: HashMap<String, String>,
    /// Outputs: bytes of data now.
    pub bytes: HashMap<String, usize>,
}

impl Seen {
    /// How many objects have reached at least `rotations`.
    pub fn rotated(&self, rotations: u64) -> usize {
        self.rotations.values().filter(|r| **r >= rotations).count()
    }

    /// When the last of `outputs` came to hold `access_key`, if all hold it now.
    pub fn in_all(&self, outputs: &[String], access_key: &str) -> Option<Instant> {
        self.last_of(outputs, access_key, true)
    }

    /// When the last of `outputs` let go of `access_key`, if none holds it now.
    pub fn gone_from_all(&self, outputs: &[String], access_key: &str) -> Option<Instant> {
        self.last_of(outputs, access_key, false)
    }

    fn last_of(&self, outputs: &[String], access_key: &str, present: bool) -> Option<Instant> {
        let times = if present {
            &self.appeared_at
        } else {
            &self.vanished_at
        };
        outputs
            .iter()
            .map(|output| {
                let holds = self
                    .held
                    .get(output)
                    .is_some_and(|k| k.contains(access_key));
                (holds == present)
                    .then(|| times.get(&(output.clone(), access_key.to_owned())).copied())
                    .flatten()
            })
            .collect::<Option<Vec<Instant>>>()?
            .into_iter()
            .max()
    }

    /// How many access keys the output holds now.
    pub fn holding(&self, output: &str) -> usize {
        self.held.get(output).map_or(0, HashSet::len)
    }

    fn record_output(&mut self, name: &str, reading: OutputReading, now: Instant) {
        if self.last_version.get(name) != Some(&reading.resource_version) {
            *self.versions.entry(name.to_owned()).or_default() += 1;
            self.last_version
                .insert(name.to_owned(), reading.resource_version);
        }
        let before = self.held.remove(name).unwrap_or_default();
        for key in reading.access_keys.difference(&before) {
            self.appeared_at
                .entry((name.to_owned(), key.clone()))
                .or_insert(now);
        }
        for key in before.difference(&reading.access_keys) {
            self.vanished_at
                .entry((name.to_owned(), key.clone()))
                .or_insert(now);
        }
        self.held.insert(name.to_owned(), reading.access_keys);
        self.bytes.insert(name.to_owned(), reading.bytes);
    }
}

/// A watch over one kind in one namespace, recording [`Seen`].
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    /// Watches ApiTokens in `api`'s namespace; returns once the initial list is done.
    pub async fn tokens(api: Api<ApiToken>) -> BenchResult<Tracker> {
        Self::start(api, watcher::Config::default(), |t: &ApiToken| {
            let status = t.status.as_ref();
            Reading {
                active: status.and_then(|s| s.phase) == Some(Phase::Active),
                rotations: status.and_then(|s| s.rotations).unwrap_or(0),
                next_rotation: status
                    .and_then(|s| s.next_rotation_at.as_ref())
                    .map(|t| t.0.as_second()),
                access_key: status.and_then(|s| s.access_key.clone()),
                output: None,
            }
        })
        .await
    }

    /// Watches tokenmint's Secrets; a Secret's reading is its rotations annotation.
    pub async fn secrets(api: Api<Secret>) -> BenchResult<Tracker> {
        let config = watcher::Config::default().labels(&managed_selector());
        Self::start(api, config, |s: &Secret| Reading {
            active: true,
            rotations: s
                .annotations()
                .get(ROTATIONS_ANNOTATION)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            next_rotation: None,
            access_key: s
                .data
                .as_ref()
                .and_then(|d| d.get("username"))
                .map(|u| String::from_utf8_lossy(&u.0).into_owned()),
            output: None,
        })
        .await
    }

    /// Watches the verifier outputs (Secrets labelled with their verifier) in `api`'s namespace.
    pub async fn outputs(api: Api<Secret>) -> BenchResult<Tracker> {
        let config = watcher::Config::default().labels(VERIFIER_LABEL);
        Self::start(api, config, |s: &Secret| Reading {
            output: Some(read_output(s)),
            ..Reading::default()
        })
        .await
    }

    async fn start<K>(
        api: Api<K>,
        config: watcher::Config,
        read: fn(&K) -> Reading,
    ) -> BenchResult<Tracker>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, changed) = watch::channel(0u64);
        let (synced_tx, synced) = tokio::sync::oneshot::channel();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                let objects = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced_tx.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("bench: watch error (retrying): {e}");
                        continue;
                    }
                };
                let (now, wall) = (Instant::now(), SystemTime::now());
                {
                    let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                    for object in objects {
                        let name = object.name_any();
                        let reading = read(&object);
                        if reading.active {
                            seen.active_at.entry(name.clone()).or_insert(now);
                        }
                        if let Some(at) = reading.next_rotation {
                            seen.next_rotation.insert(name.clone(), at);
                        }
                        if let Some(key) = reading.access_key {
                            seen.access_keys.insert(name.clone(), key);
                        }
                        if let Some(output) = reading.output {
                            seen.record_output(&name, output, now);
                        }
                        seen.rotations_at
                            .entry((name.clone(), reading.rotations))
                            .or_insert((now, wall));
                        seen.rotations.insert(name, reading.rotations);
                    }
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        tokio::time::timeout(Duration::from_secs(60), synced)
            .await
            .map_err(|_| "watch did not sync within 60s")?
            .map_err(|_| "watch task ended")?;
        Ok(Tracker {
            seen,
            changed,
            task,
        })
    }

    /// Runs `f` over what has been seen so far.
    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until `done` holds for what has been seen, or `timeout` passes.
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Seen) -> bool,
    ) -> BenchResult<()> {
        let wait = async {
            loop {
                self.changed.borrow_and_update();
                if self.with(&mut done) {
                    return Ok(());
                }
                if self.changed.changed().await.is_err() {
                    return Err("watch task ended");
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(format!("timed out after {timeout:?} waiting for {what}").into()),
        }
    }
}
