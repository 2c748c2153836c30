//! The Secret that carries a token's credential: building it, and reading credential state back from it.
//!
//! Credential state lives with the Secret (its data and `tokenmint.dev/*` annotations), not in the
//! ApiToken's status, so losing status, restarting, or reading a stale status never changes a credential.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource as _;

use crate::api::ApiToken;
use crate::core::credential::{Credential, fingerprint_of};
use crate::core::seal::{Field, SEAL_ANNOTATION, SEAL_KEY_ID_ANNOTATION, SealKey};
use crate::core::token::validate::ValidSpec;

/// Label every Secret we make carries; the operator watches only Secrets with it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "tokenmint";
/// Label naming the ApiToken a Secret belongs to.
pub const TOKEN_LABEL: &str = "tokenmint.dev/apitoken";
/// Annotation: fingerprint of the credential in the Secret (same as status).
pub const FINGERPRINT_ANNOTATION: &str = "tokenmint.dev/fingerprint";
/// Annotation: when the credential in the Secret was minted (RFC 3339).
pub const ISSUED_AT_ANNOTATION: &str = "tokenmint.dev/issued-at";
/// Annotation: how many times the credential has been replaced.
pub const ROTATIONS_ANNOTATION: &str = "tokenmint.dev/rotations";
/// Annotation: the last `tokenmint.dev/rotate` request carried out for this credential.
pub const ROTATE_REQUEST_ANNOTATION: &str = "tokenmint.dev/rotate-request";
/// Annotation: the label and annotation keys `secretTemplate` put on the Secret, so a key removed
/// from the template is removed from the Secret too.
pub const TEMPLATE_KEYS_ANNOTATION: &str = "tokenmint.dev/template-keys";
/// Annotation: the last `tokenmint.dev/retire-previous` request carried out.
pub const RETIRE_REQUEST_ANNOTATION: &str = "tokenmint.dev/retire-request";
/// Annotation: fingerprint of the previous credential, during an overlap.
pub const PREVIOUS_FINGERPRINT_ANNOTATION: &str = "tokenmint.dev/previous-fingerprint";
/// Annotation: when the previous credential retires (RFC 3339), during an overlap.
pub const PREVIOUS_RETIRES_AT_ANNOTATION: &str = "tokenmint.dev/previous-retires-at";
/// Annotation: fingerprint of the staged next credential, while verifiers publish it.
pub const NEXT_FINGERPRINT_ANNOTATION: &str = "tokenmint.dev/next-fingerprint";
/// Annotation: the earliest instant the staged next credential becomes current (RFC 3339).
pub const NEXT_PROMOTE_AT_ANNOTATION: &str = "tokenmint.dev/next-promote-at";
/// Kubernetes Secret type for username/password credentials.
pub const SECRET_TYPE: &str = "kubernetes.io/basic-auth";

/// Data keys that hold credential material; revocation empties them, the seal covers them.
pub const CREDENTIAL_KEYS: [&str; 9] = [
    "username",
    "password",
    "token",
    "basic",
    "authorization-bearer",
    "authorization-basic",
    "previous-username",
    "previous-password",
    "previous-token",
];

/// The credential keys that hold secret material: all but the access keys, which are public (status
/// shows them). Revocation empties these; a `kubernetes.io/basic-auth` Secret must keep `username`
/// or `password`, so the access key stays.
pub const SECRET_BEARING_KEYS: [&str; 9] = [
    "password",
    "token",
    "basic",
    "authorization-bearer",
    "authorization-basic",
    "previous-password",
    "previous-token",
    "next-password",
    "next-token",
];

/// Data keys of a staged next credential. Sealed only when present, so a Secret sealed before
/// staging existed keeps a valid seal.
pub const NEXT_KEYS: [&str; 3] = ["next-username", "next-password", "next-token"];

/// Annotations of a staged next credential, sealed like [`NEXT_KEYS`].
const NEXT_ANNOTATIONS: [&str; 2] = [NEXT_FINGERPRINT_ANNOTATION, NEXT_PROMOTE_AT_ANNOTATION];

/// Annotations the seal covers besides the credential keys: tokenmint's bookkeeping.
const SEALED_ANNOTATIONS: [&str; 7] = [
    FINGERPRINT_ANNOTATION,
    ISSUED_AT_ANNOTATION,
    ROTATIONS_ANNOTATION,
    ROTATE_REQUEST_ANNOTATION,
    RETIRE_REQUEST_ANNOTATION,
    PREVIOUS_FINGERPRINT_ANNOTATION,
    PREVIOUS_RETIRES_AT_ANNOTATION,
];

/// Label selector matching every Secret tokenmint manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// The credential a Secret holds and the bookkeeping minted with it. `Debug` never shows the secret key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub credential: Credential,
    pub issued_at: Timestamp,
    pub rotations: u64,
    /// The manual rotation request this credential answered (or that was pending when it was minted).
    pub rotate_request: Option<String>,
    /// The last retire-previous request carried out.
    pub retire_request: Option<String>,
    /// During an overlap: the credential this one replaced, valid until it retires.
    pub previous: Option<Previous>,
    /// A credential minted for the next rotation, in the Secret so verifiers can publish it before
    /// it becomes current (stage, publish, promote).
    pub next: Option<Next>,
}

/// A staged credential: verifiers accept it from the moment it is staged; the token's current keys
/// hold it from `promote_at` on, once every verifier that accepts the token has published it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Next {
    pub credential: Credential,
    pub promote_at: Timestamp,
}

/// The credential a rotation replaced, kept valid for the overlap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previous {
    pub credential: Credential,
    pub retires_at: Timestamp,
}

impl Held {
    /// Fingerprint of the held credential.
    pub fn fingerprint(&self) -> String {
        self.credential.fingerprint()
    }
}

/// What the Secret named by a token looks like from the token's point of view.
// Built once per reconcile on the stack; boxing the owned variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Observed<'a> {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that this ApiToken does not control; never touched.
    Foreign,
    /// Our Secret. `held` is `Err` with a reason when its credential keys were altered or its seal is
    /// wrong; `seal` says whether the current key vouches for it.
    Owned {
        secret: &'a Secret,
        held: Result<Held, Tampered>,
        seal: Seal,
    },
}

/// Whether the operator's current key vouches for a Secret's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// Sealed by the current key, and the seal matches.
    Valid,
    /// No seal (made before the seal existed) or a seal under another key: believed only where it
    /// agrees with the token's status, and then re-sealed.
    Unverified,
}

/// Names keys and the verdict, never a value: a Secret's data is credential material.
impl std::fmt::Debug for Observed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observed::Missing => f.write_str("Missing"),
            Observed::Foreign => f.write_str("Foreign"),
            Observed::Owned { secret, held, seal } => f
                .debug_struct("Owned")
                .field("secret", &Redacted(secret))
                .field("held", held)
                .field("seal", seal)
                .finish(),
        }
    }
}

/// Shows a Secret by name, resourceVersion and data keys; never its values.
pub struct Redacted<'a>(pub &'a Secret);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let meta = &self.0.metadata;
        f.debug_struct("Secret")
            .field("name", &meta.name)
            .field("namespace", &meta.namespace)
            .field("resource_version", &meta.resource_version)
            .field(
                "data_keys",
                &self
                    .0
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .field(
                "annotation_keys",
                &meta
                    .annotations
                    .iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// How a Secret's credential was found altered. Carries no credential material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Tampered(pub String);

/// Classifies `secret` (the Secret named `token.secret_name()`, if any) relative to `token`, checking
/// its seal with `key`.
pub fn observe<'a>(token: &ApiToken, secret: Option<&'a Secret>, key: &SealKey) -> Observed<'a> {
    let Some(secret) = secret else {
        return Observed::Missing;
    };
    let uid = token.metadata.uid.as_deref();
    let controlled =
        secret.metadata.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true) && Some(o.uid.as_str()) == uid && o.kind == "ApiToken"
        });
    if !controlled {
        return Observed::Foreign;
    }
    let (held, seal) = match check_seal(secret, uid.unwrap_or_default(), key) {
        Ok(seal) => (read_held(secret), seal),
        Err(tampered) => (Err(tampered), Seal::Valid),
    };
    Observed::Owned { secret, held, seal }
}

/// Whether the Secret controlled by a token with `uid` carries a valid seal under `key`. A seal made
/// with the current key that does not match is tampering.
fn check_seal(secret: &Secret, uid: &str, key: &SealKey) -> Result<Seal, Tampered> {
    let (Some(seal), Some(key_id)) = (
        annotation(secret, SEAL_ANNOTATION),
        annotation(secret, SEAL_KEY_ID_ANNOTATION),
    ) else {
        return Ok(Seal::Unverified);
    };
    if key_id != key.id() {
        return Ok(Seal::Unverified);
    }
    if key.verify(uid, sealed_fields(secret), seal) {
        Ok(Seal::Valid)
    } else {
        Err(Tampered(
            "its bookkeeping does not match the seal tokenmint wrote".to_owned(),
        ))
    }
}

/// The fields the seal covers, in a fixed order.
fn sealed_fields(secret: &Secret) -> impl Iterator<Item = Field<'_>> {
    let data = CREDENTIAL_KEYS.into_iter().map(|name| Field {
        name,
        value: secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|v| v.0.as_slice()),
    });
    let annotations = SEALED_ANNOTATIONS.into_iter().map(|name| Field {
        name,
        value: annotation(secret, name).map(str::as_bytes),
    });
    // Fields added after the seal existed count only when present: older Secrets keep their seal,
    // and adding or removing such a field still breaks it.
    let next_data = NEXT_KEYS.into_iter().filter_map(|name| {
        let value = secret.data.as_ref()?.get(name)?;
        Some(Field {
            name,
            value: Some(value.0.as_slice()),
        })
    });
    let next_annotations = NEXT_ANNOTATIONS.into_iter().filter_map(|name| {
        Some(Field {
            name,
            value: Some(annotation(secret, name)?.as_bytes()),
        })
    });
    data.chain(annotations)
        .chain(next_data)
        .chain(next_annotations)
}

fn data_str<'s>(secret: &'s Secret, key: &str) -> Result<&'s str, Tampered> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| Tampered(format!("key {key} is missing")))?;
    std::str::from_utf8(&value.0).map_err(|_| Tampered(format!("key {key} is not UTF-8")))
}

fn annotation<'s>(secret: &'s Secret, key: &str) -> Option<&'s str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Reads the credential back and checks that every form agrees with every other and with the
/// fingerprint annotation. Any disagreement means someone else edited the Secret.
fn read_held(secret: &Secret) -> Result<Held, Tampered> {
    let access_key = data_str(secret, "username")?;
    let secret_key = data_str(secret, "password")?;
    let bearer = data_str(secret, "token")?;
    let changed = |key: &str| Tampered(format!("key {key} no longer matches the credential"));
    let prefix = bearer
        .strip_suffix(&format!("{access_key}-{secret_key}"))
        .ok_or_else(|| changed("token"))?;
    let credential = Credential {
        prefix: prefix.to_owned(),
        access_key: access_key.to_owned(),
        secret_key: secret_key.to_owned(),
    };
    for (key, expected) in views(&credential) {
        if data_str(secret, key)? != expected {
            return Err(changed(key));
        }
    }
    if annotation(secret, FINGERPRINT_ANNOTATION) != Some(fingerprint_of(bearer).as_str()) {
        return Err(Tampered(
            "the credential no longer matches its fingerprint".to_owned(),
        ));
    }
    let issued_at = annotation(secret, ISSUED_AT_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| {
            Tampered(format!(
                "annotation {ISSUED_AT_ANNOTATION} is missing or invalid"
            ))
        })?;
    let rotations = annotation(secret, ROTATIONS_ANNOTATION)
        .map(str::parse::<u64>)
        .transpose()
        .map_err(|_| Tampered(format!("annotation {ROTATIONS_ANNOTATION} is invalid")))?
        .unwrap_or(0);
    Ok(Held {
        credential,
        issued_at,
        rotations,
        rotate_request: annotation(secret, ROTATE_REQUEST_ANNOTATION).map(str::to_owned),
        retire_request: annotation(secret, RETIRE_REQUEST_ANNOTATION).map(str::to_owned),
        previous: read_previous(secret)?,
        next: read_next(secret)?,
    })
}

/// A credential's three keys under `prefix` (`previous-` or `next-`), checked against the
/// fingerprint annotation `fingerprint_key`; `None` when none of the keys is there.
fn read_extra(
    secret: &Secret,
    prefix: &str,
    fingerprint_key: &str,
) -> Result<Option<Credential>, Tampered> {
    let keys = ["username", "password", "token"].map(|k| format!("{prefix}{k}"));
    let has = |k: &str| secret.data.as_ref().is_some_and(|d| d.contains_key(k));
    let present = keys.iter().filter(|k| has(k)).count();
    if present == 0 && annotation(secret, fingerprint_key).is_none() {
        return Ok(None);
    }
    let what = prefix.trim_end_matches('-');
    if present != keys.len() {
        return Err(Tampered(format!("the {what} credential is incomplete")));
    }
    let access_key = data_str(secret, &keys[0])?;
    let secret_key = data_str(secret, &keys[1])?;
    let bearer = data_str(secret, &keys[2])?;
    let prefix_of_token = bearer
        .strip_suffix(&format!("{access_key}-{secret_key}"))
        .ok_or_else(|| Tampered(format!("key {} no longer matches", keys[2])))?;
    if annotation(secret, fingerprint_key) != Some(fingerprint_of(bearer).as_str()) {
        return Err(Tampered(format!(
            "the {what} credential no longer matches its fingerprint"
        )));
    }
    Ok(Some(Credential {
        prefix: prefix_of_token.to_owned(),
        access_key: access_key.to_owned(),
        secret_key: secret_key.to_owned(),
    }))
}

/// The staged next credential, if the Secret holds one.
fn read_next(secret: &Secret) -> Result<Option<Next>, Tampered> {
    let Some(credential) = read_extra(secret, "next-", NEXT_FINGERPRINT_ANNOTATION)? else {
        return Ok(None);
    };
    let promote_at = annotation(secret, NEXT_PROMOTE_AT_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| Tampered("the next credential is incomplete".to_owned()))?;
    Ok(Some(Next {
        credential,
        promote_at,
    }))
}

/// The previous credential of an overlap, if the Secret holds one. Its keys and annotations come
/// together or not at all.
fn read_previous(secret: &Secret) -> Result<Option<Previous>, Tampered> {
    let retires = annotation(secret, PREVIOUS_RETIRES_AT_ANNOTATION);
    let Some(credential) = read_extra(secret, "previous-", PREVIOUS_FINGERPRINT_ANNOTATION)? else {
        return match retires {
            None => Ok(None),
            Some(_) => Err(Tampered("the previous credential is incomplete".to_owned())),
        };
    };
    let retires_at = retires
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| Tampered("the previous credential is incomplete".to_owned()))?;
    Ok(Some(Previous {
        credential,
        retires_at,
    }))
}

/// A Secret's credential keys reduced to the credentials they are forms of, for the Secret cache:
/// a token Secret's six current keys and the three of each `previous-` and `next-` credential are
/// all derived from (prefix, access key, secret key), so the cache keeps those three strings per
/// credential and rebuilds the keys byte for byte when a reconcile reads the Secret. A group whose
/// keys are not exactly the forms of one credential (edited, revoked, incomplete) is left in the
/// data as it is, so the planner's checks see every byte anyone wrote. `Debug` shows no value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Packed(Box<[u8]>);

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} bytes)", self.0.len())
    }
}

/// Key prefixes of the credentials a Secret can hold: current, previous, staged next.
const CREDENTIAL_GROUPS: [&str; 3] = ["", "previous-", "next-"];

/// The keys and values of the credential under `prefix`, as tokenmint writes them.
fn group_forms(prefix: &str, credential: &Credential) -> Vec<(String, String)> {
    let mut forms = vec![
        (format!("{prefix}username"), credential.access_key.clone()),
        (format!("{prefix}password"), credential.secret_key.clone()),
    ];
    if prefix.is_empty() {
        forms.extend(views(credential).map(|(k, v)| (k.to_owned(), v)));
    } else {
        forms.push((format!("{prefix}token"), credential.bearer()));
    }
    forms
}

impl Packed {
    /// Takes out of `data` every credential group that is exactly the forms of one credential.
    pub fn take(data: &mut BTreeMap<String, ByteString>) -> Packed {
        let mut packed = Vec::new();
        for (tag, prefix) in CREDENTIAL_GROUPS.into_iter().enumerate() {
            let text = |key: &str| {
                let value = data.get(&format!("{prefix}{key}"))?;
                std::str::from_utf8(&value.0).ok()
            };
            let (Some(access_key), Some(secret_key), Some(bearer)) =
                (text("username"), text("password"), text("token"))
            else {
                continue;
            };
            let Some(token_prefix) = bearer.strip_suffix(&format!("{access_key}-{secret_key}"))
            else {
                continue;
            };
            let credential = Credential {
                prefix: token_prefix.to_owned(),
                access_key: access_key.to_owned(),
                secret_key: secret_key.to_owned(),
            };
            let forms = group_forms(prefix, &credential);
            if !forms
                .iter()
                .all(|(k, v)| data.get(k).is_some_and(|held| held.0 == v.as_bytes()))
            {
                continue;
            }
            for (key, _) in &forms {
                data.remove(key);
            }
            packed.push(tag as u8);
            for part in [
                &credential.prefix,
                &credential.access_key,
                &credential.secret_key,
            ] {
                packed.extend_from_slice(&(part.len() as u32).to_le_bytes());
                packed.extend_from_slice(part.as_bytes());
            }
        }
        Packed(packed.into_boxed_slice())
    }

    /// Puts the packed credential keys back into `data`.
    pub fn restore(&self, data: &mut BTreeMap<String, ByteString>) {
        let mut rest = &self.0[..];
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            let mut part = || {
                let (len, tail) = rest.split_first_chunk::<4>()?;
                let (text, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
                rest = tail;
                String::from_utf8(text.to_vec()).ok()
            };
            let (Some(prefix), Some(access_key), Some(secret_key)) = (part(), part(), part())
            else {
                return;
            };
            let Some(group) = CREDENTIAL_GROUPS.get(usize::from(tag)) else {
                return;
            };
            let credential = Credential {
                prefix,
                access_key,
                secret_key,
            };
            for (key, value) in group_forms(group, &credential) {
                data.insert(key, ByteString(value.into_bytes()));
            }
        }
    }
}

/// The derived forms of a credential, keyed by Secret key (username and password excluded).
fn views(credential: &Credential) -> [(&'static str, String); 4] {
    let bearer = credential.bearer();
    let basic = credential.basic();
    [
        ("authorization-bearer", format!("Bearer {bearer}")),
        ("authorization-basic", format!("Basic {basic}")),
        ("token", bearer),
        ("basic", basic),
    ]
}

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
fn template_keys<'k>(
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

fn has_data(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
}

/// RFC 3339 at whole seconds, the precision Kubernetes keeps.
pub fn rfc3339(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, String)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.clone().into_bytes())))
            .collect()
    }

    fn credential(n: u8) -> Credential {
        Credential {
            prefix: "tm_".into(),
            access_key: format!("AK{n}"),
            secret_key: format!("secret-{n}"),
        }
    }

    fn full() -> BTreeMap<String, ByteString> {
        let mut all: Vec<(&str, String)> = Vec::new();
        for (prefix, n) in [("", 1), ("previous-", 2), ("next-", 3)] {
            for (k, v) in group_forms(prefix, &credential(n)) {
                all.push((Box::leak(k.into_boxed_str()), v));
            }
        }
        all.push(("role", "reader".into()));
        data(&all)
    }

    #[test]
    fn packed_credentials_come_back_byte_for_byte() {
        let original = full();
        let mut kept = original.clone();
        let packed = Packed::take(&mut kept);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["role"]);
        packed.restore(&mut kept);
        assert_eq!(kept, original);
        assert!(!format!("{packed:?}").contains("secret-1"));
    }

    #[test]
    fn an_edited_or_incomplete_credential_stays_as_it_is() {
        let mut edited = full();
        edited.insert("basic".into(), ByteString(b"planted".to_vec()));
        edited.remove("previous-password");
        let original = edited.clone();
        let packed = Packed::take(&mut edited);
        // Only the untouched next credential was packed.
        assert!(edited.contains_key("basic") && edited.contains_key("previous-username"));
        assert!(!edited.contains_key("next-token"));
        packed.restore(&mut edited);
        assert_eq!(edited, original);
    }

    #[test]
    fn nothing_to_pack_is_nothing() {
        let mut output = data(&[("htpasswd", "AK1:{SSHA}x".into())]);
        let packed = Packed::take(&mut output);
        assert_eq!(packed, Packed::default());
        assert!(output.contains_key("htpasswd"));
    }
}
