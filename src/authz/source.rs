//! Keeps [`Shared`] equal to the output: a list and a watch of that one Secret, by name (so a Role
//! with `resourceNames` and the verbs `list` and `watch` suffices), or a mounted file polled for a
//! change.
//!
//! The watch resumes from the newest version the API server gave (an event's or a bookmark's), so an
//! API server restart or a burst of other Secrets' changes costs one request, not a loop; only a
//! `410 Gone` lists again, and errors back off. Each watch lasts half of `--max-stale` (at most the
//! API server's usual 290 s) and a watch that stays silent past its own end counts as broken, so a
//! connection that dies without a reset is noticed within `--max-stale`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt as _};

use super::{Output, Shared, map};
use crate::api::verifier::{ApiTokenVerifier, VERIFIER_LABEL, VerifierRef};
use crate::runtime::watch::WatchBackoff;

/// How often a mounted file is looked at. A `stat`, unless it changed.
const FILE_POLL: Duration = Duration::from_millis(250);
/// The longest one watch request lasts before it is made again (the API server's usual limit).
const WATCH_SECONDS_MAX: u64 = 290;
/// The shortest, whatever `--max-stale` says.
const WATCH_SECONDS_MIN: u64 = 5;
/// A watch the API server ends sooner than this counts as failed, and the next waits.
const SHORTEST_WATCH: Duration = Duration::from_secs(1);
/// How long past its own end a watch may stay silent before its connection counts as dead.
const SILENCE_MARGIN: Duration = Duration::from_secs(5);

/// Where the output comes from.
pub enum Source {
    /// The Secret `name` in the verifier's namespace, through the API.
    Secret {
        client: kube::Client,
        verifier: VerifierRef,
        name: String,
    },
    /// A mounted copy (a Secret volume: `key` is a symlink through `..data`, swapped by the kubelet).
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Secret { verifier, name, .. } => {
                write!(
                    f,
                    "Secret {}/{name} of verifier {verifier}",
                    verifier.namespace
                )
            }
            Source::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl Source {
    /// Follows the source for ever, reading the map under `key` (Secret only).
    pub async fn follow(self, key: String, shared: Arc<Shared>) {
        match self {
            Source::Secret {
                client,
                verifier,
                name,
            } => {
                let follow = Follow {
                    secrets: Api::namespaced(client.clone(), &verifier.namespace),
                    owner: Owner {
                        verifiers: Api::namespaced(client, &verifier.namespace),
                        verifier,
                        uid: None,
                    },
                    name,
                    key,
                };
                follow.run(&shared).await
            }
            Source::File(path) => follow_file(path, &shared).await,
        }
    }
}

/// How long one watch lasts: half of `max_stale`, so a watch that ended on time confirms the output
/// at least twice within it.
fn watch_seconds(max_stale: Option<Duration>) -> u64 {
    max_stale
        .map_or(WATCH_SECONDS_MAX, |d| d.as_secs() / 2)
        .clamp(WATCH_SECONDS_MIN, WATCH_SECONDS_MAX)
}

/// The verifier whose output is served, and its uid once read: an ownerReference counts only with
/// the uid of the verifier that exists now, not merely its name.
struct Owner {
    verifiers: Api<ApiTokenVerifier>,
    verifier: VerifierRef,
    uid: Option<String>,
}

impl Owner {
    /// The verifier's uid, read again when `claimed` (the Secret's controller uid) differs from the
    /// one known: the verifier may have been deleted and made again. `None` when it does not exist.
    async fn uid(
        &mut self,
        claimed: Option<&str>,
        metrics: &super::server::AuthzMetrics,
    ) -> Result<Option<&str>, kube::Error> {
        if self.uid.is_none() || self.uid.as_deref() != claimed {
            metrics.requested("get");
            self.uid = self
                .verifiers
                .get_opt(&self.verifier.name)
                .await?
                .and_then(|v| v.metadata.uid);
        }
        Ok(self.uid.as_deref())
    }
}

struct Follow {
    secrets: Api<Secret>,
    owner: Owner,
    name: String,
    key: String,
}

/// Why a watch ended.
enum Ended {
    /// On time, or the API server closed it: watch again from the version held.
    Resume,
    /// `410 Gone`: the version held is too old; list again.
    Relist,
    /// An error: list again after a backoff.
    Failed,
}

impl Follow {
    async fn run(mut self, shared: &Shared) {
        let seconds = watch_seconds(shared.max_stale());
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(seconds as u32);
        let silence = Duration::from_secs(seconds) + SILENCE_MARGIN;
        let mut backoff = WatchBackoff::default();
        let mut version: Option<String> = None;
        let mut relisted = false;
        loop {
            let from = match version.take() {
                Some(from) => from,
                None => match self.list(shared).await {
                    Ok(from) => from,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the output Secret failed; retrying");
                        tokio::time::sleep(backoff.next().unwrap_or(SILENCE_MARGIN)).await;
                        continue;
                    }
                },
            };
            let (ended, held) = self.watch(&params, from, silence, shared).await;
            match ended {
                Ended::Resume => kube::runtime::utils::Backoff::reset(&mut backoff),
                // Once at once; a list whose own version is gone again waits like an error.
                Ended::Relist if relisted => {
                    tokio::time::sleep(backoff.next().unwrap_or(SILENCE_MARGIN)).await
                }
                Ended::Relist => {
                    tracing::debug!(
                        "the output's version is gone from the API server; listing again"
                    )
                }
                Ended::Failed => tokio::time::sleep(backoff.next().unwrap_or(SILENCE_MARGIN)).await,
            }
            relisted = matches!(ended, Ended::Relist);
            version = match ended {
                Ended::Relist => None,
                Ended::Resume | Ended::Failed => held,
            };
        }
    }

    /// Reads the output (a list of the one name, which also gives a version to watch from) and
    /// serves it.
    async fn list(&mut self, shared: &Shared) -> Result<String, kube::Error> {
        let params = ListParams::default().fields(&format!("metadata.name={}", self.name));
        shared.metrics.requested("list");
        let list = self.secrets.list(&params).await?;
        let secret = list.items.into_iter().find(|s| s.name_any() == self.name);
        self.load(secret.as_ref(), shared).await?;
        Ok(list.metadata.resource_version.unwrap_or_default())
    }

    /// One watch from `from`; returns why it ended and the newest version seen.
    async fn watch(
        &mut self,
        params: &WatchParams,
        from: String,
        silence: Duration,
        shared: &Shared,
    ) -> (Ended, Option<String>) {
        shared.metrics.requested("watch");
        let events = match self.secrets.watch(params, &from).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "watching the output Secret failed; retrying");
                return (Ended::Failed, Some(from));
            }
        };
        shared.confirmed();
        let started = std::time::Instant::now();
        futures::pin_mut!(events);
        let mut version = Some(from);
        loop {
            let event = match tokio::time::timeout(silence, events.try_next()).await {
                Err(_) => {
                    tracing::warn!(
                        seconds = silence.as_secs(),
                        "the watch on the output Secret went silent; reconnecting"
                    );
                    return (Ended::Failed, version);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the watch on the output Secret broke; retrying");
                    return (Ended::Failed, version);
                }
                // Ended by the API server: on time, or so soon that it counts as an error (a
                // server that closes every watch at once must not be asked again at once).
                Ok(Ok(None)) if started.elapsed() < SHORTEST_WATCH => {
                    return (Ended::Failed, version);
                }
                Ok(Ok(None)) => {
                    shared.confirmed();
                    return (Ended::Resume, version);
                }
                Ok(Ok(Some(event))) => event,
            };
            let loaded = match event {
                WatchEvent::Added(secret) | WatchEvent::Modified(secret) => {
                    version = secret.resource_version();
                    self.load(Some(&secret), shared).await
                }
                WatchEvent::Deleted(secret) => {
                    version = secret.resource_version();
                    self.load(None, shared).await
                }
                WatchEvent::Bookmark(bookmark) => {
                    version = Some(bookmark.metadata.resource_version);
                    shared.confirmed();
                    Ok(())
                }
                WatchEvent::Error(status) if status.code == 410 => return (Ended::Relist, None),
                WatchEvent::Error(status) => {
                    tracing::warn!(code = status.code, reason = %status.reason, "the watch on the output Secret ended with an error");
                    return (Ended::Failed, None);
                }
            };
            if let Err(e) = loaded {
                tracing::warn!(error = %e, "reading the output's verifier failed; retrying");
                return (Ended::Failed, None);
            }
        }
    }

    /// Serves `secret` (`None`: absent) if the verifier controls it.
    async fn load(&mut self, secret: Option<&Secret>, shared: &Shared) -> Result<(), kube::Error> {
        let Some(secret) = secret else {
            shared.set(Output::Absent);
            return Ok(());
        };
        let claimed = controller_uid(secret, &self.owner.verifier);
        let uid = self
            .owner
            .uid(claimed, &shared.metrics)
            .await?
            .map(str::to_owned);
        shared.set(output_of(
            secret,
            &self.owner.verifier,
            uid.as_deref(),
            &self.key,
        ));
        Ok(())
    }
}

/// The uid in the Secret's controller ownerReference, if that names the verifier.
fn controller_uid<'s>(secret: &'s Secret, verifier: &VerifierRef) -> Option<&'s str> {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == "ApiTokenVerifier"
                && o.api_version.starts_with("tokenmint.dev/")
                && o.name == verifier.name
        })
        .map(|o| o.uid.as_str())
}

/// What a Secret read as the verifier's output serves: its map, if the verifier controls it.
/// A Secret of that name that the verifier does not control is refused, as the verifier itself
/// leaves such a Secret alone.
pub fn output_of(
    secret: &Secret,
    verifier: &VerifierRef,
    verifier_uid: Option<&str>,
    key: &str,
) -> Output {
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(VERIFIER_LABEL))
        .is_some_and(|v| *v == verifier.name);
    let owned = verifier_uid.is_some() && controller_uid(secret, verifier) == verifier_uid;
    if !(labelled && owned) {
        return Output::Invalid(format!(
            "the Secret is not controlled by ApiTokenVerifier {verifier} (label {VERIFIER_LABEL} and \
             a controller ownerReference with the verifier's uid)"
        ));
    }
    match secret.data.as_ref().and_then(|d| d.get(key)) {
        None => Output::Invalid(format!("the Secret has no data key {key:?}")),
        Some(data) => loaded(map::parse(&data.0)),
    }
}

fn loaded(parsed: Result<map::Credentials, map::MapError>) -> Output {
    match parsed {
        Ok(credentials) => Output::Loaded(Arc::new(credentials)),
        Err(e) => Output::Invalid(e.to_string()),
    }
}

/// What identifies one version of a file cheaply: a kubelet update swaps the `..data` symlink, so
/// the path resolves to another inode; an edit in place changes the size or the modification time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Version {
    device: u64,
    inode: u64,
    size: u64,
    modified: Option<std::time::SystemTime>,
}

fn version_of(meta: &std::fs::Metadata) -> Version {
    use std::os::unix::fs::MetadataExt as _;
    Version {
        device: meta.dev(),
        inode: meta.ino(),
        size: meta.len(),
        modified: meta.modified().ok(),
    }
}

async fn follow_file(path: PathBuf, shared: &Shared) {
    let mut last: Option<Option<Version>> = None;
    loop {
        // Follows symlinks, as reading does; one stat does not need a blocking thread.
        let now = match std::fs::metadata(&path) {
            Ok(meta) => Some(version_of(&meta)),
            Err(_) => None,
        };
        if last != Some(now) {
            let read = path.clone();
            let output = match now {
                None => Output::Absent,
                // Parsed as it is read: a large map is never held whole as text.
                Some(_) => tokio::task::spawn_blocking(move || match std::fs::File::open(&read) {
                    Ok(file) => loaded(map::parse_from(std::io::BufReader::new(file))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Output::Absent,
                    Err(e) => Output::Invalid(format!("cannot read the file: {}", e.kind())),
                })
                .await
                .unwrap_or_else(|_| Output::Invalid("reading the file failed".into())),
            };
            shared.set(output);
            last = Some(now);
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn a_watch_lasts_half_of_max_stale_within_bounds() {
        assert_eq!(watch_seconds(Some(Duration::from_secs(60))), 30);
        assert_eq!(
            watch_seconds(Some(Duration::from_secs(1))),
            WATCH_SECONDS_MIN
        );
        assert_eq!(
            watch_seconds(Some(Duration::from_secs(3600))),
            WATCH_SECONDS_MAX
        );
        assert_eq!(watch_seconds(None), WATCH_SECONDS_MAX);
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    fn verifier() -> VerifierRef {
        VerifierRef {
            namespace: "data".into(),
            name: "pinot".into(),
        }
    }

    fn output_secret(owner: &str, label: &str, data: &[u8]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("pinot-tokens".into()),
                labels: Some([(VERIFIER_LABEL.to_owned(), label.to_owned())].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "tokenmint.dev/v1alpha1".into(),
                    kind: "ApiTokenVerifier".into(),
                    name: owner.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            data: Some([("tokens.json".to_owned(), ByteString(data.to_vec()))].into()),
            ..Default::default()
        }
    }

    const EMPTY: &[u8] = b"{\"tokens\":{},\"version\":1}\n";

    #[test]
    fn the_verifiers_own_output_is_loaded() {
        let out = output_of(
            &output_secret("pinot", "pinot", EMPTY),
            &verifier(),
            Some("u"),
            "tokens.json",
        );
        assert!(matches!(out, Output::Loaded(_)), "{out:?}");
    }

    #[test]
    fn a_secret_the_verifier_does_not_control_or_without_the_key_is_refused() {
        for (secret, key, why) in [
            (
                output_secret("other", "pinot", EMPTY),
                "tokens.json",
                "not controlled",
            ),
            (
                output_secret("pinot", "other", EMPTY),
                "tokens.json",
                "not controlled",
            ),
            (
                output_secret("pinot", "pinot", EMPTY),
                "map.json",
                "no data key",
            ),
            (
                output_secret("pinot", "pinot", b"{}"),
                "tokens.json",
                "not a sha256-map",
            ),
        ] {
            match output_of(&secret, &verifier(), Some("u"), key) {
                Output::Invalid(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        let mut uncontrolled = output_secret("pinot", "pinot", EMPTY);
        uncontrolled.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(matches!(
            output_of(&uncontrolled, &verifier(), Some("u"), "tokens.json"),
            Output::Invalid(_)
        ));
        // The verifier's name with another uid (a forged or stale ownerReference), or a verifier
        // that does not exist, controls nothing.
        for uid in [Some("other-uid"), None] {
            assert!(matches!(
                output_of(
                    &output_secret("pinot", "pinot", EMPTY),
                    &verifier(),
                    uid,
                    "tokens.json"
                ),
                Output::Invalid(_)
            ));
        }
    }
}
