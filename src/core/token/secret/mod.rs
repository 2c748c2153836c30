//! The Secret that carries a token's credential: building it, and reading credential state back from it.
//!
//! Credential state lives with the Secret (its data and `tokenmint.dev/*` annotations), not in the
//! ApiToken's status, so losing status, restarting, or reading a stale status never changes a credential.

mod desired;
mod observe;
mod packed;

pub use desired::*;
pub use observe::*;
pub use packed::*;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use crate::core::credential::Credential;

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

/// Labels tokenmint puts on the Secrets it writes, token Secrets and verifier outputs.
pub const OUR_LABELS: [&str; 3] = [
    MANAGED_BY_LABEL,
    TOKEN_LABEL,
    crate::api::verifier::VERIFIER_LABEL,
];

/// Whether tokenmint writes and reads `key` in a token Secret: the credential in every form, the
/// staged and previous credentials, role and scopes. Keys others add are left alone, never read.
pub fn is_read_key(key: &str) -> bool {
    CREDENTIAL_KEYS.contains(&key) || NEXT_KEYS.contains(&key) || key == "role" || key == "scopes"
}

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

/// RFC 3339 at whole seconds, the precision Kubernetes keeps.
pub fn rfc3339(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

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
