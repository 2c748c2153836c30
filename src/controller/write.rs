//! The Secret-write executor: carries out a [`SecretWrite`] the planner decided, with its
//! preconditions, and reports what the API server stored. The token controller and the bench's
//! minimal client (the ceiling it is measured against) both use it.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use crate::api::MANAGER;
use crate::controller::error::Error;
use crate::core::token::plan::SecretWrite;
use crate::core::token::secret;
use crate::runtime::cache::SecretCache;

/// What is told of each object the API server stored or deleted: the Secret cache follows our own
/// writes; a client without a cache keeps nothing (`()`).
pub trait Follow: Sync {
    /// `event` is what `key` became, if it was still at `based_on` (`None`: absent).
    fn stored(
        &self,
        key: &ObjectRef<Secret>,
        based_on: Option<&str>,
        event: watcher::Event<Secret>,
    );
}

impl Follow for SecretCache {
    fn stored(
        &self,
        key: &ObjectRef<Secret>,
        based_on: Option<&str>,
        event: watcher::Event<Secret>,
    ) {
        self.advance(key, based_on, event);
    }
}

impl Follow for () {
    fn stored(&self, _: &ObjectRef<Secret>, _: Option<&str>, _: watcher::Event<Secret>) {}
}

/// How a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The precondition failed: the Secret is not as observed.
    Stale,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Carries out `write` on the Secret `key` and tells `cache` what the API server stored.
///
/// A create is a POST (the only write that fails when the Secret already exists); every update is a
/// server-side apply. The fields set at creation are then owned twice (by the create and by the
/// applies), so a key dropped from `secretTemplate` is removed with an explicit, conditional patch.
pub async fn write_secret(
    api: &Api<Secret>,
    cache: &dyn Follow,
    key: &ObjectRef<Secret>,
    write: &SecretWrite,
) -> Result<Written, Error> {
    let name = key.name.as_str();
    let write_err = |source| Error::WriteSecret {
        name: name.to_owned(),
        source,
    };
    let stored = |mut secret: Secret| {
        secret.metadata.managed_fields = None;
        watcher::Event::Apply(secret)
    };
    let apply = PatchParams::apply(MANAGER).force();
    let result = match write {
        SecretWrite::Nothing => return Ok(Written::Done),
        SecretWrite::Create(secret) => {
            let params = PostParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&params, secret)
                .await
                .map(|created| cache.stored(key, None, stored(created)))
                .map_err(write_err)
        }
        SecretWrite::Update {
            resource_version,
            secret,
            removed,
        } => {
            let nulls = |keys: &[String]| {
                keys.iter()
                    .map(|k| (k.clone(), serde_json::Value::Null))
                    .collect::<serde_json::Map<_, _>>()
            };
            let remove = |version: &str, removed: &secret::Removed| {
                json!({
                    "metadata": {
                        "resourceVersion": version,
                        "labels": nulls(&removed.labels),
                        "annotations": nulls(&removed.annotations),
                    },
                    "data": nulls(&removed.data),
                })
            };
            let mut version = resource_version.clone();
            let mut result = Ok(());
            if !removed.is_empty() {
                result = api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&remove(resource_version, removed)),
                    )
                    .await
                    .map(|updated| {
                        version = updated
                            .metadata
                            .resource_version
                            .clone()
                            .unwrap_or_default();
                        cache.stored(key, Some(resource_version), stored(updated));
                    })
                    .map_err(write_err);
            }
            let mut applied = None;
            if result.is_ok() {
                let mut secret = (**secret).clone();
                secret.metadata.resource_version = Some(version.clone());
                result = api
                    .patch(name, &apply, &Patch::Apply(&secret))
                    .await
                    .map(|updated| applied = Some(updated))
                    .map_err(write_err);
            }
            // Credential keys or sealed annotations that someone else's field manager put there (a
            // planted `next-password`) survive the apply; removed now, pinned to the apply's
            // version. Only after the apply: removed first, the Secret would show, between the two
            // writes, a seal that no longer matches, and a render would drop a valid credential.
            if let Some(updated) = applied {
                let left = secret::leftover_keys(&updated, secret);
                let applied_version = updated
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default();
                cache.stored(key, Some(&version), stored(updated));
                if !left.is_empty() {
                    result = api
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(&remove(&applied_version, &left)),
                        )
                        .await
                        .map(|cleaned| cache.stored(key, Some(&applied_version), stored(cleaned)))
                        .map_err(write_err);
                }
            }
            result
        }
        SecretWrite::Delete {
            uid,
            resource_version,
            wipe,
        } => delete_secret(api, cache, key, uid, resource_version, *wipe).await,
    };
    match result {
        Ok(()) => Ok(Written::Done),
        Err(Error::WriteSecret { source, .. } | Error::DeleteSecret { source, .. })
            if is_conflict(&source) =>
        {
            Ok(Written::Stale)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the Secret if it is still at `resource_version`. With `wipe`, first empties its credential
/// keys under the same precondition: someone else's finalizer would otherwise keep the credential
/// readable for as long as the Secret is Terminating.
async fn delete_secret(
    api: &Api<Secret>,
    cache: &dyn Follow,
    key: &ObjectRef<Secret>,
    uid: &str,
    resource_version: &str,
    wipe: bool,
) -> Result<(), Error> {
    let name = key.name.as_str();
    let mut version = resource_version.to_owned();
    if wipe {
        // A merge patch, not an apply: null removes a key whoever else may also own it; the
        // resourceVersion in the body makes it conditional.
        let removed: serde_json::Map<String, serde_json::Value> = secret::SECRET_BEARING_KEYS
            .iter()
            .map(|k| ((*k).to_owned(), serde_json::Value::Null))
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "data": removed,
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(wiped) => {
                version = wiped.metadata.resource_version.clone().unwrap_or_default();
                let mut wiped = wiped;
                wiped.metadata.managed_fields = None;
                cache.stored(key, Some(resource_version), watcher::Event::Apply(wiped));
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(source) => {
                return Err(Error::WriteSecret {
                    name: name.to_owned(),
                    source,
                });
            }
        }
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: Some(version.clone()),
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => {
            return Err(Error::DeleteSecret {
                name: name.to_owned(),
                source,
            });
        }
    }
    let mut gone = Secret::default();
    gone.metadata.name = Some(key.name.clone());
    gone.metadata.namespace = key.namespace.clone();
    cache.stored(key, Some(&version), watcher::Event::Delete(gone));
    Ok(())
}
