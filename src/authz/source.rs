//! Keeps [`Shared`] equal to the output: one `get`/`watch` on the output Secret by name (so a Role
//! with `resourceNames` and the verbs `get` and `watch` suffices; no `list`), or a mounted file
//! polled for a change.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};

use super::{Output, Shared, map};
use crate::verifier::api::{VERIFIER_LABEL, VerifierRef};

/// How often a mounted file is looked at. A `stat`, unless it changed.
const FILE_POLL: Duration = Duration::from_millis(250);
/// Pause before trying the API server again after an error.
const RETRY: Duration = Duration::from_secs(1);
/// How long one watch request lasts before it is made again (the API server's limit is longer).
const WATCH_SECONDS: u32 = 290;

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
                let api = Api::namespaced(client, &verifier.namespace);
                follow_secret(api, &verifier, &name, &key, &shared).await
            }
            Source::File(path) => follow_file(path, &shared).await,
        }
    }
}

async fn follow_secret(
    api: Api<Secret>,
    verifier: &VerifierRef,
    name: &str,
    key: &str,
    shared: &Shared,
) {
    let load = |secret: Option<&Secret>| {
        shared.set(match secret {
            None => Output::Absent,
            Some(secret) => output_of(secret, verifier, key),
        })
    };
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(WATCH_SECONDS);
    loop {
        // A get, then a watch from its resourceVersion: nothing is missed in between, and neither
        // needs `list`. "0" (absent): the watch starts with the object if it appeared meanwhile.
        let found = match api.get_opt(name).await {
            Ok(found) => found,
            Err(e) => {
                shared.unreachable();
                tracing::warn!(error = %e, "reading the output Secret failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        load(found.as_ref());
        let version = found
            .and_then(|s| s.metadata.resource_version)
            .unwrap_or_else(|| "0".into());
        let events = match api.watch(&params, &version).await {
            Ok(events) => events,
            Err(e) => {
                shared.unreachable();
                tracing::warn!(error = %e, "watching the output Secret failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        shared.reachable();
        futures::pin_mut!(events);
        loop {
            match events.try_next().await {
                Ok(Some(WatchEvent::Added(secret) | WatchEvent::Modified(secret))) => {
                    load(Some(&secret))
                }
                Ok(Some(WatchEvent::Deleted(_))) => load(None),
                Ok(Some(WatchEvent::Bookmark(_))) => {}
                Ok(Some(WatchEvent::Error(status))) => {
                    // 410 Gone (the version is too old) and the like: read afresh.
                    tracing::debug!(code = status.code, reason = %status.reason, "watch ended");
                    break;
                }
                // The request's timeout: watch again after a fresh read (one get per watch keeps
                // this loop free of resourceVersion bookkeeping).
                Ok(None) => break,
                Err(e) => {
                    shared.unreachable();
                    tracing::warn!(error = %e, "the watch on the output Secret broke; retrying");
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            }
        }
    }
}

/// What a Secret read as the verifier's output serves: its map, if the verifier controls it.
/// A Secret of that name that the verifier does not control is refused, as the verifier itself
/// leaves such a Secret alone.
pub fn output_of(secret: &Secret, verifier: &VerifierRef, key: &str) -> Output {
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(VERIFIER_LABEL))
        .is_some_and(|v| *v == verifier.name);
    let owned = secret.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "ApiTokenVerifier"
            && o.api_version.starts_with("tokenmint.dev/")
            && o.name == verifier.name
    });
    if !(labelled && owned) {
        return Output::Invalid(format!(
            "the Secret is not controlled by ApiTokenVerifier {verifier} (label {VERIFIER_LABEL} and \
             a controller ownerReference)"
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
                Some(_) => tokio::task::spawn_blocking(move || match std::fs::read(&read) {
                    Ok(data) => loaded(map::parse(&data)),
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
            match output_of(&secret, &verifier(), key) {
                Output::Invalid(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        let mut uncontrolled = output_secret("pinot", "pinot", EMPTY);
        uncontrolled.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(matches!(
            output_of(&uncontrolled, &verifier(), "tokens.json"),
            Output::Invalid(_)
        ));
    }
}
