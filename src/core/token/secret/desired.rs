//! The Secret the planner wants: built from the token, its spec and what it holds, sealed; and
//! what an update must remove.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource as _;

use crate::api::ApiToken;
use crate::core::seal::{SEAL_ANNOTATION, SEAL_KEY_ID_ANNOTATION, SealKey};
use crate::core::token::validate::ValidSpec;

use super::*;

/// The Secret as tokenmint wants it: credential in every form, role, scopes, labels and bookkeeping,
/// sealed with `key`.
pub fn desired(token: &ApiToken, spec: &ValidSpec, held: &Held, key: &SealKey) -> Secret {
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        data.insert(key.to_owned(), ByteString(value.into_bytes()));
    };
    put("username", held.credential.access_key.clone());
    put("password", held.credential.secret_key.clone());
    for (key, value) in views(&held.credential) {
        put(key, value);
    }
    if let Some(previous) = &held.previous {
        put("previous-username", previous.credential.access_key.clone());
        put("previous-password", previous.credential.secret_key.clone());
        put("previous-token", previous.credential.bearer());
    }
    if let Some(next) = &held.next {
        put("next-username", next.credential.access_key.clone());
        put("next-password", next.credential.secret_key.clone());
        put("next-token", next.credential.bearer());
    }
    put("role", spec.role.clone());
    put("scopes", spec.scopes.join("\n"));

    let template = token.spec.secret_template.clone().unwrap_or_default();
    let template_keys = template_keys(
        template.labels.iter().flatten().map(|(k, _)| k),
        template.annotations.iter().flatten().map(|(k, _)| k),
    );
    let mut labels = template.labels.unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(
        TOKEN_LABEL.to_owned(),
        token.metadata.name.clone().unwrap_or_default(),
    );
    let mut annotations = template.annotations.unwrap_or_default();
    annotations.insert(FINGERPRINT_ANNOTATION.to_owned(), held.fingerprint());
    annotations.insert(ISSUED_AT_ANNOTATION.to_owned(), rfc3339(held.issued_at));
    annotations.insert(ROTATIONS_ANNOTATION.to_owned(), held.rotations.to_string());
    if let Some(request) = &held.rotate_request {
        annotations.insert(ROTATE_REQUEST_ANNOTATION.to_owned(), request.clone());
    }
    if let Some(request) = &held.retire_request {
        annotations.insert(RETIRE_REQUEST_ANNOTATION.to_owned(), request.clone());
    }
    if let Some(previous) = &held.previous {
        annotations.insert(
            PREVIOUS_FINGERPRINT_ANNOTATION.to_owned(),
            previous.credential.fingerprint(),
        );
        annotations.insert(
            PREVIOUS_RETIRES_AT_ANNOTATION.to_owned(),
            rfc3339(previous.retires_at),
        );
    }
    if let Some(next) = &held.next {
        annotations.insert(
            NEXT_FINGERPRINT_ANNOTATION.to_owned(),
            next.credential.fingerprint(),
        );
        annotations.insert(
            NEXT_PROMOTE_AT_ANNOTATION.to_owned(),
            rfc3339(next.promote_at),
        );
    }
    if !template_keys.is_empty() {
        annotations.insert(TEMPLATE_KEYS_ANNOTATION.to_owned(), template_keys);
    }

    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(token.secret_name().to_owned()),
            namespace: token.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: token.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    reseal(
        &mut secret,
        token.metadata.uid.as_deref().unwrap_or_default(),
        key,
    );
    secret
}

/// Seals `secret` (the Secret of the token with `token_uid`) as it is, under `key`: what only the
/// operator can do. The benchmark, holding the key, uses it to back-date `issued-at` for a storm.
pub fn reseal(secret: &mut Secret, token_uid: &str, key: &SealKey) {
    let seal = key.seal(token_uid, sealed_fields(secret));
    let annotations = secret.metadata.annotations.get_or_insert_default();
    annotations.insert(SEAL_ANNOTATION.to_owned(), seal);
    annotations.insert(SEAL_KEY_ID_ANNOTATION.to_owned(), key.id().to_owned());
}

/// `label:<key>,annotation:<key>,...` for the template's keys (neither kind of key may hold a comma
/// or a colon before its name part, so the list reads back unambiguously).
pub(super) fn template_keys<'k>(
    labels: impl Iterator<Item = &'k String>,
    annotations: impl Iterator<Item = &'k String>,
) -> String {
    let labels = labels.map(|k| format!("label:{k}"));
    let annotations = annotations.map(|k| format!("annotation:{k}"));
    labels.chain(annotations).collect::<Vec<_>>().join(",")
}

/// Keys an update removes explicitly: template keys tokenmint put on a Secret that its template no
/// longer has (before the apply), and credential keys and sealed annotations that the desired Secret
/// lacks ([`leftover_keys`], after it). A server-side apply removes only the fields its own manager
/// set; a key someone else planted (`next-password` under a stripped seal, say) would survive the
/// re-issue, break the new seal and make the token re-issue for ever.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
    pub data: Vec<String>,
}

impl Removed {
    /// Nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty() && self.data.is_empty()
    }
}

/// The credential keys and sealed annotations `applied` (the Secret as a server-side apply of
/// `desired` left it) holds that `desired` lacks: another field manager's, which the apply cannot
/// remove.
pub fn leftover_keys(applied: &Secret, desired: &Secret) -> Removed {
    let mut left = Removed::default();
    let desired_data = desired.data.as_ref();
    for key in applied.data.iter().flatten().map(|(k, _)| k) {
        let ours = CREDENTIAL_KEYS.contains(&key.as_str()) || NEXT_KEYS.contains(&key.as_str());
        if ours && !desired_data.is_some_and(|d| d.contains_key(key)) {
            left.data.push(key.clone());
        }
    }
    for name in SEALED_ANNOTATIONS.iter().chain(&NEXT_ANNOTATIONS) {
        if annotation(applied, name).is_some() && annotation(desired, name).is_none() {
            left.annotations.push((*name).to_owned());
        }
    }
    left
}

/// The keys `observed` records as put there by its template that `desired`'s template lacks.
pub fn removed_template_keys(observed: &Secret, desired: &Secret) -> Removed {
    let listed = |secret: &Secret| -> Vec<(String, String)> {
        annotation(secret, TEMPLATE_KEYS_ANNOTATION)
            .into_iter()
            .flat_map(|list| list.split(','))
            .filter_map(|entry| entry.split_once(':'))
            .map(|(kind, key)| (kind.to_owned(), key.to_owned()))
            .collect()
    };
    let wanted = listed(desired);
    let mut removed = Removed::default();
    for (kind, key) in listed(observed) {
        if wanted.contains(&(kind.clone(), key.clone())) {
            continue;
        }
        match kind.as_str() {
            "label" => removed.labels.push(key),
            "annotation" => removed.annotations.push(key),
            _ => {}
        }
    }
    removed
}

/// Whether the Secret still holds any secret credential material.
pub fn holds_credential(secret: &Secret) -> bool {
    secret
        .data
        .iter()
        .flatten()
        .any(|(k, _)| SECRET_BEARING_KEYS.contains(&k.as_str()))
}

/// Whether `observed` already carries everything in `desired` (extra keys others added are left alone)
/// and no template key that was removed since.
pub fn in_sync(observed: &Secret, desired: &Secret) -> bool {
    fn contains<V: PartialEq>(
        have: Option<&BTreeMap<String, V>>,
        want: Option<&BTreeMap<String, V>>,
    ) -> bool {
        want.into_iter()
            .flatten()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    }
    contains(observed.data.as_ref(), desired.data.as_ref())
        && contains(
            observed.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
        )
        && contains(
            observed.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
        )
        && observed.type_ == desired.type_
        && annotation(observed, TEMPLATE_KEYS_ANNOTATION)
            == annotation(desired, TEMPLATE_KEYS_ANNOTATION)
        // Our keys that must go (a retired previous credential) are not "extra keys of others".
        && CREDENTIAL_KEYS
            .iter()
            .chain(&NEXT_KEYS)
            .all(|k| has_data(observed, k) == has_data(desired, k))
        && SEALED_ANNOTATIONS
            .iter()
            .chain(&NEXT_ANNOTATIONS)
            .all(|k| annotation(observed, k).is_some() == annotation(desired, k).is_some())
}

pub(super) fn has_data(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
}
