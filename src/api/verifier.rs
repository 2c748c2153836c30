//! The `ApiTokenVerifier` custom resource (`tokenmint.dev/v1alpha1`), and the two types an `ApiToken`
//! uses to point at verifiers: [`AudienceRef`] (`spec.audiences[]`) and [`AudienceStatus`]
//! (`status.audiences[]`).
//!
//! Doc comments here become the CRD's descriptions (`kubectl explain apitokenverifier.spec`).
//! Everything the API server can check is declared here (patterns, bounds, enums, CEL); what only
//! the operator can judge is checked by [`crate::core::verifier::validate`].

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt as _, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::names;

/// Label on every output Secret naming the verifier that controls it.
pub const VERIFIER_LABEL: &str = "tokenmint.dev/apitokenverifier";
/// Secret type of every output.
pub const OUTPUT_SECRET_TYPE: &str = "Opaque";
/// Data key of an `htpasswd` output when `key` is unset.
pub const DEFAULT_HTPASSWD_KEY: &str = "htpasswd";
/// Data key of a `sha256-map` output when `key` is unset.
pub const DEFAULT_SHA256_MAP_KEY: &str = "tokens.json";
/// Data key of a `trino` output's password file when `key` is unset.
pub const DEFAULT_TRINO_PASSWORD_KEY: &str = "password.db";
/// Data key of a `trino` output's access-control rules when `trino.rulesKey` is unset.
pub const DEFAULT_TRINO_RULES_KEY: &str = "rules.json";
/// Most `trino.tables` entries of one output.
pub const MAX_TRINO_TABLES: usize = 256;
/// Most `trino.privileges` entries of one output.
pub const MAX_TRINO_GRANTS: usize = 32;
/// Most `filters` of one scope grant.
pub const MAX_GRANT_FILTERS: usize = 64;
/// Hash of an `htpasswd` output when `hash` is unset: bcrypt, the one scheme every server the
/// contract names reads (Caddy and Trino's password file read nothing else).
pub const DEFAULT_HASH: HtpasswdHash = HtpasswdHash::Bcrypt;
/// Most `spec.trust` entries.
pub const MAX_TRUST_ENTRIES: usize = 32;
/// Most `spec.outputs` entries.
pub const MAX_OUTPUTS: usize = 8;
/// Most roles in one trust entry.
pub const MAX_ROLES: usize = 64;
/// Most `matchLabels` entries or `matchExpressions` in one namespace selector.
pub const MAX_SELECTOR_TERMS: usize = 16;
/// Most values of one selector expression.
pub const MAX_SELECTOR_VALUES: usize = 64;
/// Most `spec.audiences` items of an ApiToken.
pub const MAX_AUDIENCES: usize = 16;

const ROLE_PATTERN: &str = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$";
const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Secret data keys (`IsConfigMapKey`); `.` and a leading `..` are refused by a CEL rule.
const DATA_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// `<namespace>/<name>` or `<name>`: a DNS-1123 label, a slash, a DNS-1123 subdomain.
const AUDIENCE_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// Label keys: an optional DNS-subdomain prefix and `/`, then 1-63 characters.
const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// Renders, into Secrets of its own namespace, what a server needs to check the credentials of the
/// tokens it accepts: hashes, never a plaintext secret key. A token is included only with consent on
/// both sides: it names this verifier in `spec.audiences`, and its namespace and role match `spec.trust`.
// clippy reads the repeated `type_ = ...` inside separate printcolumn(...) entries as one attribute
// given twice; they are distinct columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tokenmint.dev",
    version = "v1alpha1",
    kind = "ApiTokenVerifier",
    plural = "apitokenverifiers",
    singular = "apitokenverifier",
    shortname = "atv",
    category = "tokenmint",
    namespaced,
    status = "ApiTokenVerifierStatus",
    printcolumn(name = "Tokens", type_ = "integer", json_path = ".status.tokens"),
    printcolumn(name = "Rejected", type_ = "integer", json_path = ".status.rejected"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[kube(
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name: at most 63 characters (it becomes the value of the output Secrets' tokenmint.dev/apitokenverifier label)")
)]
#[x_kube(
    validation = Rule::new("self.outputs.all(o, self.outputs.exists_one(p, p.secretName == o.secretName))")
        .message("no two outputs may name the same Secret")
        .field_path(".outputs")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenVerifierSpec {
    /// Which tokens this verifier accepts, besides their own consent (a token must also name this
    /// verifier in its spec.audiences). A token is trusted when its namespace and role match one entry.
    /// Absent: tokens of this verifier's namespace, any role. At most 32 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub trust: Option<Vec<TrustEntry>>,

    /// Secrets in this namespace that receive the accepted credentials, 1 to 8, each in one format.
    /// Each is controlled by this verifier; a Secret of that name that it does not control is left untouched.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["secretName"]))]
    pub outputs: Vec<Output>,

    /// How long this verifier's servers take to see a change to its outputs, e.g. `2m` (the
    /// default: a kubelet rewrites a mounted Secret 60 to 90s after a change) or `0s` for a server
    /// that reads the Secret through the API (ingress-nginx, Traefik, tokenmint authz). A rotation
    /// of a token this verifier accepts stages the new credential, publishes it here, and hands it
    /// to the token's clients only this long after that, so no client is refused when it
    /// switches (counted from when every output holds it). A scheduled rotation is staged this much
    /// (and 10s more) ahead, and stays on time. At most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), pattern(PUBLISH_DELAY_PATTERN))]
    pub publish_delay: Option<String>,
}

/// `publishDelay`: the duration syntax of `rotation.period`.
const PUBLISH_DELAY_PATTERN: &str = r"^([0-9]+[wdhms])+$";

/// One set of tokens the verifier accepts: tokens in the selected namespaces, with one of the listed roles.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustEntry {
    /// Namespaces whose tokens this entry accepts, by their labels (a Kubernetes label selector; every
    /// namespace carries `kubernetes.io/metadata.name: <name>`). Absent: only this verifier's own
    /// namespace. An empty selector (`{}`) selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "namespace_selector_schema")]
    pub namespace_selector: Option<LabelSelector>,

    /// Roles this entry accepts (`spec.role` of the token). Absent: any role. At most 64, no duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = 63), pattern(ROLE_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub roles: Option<Vec<String>>,

    /// The scopes a token trusted by this entry may claim: every item of its `spec.scopes` must be
    /// granted here, or the token is not accepted (never trimmed). Absent: with `namespaceSelector`,
    /// no scope at all (another namespace's authors get only what is granted); without it (this
    /// verifier's own namespace), any scope. At most 64 grants, one per type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub scopes: Option<Vec<ScopeGrant>>,
}

/// What a trust entry lets a token claim of one scope type.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScopeGrant {
    /// The scope type, e.g. `PIPES:READ` or `DATASOURCES:READ`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 64), pattern(GRANT_TYPE_PATTERN))]
    pub type_: String,
    /// The resources a scope of this type may name. Absent: any resource it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = 253), pattern(GRANT_RESOURCE_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub resources: Option<Vec<String>>,
    /// Whether a scope of this type may name no resource, which covers every resource of the type.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_resource: Option<bool>,
    /// Whether a scope of this type must carry a row filter (`filter`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_filter: Option<bool>,
    /// The row filters a scope of this type may carry, exactly as written (e.g. `tenant_id = 42`):
    /// the server owner's words, so a tenant cannot choose a filter that reads another tenant's rows.
    /// With `requireFilter`, a scope must carry one of them. Absent: any filter. At most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 1024)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub filters: Option<Vec<String>>,
}

/// A grant's scope type: the grammar of `spec.scopes[].type`.
const GRANT_TYPE_PATTERN: &str = r"^[A-Z][A-Z_]*(:[A-Z][A-Z_]*)?$";
/// A grant's resource: the grammar of `spec.scopes[].resource`.
const GRANT_RESOURCE_PATTERN: &str = r"^[A-Za-z0-9_.-]+$";
/// Grants per trust entry, and resources per grant.
pub const MAX_SCOPE_GRANTS: usize = 64;

/// One Secret the verifier writes: its name, its format and the data key that holds the rendering.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(self.hash) || self.format == 'htpasswd'")
        .message("hash applies only to format htpasswd (sha256-map always uses SHA-256, trino PBKDF2)")
        .field_path(".hash")
)]
#[x_kube(
    validation = Rule::new("has(self.trino) == (self.format == 'trino')")
        .message("trino is required with format trino, and applies to no other format")
        .field_path(".trino")
)]
#[x_kube(
    validation = Rule::new("!has(self.trino) || (has(self.trino.rulesKey) ? self.trino.rulesKey : 'rules.json') != (has(self.key) ? self.key : 'password.db')")
        .message("trino.rulesKey must differ from key (the password file's)")
        .field_path(".trino.rulesKey")
)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Name of the Secret (type Opaque) in this namespace. A DNS-1123 subdomain.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN_PATTERN))]
    pub secret_name: String,

    /// `htpasswd`: one line `accessKey:hash` per valid credential, sorted by access key, for nginx
    /// auth_basic_user_file, ingress-nginx auth, Traefik BasicAuth, Caddy, oauth2-proxy and Trino's
    /// password file. `sha256-map`: JSON mapping the hex SHA-256 of each presented credential (Bearer
    /// token and Basic token) to the token's name, access key, role, scopes and notAfter, for `tokenmint authz`.
    /// `trino`: Trino's password file (`key`, PBKDF2 lines) and its file-based access-control rules
    /// (`trino.rulesKey`), so Trino itself enforces each token's scopes and row filters.
    pub format: OutputFormat,

    /// Data key of the Secret that holds the rendering. Default `htpasswd` for htpasswd, `tokens.json`
    /// for sha256-map, `password.db` for trino (its password file). 1-253 characters of [-._a-zA-Z0-9], not `.` and not starting with `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DATA_KEY_PATTERN))]
    #[x_kube(validation = Rule::new("self != '.' && !self.startsWith('..')")
        .message("key may not be '.' or start with '..' (a mounted Secret's keys become file names)"))]
    pub key: Option<String>,

    /// htpasswd only: the hash of each line. `bcrypt` (default; read by every server listed under
    /// format), `sha256-crypt` (`$5$`, for crypt(3)-based servers such as nginx on glibc), `ssha`
    /// (`{SSHA}`, salted SHA-1, fast: sound only because secret keys carry at least 112 random bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HtpasswdHash>,

    /// trino only: how scopes become Trino table rules. The server owner's side: which table a scope's
    /// resource names and what each scope type may do there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trino: Option<TrinoOutput>,
}

/// How a `trino` output turns the scopes of the tokens it accepts into Trino's file-based
/// access-control rules. Everything not granted here is denied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrinoOutput {
    /// The tables scopes may name: a scope whose resource is listed here applies to that table; a
    /// scope with no resource applies to every table listed. A resource not listed grants nothing.
    /// 1 to 256, one per resource.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["resource"]))]
    pub tables: Vec<TrinoTable>,

    /// The table privileges each scope type grants, e.g. `DATASOURCES:READ` → `[SELECT]`. A scope of a
    /// type not listed grants nothing. 1 to 32, one per type.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["scopeType"]))]
    pub privileges: Vec<TrinoGrant>,

    /// Data key of the access-control rules (JSON, for `security.config-file`). Default `rules.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DATA_KEY_PATTERN))]
    #[x_kube(validation = Rule::new("self != '.' && !self.startsWith('..')")
        .message("rulesKey may not be '.' or start with '..' (a mounted Secret's keys become file names)"))]
    pub rules_key: Option<String>,
}

/// Where a scope resource lives in Trino.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrinoTable {
    /// The scope resource, exactly as tokens write it (`spec.scopes[].resource`).
    #[schemars(length(min = 1, max = 253), pattern(GRANT_RESOURCE_PATTERN))]
    pub resource: String,
    /// The Trino catalog (lower case, as Trino names it).
    #[schemars(length(min = 1, max = 128), pattern(TRINO_NAME_PATTERN))]
    pub catalog: String,
    /// The schema within the catalog.
    #[schemars(length(min = 1, max = 128), pattern(TRINO_NAME_PATTERN))]
    pub schema: String,
    /// The table within the schema. Default: the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(TRINO_NAME_PATTERN))]
    pub table: Option<String>,
}

/// Trino catalog, schema and table names a `trino` output may name: lower case, as Trino stores them.
const TRINO_NAME_PATTERN: &str = r"^[a-z0-9_][a-z0-9_-]*$";

/// The privileges one scope type grants on the tables its scopes name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrinoGrant {
    /// The scope type, e.g. `DATASOURCES:READ`.
    #[schemars(length(min = 1, max = 64), pattern(GRANT_TYPE_PATTERN))]
    pub scope_type: String,
    /// Table privileges: SELECT, INSERT, UPDATE, DELETE. 1 to 4, no duplicates.
    #[schemars(length(min = 1, max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub privileges: Vec<TrinoPrivilege>,
}

/// A Trino table privilege a scope may grant. Ownership and grant options are never granted.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum TrinoPrivilege {
    #[serde(rename = "SELECT")]
    Select,
    #[serde(rename = "INSERT")]
    Insert,
    #[serde(rename = "UPDATE")]
    Update,
    #[serde(rename = "DELETE")]
    Delete,
}

/// How an output renders the accepted credentials.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// `accessKey:hash` lines.
    #[serde(rename = "htpasswd")]
    Htpasswd,
    /// JSON keyed by the hex SHA-256 of each presented credential.
    #[serde(rename = "sha256-map")]
    Sha256Map,
    /// Trino's password file and access-control rules.
    #[serde(rename = "trino")]
    Trino,
}

// How an htpasswd line hashes the secret key (`spec.outputs[].hash` of an ApiTokenVerifier). Which
// servers read which is in `docs/htpasswd.md`. The default is bcrypt, the one every reader accepts;
// nginx and ingress-nginx do far better with ssha. Not a doc comment: kube hoists an optional enum's
// own description over the field's, and `kubectl explain` should show the field's.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum HtpasswdHash {
    /// `$2y$08$...`: read by nginx, ingress-nginx, Traefik, Caddy, oauth2-proxy and Trino.
    #[default]
    #[serde(rename = "bcrypt")]
    Bcrypt,
    /// `$5$rounds=1000$...` (glibc crypt): read by nginx and ingress-nginx.
    #[serde(rename = "sha256-crypt")]
    Sha256Crypt,
    /// `{SSHA}base64(sha1(secret + salt) + salt)`: read by nginx and ingress-nginx.
    #[serde(rename = "ssha")]
    Ssha,
}

impl HtpasswdHash {
    /// The name used in the API (`spec.outputs[].hash`).
    pub const fn name(self) -> &'static str {
        match self {
            HtpasswdHash::Bcrypt => "bcrypt",
            HtpasswdHash::Sha256Crypt => "sha256-crypt",
            HtpasswdHash::Ssha => "ssha",
        }
    }
}

impl OutputFormat {
    /// The format as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Htpasswd => "htpasswd",
            OutputFormat::Sha256Map => "sha256-map",
            OutputFormat::Trino => "trino",
        }
    }

    /// The data key used when `key` is unset.
    pub fn default_key(self) -> &'static str {
        match self {
            OutputFormat::Htpasswd => DEFAULT_HTPASSWD_KEY,
            OutputFormat::Sha256Map => DEFAULT_SHA256_MAP_KEY,
            OutputFormat::Trino => DEFAULT_TRINO_PASSWORD_KEY,
        }
    }
}

impl Output {
    /// The data key, with its default applied.
    pub fn key(&self) -> &str {
        self.key
            .as_deref()
            .unwrap_or_else(|| self.format.default_key())
    }
}

/// What the verifier renders. Never holds a credential.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenVerifierStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many tokens have credentials in the outputs (a token in a rotation overlap has two credentials, and counts once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
    /// How many tokens name this verifier in spec.audiences but are not trusted by spec.trust; each says why in its status.audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u32>,
    /// How many trusted tokens are left out of the outputs because a credential of theirs is malformed
    /// or cannot be told apart from another token's; the Ready condition's message names them. One such
    /// token never keeps the others out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<u32>,
    /// Standard conditions, one per type; `Ready` is always present once reconciled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What `kubectl explain apitokenverifier` says about the kind itself.
pub const DESCRIPTION: &str = "An ApiTokenVerifier renders, into Secrets of its own namespace, what a server needs to \
check the credentials of the ApiTokens it accepts: htpasswd lines, a SHA-256 map, or Trino's password file and \
access-control rules; hashes only, never a plaintext secret key. A token is included only when it names this verifier in spec.audiences and its namespace and role match \
spec.trust; its current credential stays in every output while it is Active, and its previous credential until that retires.";

/// The verifier's CRD, with the kind's description in place of kube-derive's placeholder.
pub fn crd() -> CustomResourceDefinition {
    super::describe_kind(ApiTokenVerifier::crd(), DESCRIPTION)
}

/// The schema of `namespaceSelector`: Kubernetes' LabelSelector, bounded and with its operator rules
/// stated, so a bad selector fails at `kubectl apply` (and CEL's cost estimate stays finite).
fn namespace_selector_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A Kubernetes label selector over Namespaces: matchLabels and matchExpressions, ANDed. \
            Absent: only this verifier's namespace. Empty ({}): every namespace.",
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {
                "description": "Labels the namespace must carry with exactly these values. At most 16.",
                "type": "object",
                "maxProperties": MAX_SELECTOR_TERMS,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 63,
                    "pattern": LABEL_VALUE_PATTERN,
                },
                "x-kubernetes-validations": [{
                    "rule": format!("self.all(k, size(k) <= 317 && k.matches(r'{LABEL_KEY_PATTERN}'))"),
                    "message": "matchLabels keys must be label keys: an optional DNS subdomain and '/', then 1-63 characters of [A-Za-z0-9._-]",
                }],
            },
            "matchExpressions": {
                "description": "Requirements on the namespace's labels. At most 16.",
                "type": "array",
                "maxItems": MAX_SELECTOR_TERMS,
                "items": {
                    "description": "One requirement: key, operator and values.",
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key the requirement applies to.",
                            "type": "string",
                            "maxLength": 317,
                            "pattern": LABEL_KEY_PATTERN,
                        },
                        "operator": {
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                        },
                        "values": {
                            "description": "Label values: non-empty for In and NotIn, absent for Exists and DoesNotExist. At most 64.",
                            "type": "array",
                            "maxItems": MAX_SELECTOR_VALUES,
                            "items": {
                                "type": "string",
                                "maxLength": 63,
                                "pattern": LABEL_VALUE_PATTERN,
                            },
                        },
                    },
                    "x-kubernetes-validations": [{
                        "rule": "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 : !has(self.values) || size(self.values) == 0",
                        "message": "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
                    }],
                },
            },
        },
    })
}

/// An item of an ApiToken's `spec.audiences`: an ApiTokenVerifier as `<namespace>/<name>`, or `<name>`
/// for one in the token's own namespace.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct AudienceRef(pub String);

impl fmt::Debug for AudienceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for AudienceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for AudienceRef {
    fn from(text: &str) -> Self {
        AudienceRef(text.to_owned())
    }
}

impl JsonSchema for AudienceRef {
    fn schema_name() -> Cow<'static, str> {
        "AudienceRef".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An ApiTokenVerifier this token is for: `<namespace>/<name>`, or `<name>` in the token's namespace.",
            "type": "string",
            "minLength": 1,
            "maxLength": 317,
            "pattern": AUDIENCE_PATTERN,
        })
    }
}

/// A verifier by namespace and name, as an audience resolves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerifierRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for VerifierRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why an audience does not name a verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadAudience {
    #[error("namespace must be a DNS-1123 label (1-63 characters of [a-z0-9-])")]
    Namespace,
    #[error("name must be a DNS-1123 subdomain (at most 253 characters of [a-z0-9.-])")]
    Name,
}

impl AudienceRef {
    /// The verifier this names, for a token in `token_namespace`.
    pub fn resolve(&self, token_namespace: &str) -> Result<VerifierRef, BadAudience> {
        let (namespace, name) = match self.0.split_once('/') {
            Some((namespace, name)) => (namespace, name),
            None => (token_namespace, self.0.as_str()),
        };
        if !names::is_dns_label(namespace) {
            return Err(BadAudience::Namespace);
        }
        if !names::is_dns_subdomain(name) {
            return Err(BadAudience::Name);
        }
        Ok(VerifierRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Whether this names the verifier `verifier`, for a token in `token_namespace`.
    pub fn names(&self, token_namespace: &str, verifier: &VerifierRef) -> bool {
        self.resolve(token_namespace).is_ok_and(|r| &r == verifier)
    }
}

/// An item of an ApiToken's `status.audiences`: whether one `spec.audiences` item accepts the token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AudienceStatus {
    /// The spec.audiences item this reports on, exactly as written there.
    pub name: String,
    /// Whether the verifier includes this token's credentials in its outputs.
    pub accepted: bool,
    /// Why, in CamelCase: `Accepted`, `VerifierNotFound`, `VerifierInvalid` (its spec is invalid, so it
    /// renders nothing), `NamespaceNotTrusted` (no trust entry selects the token's namespace) or
    /// `RoleNotTrusted` (entries select the namespace, none lists the token's role) or
    /// `ScopeNotTrusted` (entries select the namespace and role, none grants one of the token's scopes)
    /// or `Excluded` (trusted, but left out of the outputs: a credential that cannot be told apart
    /// from another token's, or scopes over the per-token byte budget).
    pub reason: String,
    /// Which scope, for `ScopeNotTrusted`: `spec.scopes[i]` and its canonical string; why, for
    /// `Excluded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The reasons of [`AudienceStatus`]. Status carries the string, so a new reason is no schema change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudienceReason {
    Accepted,
    VerifierNotFound,
    VerifierInvalid,
    NamespaceNotTrusted,
    RoleNotTrusted,
    ScopeNotTrusted,
    Excluded,
}

impl AudienceReason {
    /// The reason as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            AudienceReason::Accepted => "Accepted",
            AudienceReason::VerifierNotFound => "VerifierNotFound",
            AudienceReason::VerifierInvalid => "VerifierInvalid",
            AudienceReason::NamespaceNotTrusted => "NamespaceNotTrusted",
            AudienceReason::RoleNotTrusted => "RoleNotTrusted",
            AudienceReason::ScopeNotTrusted => "ScopeNotTrusted",
            AudienceReason::Excluded => "Excluded",
        }
    }
}

impl AudienceStatus {
    /// The status of audience item `name` (as written in spec) for `reason`.
    pub fn new(name: &AudienceRef, reason: AudienceReason) -> Self {
        AudienceStatus {
            name: name.0.clone(),
            accepted: reason == AudienceReason::Accepted,
            reason: reason.as_str().to_owned(),
            message: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The example of API.md, verbatim.
    const EXAMPLE: &str = r#"
apiVersion: tokenmint.dev/v1alpha1
kind: ApiTokenVerifier
metadata:
  name: pinot
  namespace: data
spec:
  trust:
    - namespaceSelector:
        matchLabels: {team: analytics}
      roles: [reader, writer]
  outputs:
    - secretName: pinot-htpasswd
      format: htpasswd
      key: auth
      hash: bcrypt
"#;

    #[test]
    fn the_contract_example_reads_and_writes_back_unchanged() {
        let verifier: ApiTokenVerifier = serde_yaml::from_str(EXAMPLE).unwrap();
        let output = &verifier.spec.outputs[0];
        assert_eq!(output.format, OutputFormat::Htpasswd);
        assert_eq!(output.hash, Some(HtpasswdHash::Bcrypt));
        assert_eq!(output.key(), "auth");
        let trust = verifier.spec.trust.as_ref().unwrap();
        let labels = trust[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["team"], "analytics");
        let original: Value = serde_yaml::from_str(EXAMPLE).unwrap();
        assert_eq!(serde_json::to_value(&verifier).unwrap(), original);
    }

    #[test]
    fn output_keys_default_per_format() {
        let output = |format| Output {
            secret_name: "s".into(),
            format,
            key: None,
            hash: None,
            trino: None,
        };
        assert_eq!(output(OutputFormat::Htpasswd).key(), "htpasswd");
        assert_eq!(output(OutputFormat::Sha256Map).key(), "tokens.json");
        let formats: Value =
            serde_json::to_value([OutputFormat::Htpasswd, OutputFormat::Sha256Map]).unwrap();
        assert_eq!(formats, json!(["htpasswd", "sha256-map"]));
        let hashes = [
            HtpasswdHash::Bcrypt,
            HtpasswdHash::Sha256Crypt,
            HtpasswdHash::Ssha,
        ];
        let written: Value = serde_json::to_value(hashes).unwrap();
        assert_eq!(written, json!(hashes.map(HtpasswdHash::name)));
    }

    fn schema() -> Value {
        let crd = serde_json::to_value(crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn the_crd_has_the_contract_names_columns_and_status() {
        let crd = serde_json::to_value(crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "apitokenverifiers.tokenmint.dev");
        let names = &crd["spec"]["names"];
        assert_eq!(names["kind"], "ApiTokenVerifier");
        assert_eq!(names["singular"], "apitokenverifier");
        assert_eq!(names["shortNames"], json!(["atv"]));
        assert_eq!(names["categories"], json!(["tokenmint"]));
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["subresources"]["status"], json!({}));
        let columns: Vec<(&str, &str)> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Tokens", ".status.tokens"),
                ("Rejected", ".status.rejected"),
                ("Ready", r#".status.conditions[?(@.type=="Ready")].status"#),
                ("Age", ".metadata.creationTimestamp"),
            ]
        );
        assert_eq!(schema()["description"], DESCRIPTION);
    }

    fn rules(schema: &Value) -> Vec<&str> {
        schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["rule"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn the_schema_states_at_apply_what_it_can() {
        let root = schema();
        assert_eq!(rules(&root), ["size(self.metadata.name) <= 63"]);
        let spec = &root["properties"]["spec"];
        assert_eq!(rules(spec).len(), 1, "outputs name distinct Secrets");
        let outputs = &spec["properties"]["outputs"];
        assert_eq!(
            (&outputs["minItems"], &outputs["maxItems"]),
            (&json!(1), &json!(8))
        );
        assert_eq!(outputs["x-kubernetes-list-type"], "map");
        assert_eq!(outputs["x-kubernetes-list-map-keys"], json!(["secretName"]));
        let output = &outputs["items"];
        assert_eq!(
            rules(output),
            [
                "!has(self.hash) || self.format == 'htpasswd'",
                "has(self.trino) == (self.format == 'trino')",
                "!has(self.trino) || (has(self.trino.rulesKey) ? self.trino.rulesKey : 'rules.json') != (has(self.key) ? self.key : 'password.db')",
            ]
        );
        let trino = &output["properties"]["trino"];
        assert_eq!(
            trino["properties"]["tables"]["x-kubernetes-list-map-keys"],
            json!(["resource"])
        );
        assert_eq!(
            trino["properties"]["privileges"]["items"]["properties"]["privileges"]["items"]["enum"],
            json!(["SELECT", "INSERT", "UPDATE", "DELETE"])
        );
        assert_eq!(
            output["properties"]["hash"]["enum"],
            json!(["bcrypt", "sha256-crypt", "ssha"])
        );
        // The field's own description, not the enum's.
        let hash_doc = output["properties"]["hash"]["description"]
            .as_str()
            .unwrap();
        assert!(hash_doc.starts_with("htpasswd only"), "{hash_doc}");
        assert_eq!(rules(&output["properties"]["key"]).len(), 1);
        let trust = &spec["properties"]["trust"];
        assert_eq!(
            (&trust["minItems"], &trust["maxItems"]),
            (&json!(1), &json!(32))
        );
        let entry = &trust["items"]["properties"];
        assert_eq!(entry["roles"]["x-kubernetes-list-type"], "set");
        let selector = &entry["namespaceSelector"];
        assert_eq!(selector["x-kubernetes-map-type"], "atomic");
        let expression = &selector["properties"]["matchExpressions"]["items"];
        assert_eq!(
            expression["properties"]["operator"]["enum"],
            json!(["In", "NotIn", "Exists", "DoesNotExist"])
        );
        assert_eq!(rules(expression).len(), 1);
        assert_eq!(rules(&selector["properties"]["matchLabels"]).len(), 1);
        let status = &root["properties"]["status"]["properties"];
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
    }

    #[test]
    fn audience_refs_are_plain_strings_with_a_pattern() {
        let refs: Vec<AudienceRef> =
            serde_json::from_value(json!(["data/pinot", "trino"])).unwrap();
        assert_eq!(
            refs,
            [AudienceRef::from("data/pinot"), AudienceRef::from("trino")]
        );
        assert_eq!(
            serde_json::to_value(&refs).unwrap(),
            json!(["data/pinot", "trino"])
        );
        let schema = serde_json::to_value(schemars::schema_for!(AudienceRef)).unwrap();
        assert_eq!(schema["pattern"], AUDIENCE_PATTERN);
        assert_eq!(schema["maxLength"], 317);
    }

    #[test]
    fn an_audience_resolves_against_the_token_namespace() {
        let pinot = VerifierRef {
            namespace: "data".into(),
            name: "pinot".into(),
        };
        assert_eq!(
            AudienceRef::from("pinot").resolve("data"),
            Ok(pinot.clone())
        );
        assert_eq!(
            AudienceRef::from("data/pinot").resolve("analytics"),
            Ok(pinot.clone())
        );
        assert!(AudienceRef::from("pinot").names("data", &pinot));
        assert!(!AudienceRef::from("pinot").names("analytics", &pinot));
        assert_eq!(
            AudienceRef::from("Data/pinot").resolve("x"),
            Err(BadAudience::Namespace)
        );
        assert_eq!(
            AudienceRef::from("data/").resolve("x"),
            Err(BadAudience::Name)
        );
        assert_eq!(pinot.to_string(), "data/pinot");
    }

    #[test]
    fn audience_status_reports_the_item_as_written() {
        let status =
            AudienceStatus::new(&AudienceRef::from("pinot"), AudienceReason::RoleNotTrusted);
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json!({"name": "pinot", "accepted": false, "reason": "RoleNotTrusted"})
        );
        assert!(
            AudienceStatus::new(&AudienceRef::from("pinot"), AudienceReason::Accepted).accepted
        );
    }
}
