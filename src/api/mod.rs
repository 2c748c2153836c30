//! The `ApiToken` custom resource (`tokenmint.dev/v1alpha1`).
//!
//! Doc comments here become the CRD's descriptions (`kubectl explain apitoken.spec`).
//! Everything the API server can check itself is declared here (patterns, bounds, CEL);
//! what only the operator can judge lives in [`crate::core::token::validate`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

pub mod names;
pub mod verifier;

use verifier::{AudienceRef, AudienceStatus};

/// API group of every tokenmint resource.
pub const GROUP: &str = "tokenmint.dev";
/// Field manager used for every server-side apply and create.
pub const MANAGER: &str = "tokenmint";
/// Annotation on an ApiToken that requests a manual rotation when set to a value not yet handled.
pub const ROTATE_ANNOTATION: &str = "tokenmint.dev/rotate";
/// Annotation on an ApiToken that retires the previous credential at once when set to a value not yet
/// handled (the previous credential leaked).
pub const RETIRE_ANNOTATION: &str = "tokenmint.dev/retire-previous";

const ROLE_PATTERN: &str = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$";
const SCOPE_TYPE_PATTERN: &str = r"^[A-Z][A-Z_]*(:[A-Z][A-Z_]*)?$";
const RESOURCE_PATTERN: &str = r"^[A-Za-z0-9_.-]+$";
const PERIOD_PATTERN: &str = r"^([0-9]+[wdhms])+$";
const PREFIX_PATTERN: &str = r"^[A-Za-z0-9_-]*$";
/// No control characters (and no Unicode line or paragraph separators): a newline in a filter would
/// forge a second line in the Secret's `scopes` key.
const FILTER_PATTERN: &str = r"^[^\p{Cc}\x{2028}\x{2029}]+$";
const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// An API token: one credential (access key + secret key) kept in a Secret in every form an app needs,
/// rotated on schedule or on request, and revoked by setting `revoked: true` or letting `expiresAt` pass.
// clippy reads the repeated `type_ = "string"` inside separate printcolumn(...) entries as one
// attribute given twice; they are distinct columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tokenmint.dev",
    version = "v1alpha1",
    kind = "ApiToken",
    plural = "apitokens",
    singular = "apitoken",
    shortname = "apitok",
    category = "tokenmint",
    namespaced,
    status = "ApiTokenStatus",
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Access Key", type_ = "string", json_path = ".status.accessKey"),
    printcolumn(
        name = "Next Rotation",
        // A date column prints ages, and kubectl shows "<invalid>" for a time in the future.
        type_ = "string",
        json_path = ".status.nextRotationAt"
    ),
    printcolumn(
        name = "Last Used",
        // Empty when no use is recorded: `kubectl apitoken list` tells never from unknown.
        type_ = "date",
        json_path = ".status.lastUsedAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[kube(
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name: at most 63 characters (it becomes the value of the Secret's tokenmint.dev/apitoken label)")
)]
#[x_kube(
    validation = Rule::new("!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)")
        .message("spec.revoked: revocation is final and cannot be undone; create a new ApiToken instead")
        .field_path(".revoked"),
    validation = Rule::new("has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)")
        .message("spec.secretName is immutable: it cannot be set, changed or removed after creation")
        .field_path(".secretName")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenSpec {
    /// Role granted to the token; decides what the token may do (least privilege).
    #[schemars(length(min = 1, max = 63), pattern(ROLE_PATTERN))]
    pub role: String,

    /// Free text that helps people recognise the token in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// Scopes in Tinybird's model; each becomes a line `TYPE[:resource[:filter]]` in the Secret's `scopes` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y.type == x.type && (has(y.resource) ? y.resource : '') == (has(x.resource) ? x.resource : '')))")
        .message("spec.scopes: no two scopes may have the same type and resource"))]
    pub scopes: Option<Vec<Scope>>,

    /// Scheduled rotation. Absent: the credential changes only on request or when tampered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,

    /// ApiTokenVerifiers this token is for, as `<name>` (same namespace) or `<namespace>/<name>`; at
    /// most 16. A verifier includes the token only if it also trusts the token's namespace and role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "set"))]
    pub audiences: Option<Vec<AudienceRef>>,

    /// RFC 3339 instant at which the token stops being valid and its Secret is deleted. Before the year 9000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self < timestamp('9000-01-01T00:00:00Z')")
        .message("spec.expiresAt must be before the year 9000"))]
    pub expires_at: Option<Time>,

    /// Revokes the token: the Secret is deleted and the ApiToken stays as the record. Final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,

    /// Name of the Secret holding the credential, in the token's namespace. Defaults to the ApiToken's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,

    /// Extra labels and annotations for the Secret (the ApiToken's own are never copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// Shape of the credential: Bearer prefix and key lengths. Applies to credentials minted after a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TokenFormat>,

    /// Workloads in this namespace that read the credential only when they start (an environment
    /// variable, a `subPath` mount): after each rotation is promoted, tokenmint restarts each once,
    /// and with an overlap keeps the previous credential until they have moved (bounded). At most 16.
    /// Needs the chart's `consumers.enabled` (RBAC to read and patch workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y.kind == x.kind && y.name == x.name))")
        .message("spec.consumers: each workload at most once"))]
    pub consumers: Option<Vec<Consumer>>,

    /// What happens to a token nobody uses: a Warning, then revocation. Judged from
    /// `status.lastUsedAt` (or creation, if never used), only while an authz that reports use checks
    /// the token (`status.usageTracked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity: Option<Inactivity>,
}

/// An inactivity policy: warn after `warnAfter` without a use, revoke after `revokeAfter`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.warnAfter) || has(self.revokeAfter)")
    .message("spec.inactivity: set warnAfter, revokeAfter or both"))]
pub struct Inactivity {
    /// Without a use for this long, `Unused=True` and a Warning Event. Default, with `revokeAfter`:
    /// a week before it (half of it when that is shorter than two weeks). Same syntax as
    /// `rotation.period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), pattern(PERIOD_PATTERN))]
    pub warn_after: Option<String>,
    /// Without a use for this long, and at least the warning period after the Warning, the token is
    /// revoked (phase `Revoked`, reason `Unused`): for good, like `revoked: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), pattern(PERIOD_PATTERN))]
    pub revoke_after: Option<String>,
}

/// A workload that reads the token's credential when it starts.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct Consumer {
    /// `Deployment`, `StatefulSet` or `DaemonSet` (apps/v1), in the token's namespace.
    pub kind: ConsumerKind,
    /// The workload's name.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// The workload kinds a consumer may be.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum ConsumerKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl ConsumerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Deployment => "Deployment",
            ConsumerKind::StatefulSet => "StatefulSet",
            ConsumerKind::DaemonSet => "DaemonSet",
        }
    }
}

/// What tokenmint last did for one consumer, and where its rollout stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub kind: ConsumerKind,
    pub name: String,
    /// `Current` (runs the current credential as far as tokenmint knows), `Pending` (a restart is
    /// queued), `RollingOut`, `Stuck` (the rollout does not progress), `NotFound`, `Forbidden`
    /// (tokenmint may not read or patch it: the chart's `consumers.enabled`) or `Conflict` (another
    /// field manager owns tokenmint's pod-template annotation).
    pub state: String,
    /// Fingerprint of the credential the workload was last restarted for, or found running with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When tokenmint last restarted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<Time>,
    /// Why, for the states that are not `Current`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One permission of the token, e.g. `DATASOURCES:READ` on resource `events` with a row filter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.filter) || has(self.resource)")
    .message("filter needs resource: a row filter applies to one resource")
    .field_path(".filter"))]
#[x_kube(validation = Rule::new("!has(self.resource) || self.type.contains(':') || !self.resource.matches('^[A-Z][A-Z_]*$')")
    .message("an upper-case resource of a one-word type reads as part of the type (PIPES with resource READ is PIPES:READ); use a two-word type or another resource name")
    .field_path(".resource"))]
pub struct Scope {
    /// Scope type, e.g. `ADMIN`, `TOKENS`, `DATASOURCES:READ`, `DATASOURCES:APPEND`, `PIPES:READ`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 64), pattern(SCOPE_TYPE_PATTERN))]
    pub type_: String,

    /// The data source, pipe or other resource the scope is limited to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(RESOURCE_PATTERN))]
    pub resource: Option<String>,

    /// Row filter applied when the token reads `resource`, e.g. `tenant_id = 42`. No control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(FILTER_PATTERN))]
    pub filter: Option<String>,
}

/// When the credential is replaced on schedule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Time between rotations: `<integer><unit>` pairs with units w, d, h, m, s (`30d`, `12h`, `1h30m`). 1m to 3650d.
    #[schemars(length(min = 2, max = 64), pattern(PERIOD_PATTERN))]
    pub period: String,
    /// How long the credential a rotation replaces stays valid beside the new one, so clients can move
    /// without a failed request. Same syntax as `period`, and shorter than it. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), pattern(PERIOD_PATTERN))]
    pub overlap: Option<String>,
}

/// Extra metadata for the generated Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(self.labels) || !('app.kubernetes.io/managed-by' in self.labels || 'tokenmint.dev/apitoken' in self.labels)")
        .message("secretTemplate.labels may not set app.kubernetes.io/managed-by or tokenmint.dev/apitoken: tokenmint owns them")
        .field_path(".labels"),
    validation = Rule::new("!has(self.annotations) || self.annotations.all(k, !k.startsWith('tokenmint.dev/'))")
        .message("secretTemplate.annotations may not use the tokenmint.dev/ prefix: tokenmint owns it")
        .field_path(".annotations")
)]
pub struct SecretTemplate {
    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Shape of the credential.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenFormat {
    /// Prefix of the Bearer token (`<prefix><accessKey>-<secretKey>`). Default `tm-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), pattern(PREFIX_PATTERN))]
    pub prefix: Option<String>,
    /// Length of the access key (the username). Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 64))]
    pub access_key_length: Option<u8>,
    /// Length of the secret key (the password). Default 32, at least 20 (over 112 bits, so a fast hash is a sound verifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 20, max = 128))]
    pub secret_key_length: Option<u8>,
}

/// Where the token stands. Never holds the secret key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenStatus {
    /// `Pending`, `Active`, `Revoked`, `Expired` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Public half of the credential (the username, Starburst's "Client ID").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    /// `sha256:` and the first 16 hex characters of the SHA-256 of the Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Secret that holds the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the current credential was minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// When the next scheduled rotation happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
    /// Copied from spec.expiresAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When revocation (or expiry) was carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
    /// How many times the credential has been replaced (0 for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotations: Option<u64>,
    /// Last value of the tokenmint.dev/rotate annotation that was carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// During a rotation overlap only: the credential that is still valid until `retiresAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousCredential>,
    /// While a rotation is staged only: the credential that verifiers publish now and that becomes
    /// current at `promoteAt`. Recorded so that, under a missing or foreign seal, a staged credential
    /// that status does not record is known to be planted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextCredential>,
    /// Last value of the tokenmint.dev/retire-previous annotation that was carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retire_request: Option<String>,
    /// When any credential of this token was last let in by a `tokenmint authz` that reports use (to
    /// the minute, and up to the authz's granularity old). Never moves backwards; kept across
    /// rotations and revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// True when a verifier that accepts this token is served by a `tokenmint authz` that reports
    /// use: no `lastUsedAt` then means never used. False or absent: last use is unknown (htpasswd
    /// servers and authz without usage records report none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_tracked: bool,
    /// One entry per spec.consumers item: the last restart, and its rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub consumers: Vec<ConsumerStatus>,
    /// One entry per spec.audiences item: whether that verifier accepts this token, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub audiences: Vec<AudienceStatus>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions, one per type; `Ready` is always present once reconciled, `Stalled` while the
    /// token waits on a human (`InvalidSpec`, `SecretConflict`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The credential a rotation replaced, still valid during the overlap. Never its secret key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreviousCredential {
    /// Public half of the previous credential.
    pub access_key: String,
    /// Fingerprint of the previous credential.
    pub fingerprint: String,
    /// When the previous credential stops being valid.
    pub retires_at: Time,
    /// When the previous credential was last let in (see `status.lastUsedAt`): still in use, or
    /// safe to retire early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
}

/// A staged credential, published by verifiers before it becomes current. Never its secret key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NextCredential {
    /// Public half of the staged credential.
    pub access_key: String,
    /// Fingerprint of the staged credential.
    pub fingerprint: String,
    /// The earliest instant it becomes current.
    pub promote_at: Time,
}

/// Lifecycle phase of a token.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, credential not issued yet.
    Pending,
    /// The credential in the Secret is valid.
    Active,
    /// Revoked by `spec.revoked`; the Secret is gone.
    Revoked,
    /// `expiresAt` has passed; the Secret is gone.
    Expired,
    /// Cannot be issued (invalid spec or a Secret owned by someone else).
    Failed,
}

impl Phase {
    /// The phase as written in status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Active => "Active",
            Phase::Revoked => "Revoked",
            Phase::Expired => "Expired",
            Phase::Failed => "Failed",
        }
    }
}

impl ApiToken {
    /// Name of the Secret holding this token's credential.
    pub fn secret_name(&self) -> &str {
        self.spec
            .secret_name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }

    /// Value of the manual-rotation annotation, if set.
    pub fn rotate_request(&self) -> Option<&str> {
        self.annotation(ROTATE_ANNOTATION)
    }

    /// Value of the retire-previous annotation, if set.
    pub fn retire_request(&self) -> Option<&str> {
        self.annotation(RETIRE_ANNOTATION)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

impl Scope {
    /// Tinybird's canonical form `TYPE[:resource[:filter]]`.
    pub fn canonical(&self) -> String {
        let mut out = self.type_.clone();
        if let Some(resource) = &self.resource {
            out.push(':');
            out.push_str(resource);
            if let Some(filter) = &self.filter {
                out.push(':');
                out.push_str(filter);
            }
        }
        out
    }
}

/// The ApiTokenVerifier CRD as YAML, exactly as committed under `crds/`.
pub fn verifier_crd_yaml() -> String {
    serde_yaml::to_string(&verifier::crd()).unwrap_or_default()
}

/// Every CRD, as one multi-document YAML stream.
pub fn all_crds_yaml() -> String {
    format!("{}---\n{}", crd_yaml(), verifier_crd_yaml())
}

/// What `kubectl explain apitoken` says about the kind itself.
const API_TOKEN_DESCRIPTION: &str = "An API token managed by tokenmint: one credential (an access key and a secret key) \
kept in a Secret of the token's namespace in every form an app needs (username/password, Bearer, Basic), rotated on \
schedule or on request, and removed when the token is revoked or expires. The ApiToken stays as the record.";

/// Puts `description` where kube-derive writes "Auto-generated derived type": the root of every
/// version's schema, which `kubectl explain <kind>` shows.
pub fn describe_kind(
    mut crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    description: &str,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.description = Some(description.to_owned());
        }
    }
    crd
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    let crd = describe_kind(ApiToken::crd(), API_TOKEN_DESCRIPTION);
    // Serializing a CRD built from our own types cannot fail.
    serde_yaml::to_string(&crd).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(type_: &str, resource: Option<&str>, filter: Option<&str>) -> Scope {
        Scope {
            type_: type_.into(),
            resource: resource.map(Into::into),
            filter: filter.map(Into::into),
        }
    }

    #[test]
    fn canonical_scope_strings_follow_tinybird() {
        assert_eq!(scope("ADMIN", None, None).canonical(), "ADMIN");
        assert_eq!(
            scope("PIPES:READ", Some("top_pages"), None).canonical(),
            "PIPES:READ:top_pages"
        );
        assert_eq!(
            scope("DATASOURCES:READ", Some("events"), Some("tenant_id = 42")).canonical(),
            "DATASOURCES:READ:events:tenant_id = 42"
        );
    }
}
