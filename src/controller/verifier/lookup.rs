//! What the verifiers accept, for the token controller: the verifier and namespace stores, each
//! verifier's verdict on a token, `status.audiences`, and the outputs a staged credential must reach.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::ApiToken;
use crate::api::verifier::{ApiTokenVerifier, AudienceReason, AudienceStatus, VerifierRef};
use crate::core::credential::Credential;
use crate::core::verifier::render::{self, Rendering, TokenRef};
use crate::core::verifier::trust::{Candidate, Trust, Verdict};
use crate::runtime::cache::{Kept, SecretCache};

/// The verifier and namespace stores, also read by the token controller for `status.audiences`.
#[derive(Clone)]
pub struct Lookup {
    pub verifiers: Store<ApiTokenVerifier>,
    /// Namespace labels for trust selectors; `None` with `--namespace` (no right to read them).
    pub namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
    /// Trusted tokens each verifier's last render left out, and why (names and reasons, never a
    /// credential): their `status.audiences` item says so.
    pub excluded: Arc<Mutex<HashMap<VerifierRef, BTreeMap<TokenRef, String>>>>,
}

impl Lookup {
    /// Why `verifier`'s last render left `token` out, if it did.
    fn exclusion(&self, verifier: &VerifierRef, token: &TokenRef) -> Option<String> {
        let excluded = self.excluded.lock().unwrap_or_else(PoisonError::into_inner);
        excluded.get(verifier)?.get(token).cloned()
    }

    /// Records what `verifier`'s render left out; returns the tokens whose exclusion began or ended.
    pub(super) fn set_excluded(
        &self,
        verifier: &VerifierRef,
        now: BTreeMap<TokenRef, String>,
    ) -> Vec<TokenRef> {
        let mut excluded = self.excluded.lock().unwrap_or_else(PoisonError::into_inner);
        let before = excluded.remove(verifier).unwrap_or_default();
        let changed = before
            .iter()
            .filter(|(t, why)| now.get(*t) != Some(*why))
            .chain(now.iter().filter(|(t, why)| before.get(*t) != Some(*why)))
            .map(|(t, _)| t.clone())
            .collect::<BTreeSet<_>>();
        if !now.is_empty() {
            excluded.insert(verifier.clone(), now);
        }
        changed.into_iter().collect()
    }
}

/// Whether the verifier trusting `trust` accepts `token`.
pub(super) fn verdict(trust: &Trust, token: &ApiToken, lookup: &Lookup) -> Verdict {
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let held = lookup
        .namespaces
        .as_ref()
        .and_then(|store| store.get(&ObjectRef::new(namespace)));
    let labels = held
        .as_ref()
        .map(|n| n.metadata.labels.as_ref().unwrap_or(&EMPTY_LABELS));
    trust.decide(&Candidate {
        namespace,
        role: &token.spec.role,
        audiences: token.spec.audiences.as_deref().unwrap_or_default(),
        scopes: token.spec.scopes.as_deref().unwrap_or_default(),
        namespace_labels: labels,
    })
}

static EMPTY_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// `status.audiences` of `token`: one entry per `spec.audiences` item.
pub fn audiences_of(token: &ApiToken, lookup: &Lookup) -> Vec<AudienceStatus> {
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    token
        .spec
        .audiences
        .iter()
        .flatten()
        .map(|audience| {
            let found = audience.resolve(namespace).ok().and_then(|target| {
                let key = ObjectRef::new(&target.name).within(&target.namespace);
                lookup.verifiers.get(&key)
            });
            let (reason, message) = match found.as_deref().map(crate::core::verifier::validate) {
                None => (AudienceReason::VerifierNotFound, None),
                Some(Err(_)) => (AudienceReason::VerifierInvalid, None),
                Some(Ok(valid)) => {
                    let verdict = verdict(&valid.trust, token, lookup);
                    let scopes = token.spec.scopes.as_deref().unwrap_or_default();
                    let me = TokenRef {
                        namespace: namespace.to_owned(),
                        name: token.name_any(),
                    };
                    match lookup.exclusion(valid.trust.verifier(), &me) {
                        Some(why) if verdict == Verdict::Accepted => {
                            (AudienceReason::Excluded, Some(why))
                        }
                        _ => (
                            verdict
                                .audience_reason()
                                .unwrap_or(AudienceReason::VerifierNotFound),
                            verdict.audience_message(scopes),
                        ),
                    }
                }
            };
            AudienceStatus {
                message,
                ..AudienceStatus::new(audience, reason)
            }
        })
        .collect()
}

/// What the verifiers that accept `token` need before a staged credential of it is promoted:
/// their longest publish delay, and where their outputs are in the cache.
pub struct Accepting<'a> {
    pub publish_delay: SignedDuration,
    secrets: &'a SecretCache,
    /// Each output: its rendering, its Secret and its data key.
    outputs: Vec<(Rendering, ObjectRef<Secret>, String)>,
}

impl Accepting<'_> {
    /// Whether every output holds `credential`. The outputs are read from the cache only here:
    /// they are the largest Secrets the operator holds (up to 1 MiB each, decoded under the cache's
    /// lock), and only a staged credential at its promotion instant needs them, not every reconcile.
    pub fn published(&self, credential: &Credential) -> bool {
        self.outputs.iter().all(|(rendering, secret, key)| {
            self.secrets
                .get(secret)
                .and_then(Kept::whole)
                .and_then(|s| s.data)
                .and_then(|mut d| d.remove(key))
                .is_some_and(|data| render::holds(*rendering, &data.0, credential))
        })
    }
}

/// The verifiers that accept `token` (it names them and they trust it), or `None` when none does.
pub fn accepting<'a>(
    token: &ApiToken,
    lookup: &Lookup,
    secrets: &'a SecretCache,
) -> Option<Accepting<'a>> {
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let mut found: Option<Accepting> = None;
    for audience in token.spec.audiences.iter().flatten() {
        let Ok(target) = audience.resolve(namespace) else {
            continue;
        };
        let key = ObjectRef::new(&target.name).within(&target.namespace);
        let Some(verifier) = lookup.verifiers.get(&key) else {
            continue;
        };
        let Ok(valid) = crate::core::verifier::validate(&verifier) else {
            continue;
        };
        if verdict(&valid.trust, token, lookup) != Verdict::Accepted {
            continue;
        }
        let accepting = found.get_or_insert(Accepting {
            publish_delay: SignedDuration::ZERO,
            secrets,
            outputs: Vec::new(),
        });
        accepting.publish_delay = accepting.publish_delay.max(valid.publish_delay);
        for output in valid.outputs {
            let secret = ObjectRef::new(&output.secret_name).within(&target.namespace);
            accepting
                .outputs
                .push((output.rendering, secret, output.key));
        }
    }
    found
}
