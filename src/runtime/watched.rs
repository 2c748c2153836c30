//! ApiTokens as the watch delivers them, decoded one object at a time.
//!
//! A typed watch decodes a whole list at once, so one object that does not fit our types (an
//! `expiresAt` in the year 9999, written before the CRD bounded it, is beyond what the time library
//! holds) fails the list, and with it every token in the watched scope. Decoding each object on its
//! own turns that into an error on that one object. The error names the field, never its value, and
//! no log line carries the object (the client library's own warning prints the whole response body,
//! so [`crate::runtime::telemetry`] silences it).

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer, Serialize};

use crate::api::{ApiToken, ApiTokenSpec, ApiTokenStatus, Phase};
use crate::runtime::compact::{self, Dictionary};
use crate::runtime::keys::split_key;

/// One watched ApiToken.
#[derive(Clone, Debug)]
pub enum TokenObject {
    /// Decoded as an [`ApiToken`], as the watch delivers it.
    Decoded(Box<ApiToken>),
    /// A token that does not fit our types.
    Undecodable(Box<Undecodable>),
}

/// What is known of an ApiToken that does not decode.
#[derive(Clone, Debug)]
pub struct Undecodable {
    pub metadata: ObjectMeta,
    /// Its status, if that decoded on its own.
    pub status: Option<ApiTokenStatus>,
    /// The path of the first field that could not be decoded.
    pub field: String,
}

/// A token as the cache keeps it: its `namespace/name` (the one string that names it in the cache,
/// the queue and the wake-ups), its resourceVersion, the few fields every `/metrics` scrape and every
/// verifier render read of every token, and the rest (metadata, spec, status) as compressed JSON,
/// decoded again by the one reconcile or render that needs it. Decoded, an `ApiToken` is 1,024
/// bytes before its twenty-odd strings; kept, the summary's fields, three pointers and two or three
/// small allocations.
pub struct Cached {
    key: Arc<str>,
    resource_version: Option<Box<str>>,
    form: Form,
}

enum Form {
    /// `{"metadata": ..., "spec": ..., "status": ...}` as serialized from the decoded token,
    /// compressed ([`crate::runtime::compact`]).
    Kept {
        body: Box<[u8]>,
        summary: Summary,
    },
    /// A decoded token whose JSON did not come back as it was (it always should: both directions
    /// are the same derived serde code), kept as it is.
    Decoded(Box<ApiToken>),
    Undecodable(Box<Undecodable>),
}

/// The fields of a token read for every token at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub role: Box<str>,
    pub phase: Option<Phase>,
    /// Unix seconds of `status.nextRotationAt`.
    pub next_rotation: Option<i64>,
    /// Unix seconds of `status.expiresAt`.
    pub expiry: Option<i64>,
    /// Unix seconds of `status.lastUsedAt`.
    pub last_used: Option<i64>,
    /// `spec.secretName`, when set.
    secret_name: Option<Box<str>>,
    /// Whether `spec.audiences` names any verifier.
    names_audiences: bool,
}

impl Summary {
    fn of(token: &ApiToken) -> Self {
        Summary {
            role: token.spec.role.as_str().into(),
            secret_name: token.spec.secret_name.as_deref().map(Into::into),
            names_audiences: token.spec.audiences.as_ref().is_some_and(|a| !a.is_empty()),
            ..Summary::of_status(token.status.as_ref())
        }
    }

    /// What a status alone tells (no role, no Secret name, no audiences): all that is known of a
    /// token whose spec does not decode.
    pub fn of_status(status: Option<&ApiTokenStatus>) -> Self {
        let seconds = |t: Option<&Time>| t.map(|t| t.0.as_second());
        Summary {
            phase: status.and_then(|s| s.phase),
            next_rotation: seconds(status.and_then(|s| s.next_rotation_at.as_ref())),
            expiry: seconds(status.and_then(|s| s.expires_at.as_ref())),
            last_used: seconds(status.and_then(|s| s.last_used_at.as_ref())),
            ..Summary::default()
        }
    }
}

#[derive(Serialize)]
struct BodyRef<'a> {
    metadata: &'a ObjectMeta,
    spec: &'a ApiTokenSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: &'a Option<ApiTokenStatus>,
}

#[derive(Deserialize)]
struct Body {
    metadata: ObjectMeta,
    spec: ApiTokenSpec,
    #[serde(default)]
    status: Option<ApiTokenStatus>,
}

/// Metadata, spec and status as JSON.
fn body_of(token: &ApiToken) -> Option<Vec<u8>> {
    serde_json::to_vec(&BodyRef {
        metadata: &token.metadata,
        spec: &token.spec,
        status: &token.status,
    })
    .ok()
}

/// What bodies are compressed against: an issued token's.
fn dictionary() -> &'static Dictionary {
    static BODIES: LazyLock<Dictionary> =
        LazyLock::new(|| Dictionary::new(body_of(&compact::issued().0).unwrap_or_default()));
    &BODIES
}

fn unpack(body: &[u8]) -> Option<ApiToken> {
    let Body {
        metadata,
        spec,
        status,
    } = serde_json::from_slice(&dictionary().unpack(body)?).ok()?;
    Some(ApiToken {
        metadata,
        spec,
        status,
    })
}

impl Cached {
    /// `object` (as [`TokenObject::keep_what_is_read`] left it) as kept under `key`.
    pub fn new(key: Arc<str>, object: &TokenObject) -> Self {
        let resource_version = object.meta().resource_version.as_deref().map(Into::into);
        let form = match object {
            TokenObject::Decoded(token) => {
                let body = body_of(token).map(|json| dictionary().pack(&json));
                let same = |back: ApiToken| {
                    (&back.metadata, &back.spec, &back.status)
                        == (&token.metadata, &token.spec, &token.status)
                };
                match body {
                    Some(body) if unpack(&body).is_some_and(same) => Form::Kept {
                        body,
                        summary: Summary::of(token),
                    },
                    _ => Form::Decoded(token.clone()),
                }
            }
            TokenObject::Undecodable(u) => Form::Undecodable(u.clone()),
        };
        Cached {
            key,
            resource_version,
            form,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    pub fn namespace(&self) -> &str {
        split_key(&self.key).0
    }

    pub fn name(&self) -> &str {
        split_key(&self.key).1
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// The token, when it decoded (decoded again from what the cache keeps).
    pub fn token(&self) -> Option<ApiToken> {
        match &self.form {
            Form::Kept { body, .. } => unpack(body),
            Form::Decoded(token) => Some((**token).clone()),
            Form::Undecodable(_) => None,
        }
    }

    /// What is known of a token that does not decode.
    pub fn undecodable(&self) -> Option<&Undecodable> {
        match &self.form {
            Form::Undecodable(u) => Some(u),
            _ => None,
        }
    }

    /// The fields read of every token at once, without decoding it; for a token that did not
    /// decode, what its status tells.
    pub fn summary(&self) -> Cow<'_, Summary> {
        match &self.form {
            Form::Kept { summary, .. } => Cow::Borrowed(summary),
            Form::Decoded(token) => Cow::Owned(Summary::of(token)),
            Form::Undecodable(u) => Cow::Owned(Summary::of_status(u.status.as_ref())),
        }
    }

    /// The name of the token's Secret ([`ApiToken::secret_name`]), without decoding it; `None` when
    /// it did not decode.
    pub fn secret_name(&self) -> Option<&str> {
        let spec_name = match &self.form {
            Form::Kept { summary, .. } => summary.secret_name.as_deref(),
            Form::Decoded(token) => token.spec.secret_name.as_deref(),
            Form::Undecodable(_) => return None,
        };
        Some(spec_name.unwrap_or(self.name()))
    }

    /// Whether the spec names any verifier in `audiences`, without decoding it.
    pub fn names_audiences(&self) -> bool {
        self.undecodable().is_none() && self.summary().names_audiences
    }
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = f.debug_struct("Cached");
        shown
            .field("key", &self.key)
            .field("resource_version", &self.resource_version);
        match &self.form {
            Form::Kept { body, summary } => shown
                .field("body_bytes", &body.len())
                .field("summary", summary),
            Form::Decoded(token) => shown.field("decoded", &token.metadata),
            Form::Undecodable(u) => shown.field("undecodable", u),
        };
        shown.finish()
    }
}

/// Annotations of an ApiToken that tokenmint reads: its own (`tokenmint.dev/rotate`, ...).
const READ_ANNOTATIONS: &str = "tokenmint.dev/";

impl TokenObject {
    /// Drops what no reconcile reads before the object goes into the cache: managed fields, labels,
    /// other tools' annotations (`kubectl apply` keeps a whole copy of the manifest in one), owner
    /// references, finalizers and timestamps but the creation (an inactivity policy reads it). At
    /// 10,000 tokens the first is a third of the token cache for a plain create, more for applied
    /// manifests.
    pub fn keep_what_is_read(&mut self) {
        let meta = self.meta_mut();
        let annotations = meta.annotations.take().map(|all| {
            all.into_iter()
                .filter(|(k, _)| k.starts_with(READ_ANNOTATIONS))
                .collect::<std::collections::BTreeMap<_, _>>()
        });
        *meta = ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            uid: meta.uid.take(),
            resource_version: meta.resource_version.take(),
            generation: meta.generation,
            // An inactivity policy counts a never-used token's idle time from its creation.
            creation_timestamp: meta.creation_timestamp.take(),
            annotations: annotations.filter(|a| !a.is_empty()),
            ..ObjectMeta::default()
        };
    }
}

impl From<ApiToken> for TokenObject {
    fn from(token: ApiToken) -> Self {
        TokenObject::Decoded(Box::new(token))
    }
}

impl<'de> Deserialize<'de> for TokenObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, ApiToken>(&value) {
            Ok(token) => Ok(TokenObject::Decoded(Box::new(token))),
            Err(error) => {
                let part = |key: &str| value.get(key).filter(|v| !v.is_null());
                let metadata = part("metadata")
                    .and_then(|m| ObjectMeta::deserialize(m).ok())
                    .unwrap_or_default();
                let status = part("status").and_then(|s| ApiTokenStatus::deserialize(s).ok());
                Ok(TokenObject::Undecodable(Box::new(Undecodable {
                    metadata,
                    status,
                    field: error.path().to_string(),
                })))
            }
        }
    }
}

impl Resource for TokenObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ApiToken::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ApiToken::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ApiToken::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ApiToken::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            TokenObject::Decoded(token) => &token.metadata,
            TokenObject::Undecodable(u) => &u.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            TokenObject::Decoded(token) => &mut token.metadata,
            TokenObject::Undecodable(u) => &mut u.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `object` as the cache keeps it.
    fn cached(object: serde_json::Value) -> Cached {
        let mut object: TokenObject = serde_json::from_value(object).unwrap();
        object.keep_what_is_read();
        Cached::new(
            crate::runtime::keys::meta_key(object.meta()).into(),
            &object,
        )
    }

    fn object(expires_at: &str) -> serde_json::Value {
        json!({
            "apiVersion": "tokenmint.dev/v1alpha1",
            "kind": "ApiToken",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u"},
            "spec": {"role": "reader", "expiresAt": expires_at},
            "status": {"accessKey": "AKIAVISIBLE"}
        })
    }

    #[test]
    fn one_undecodable_object_does_not_fail_the_list() {
        let list = json!([
            object("2027-01-01T00:00:00Z"),
            object("9999-12-31T23:59:59Z")
        ]);
        let tokens: Vec<TokenObject> = serde_json::from_value(list).unwrap();
        assert!(matches!(tokens[0], TokenObject::Decoded(_)));
        let TokenObject::Undecodable(undecodable) = &tokens[1] else {
            panic!("{:?}", tokens[1])
        };
        assert_eq!(undecodable.metadata.name.as_deref(), Some("t"));
        assert_eq!(
            undecodable
                .status
                .as_ref()
                .and_then(|s| s.access_key.as_deref()),
            Some("AKIAVISIBLE")
        );
        assert_eq!(undecodable.field, "spec.expiresAt");
    }

    #[test]
    fn the_cache_keeps_identity_and_our_annotations_only() {
        let mut full = object("2027-01-01T00:00:00Z");
        full["metadata"]["generation"] = json!(3);
        full["metadata"]["resourceVersion"] = json!("7");
        full["metadata"]["labels"] = json!({"team": "a"});
        full["metadata"]["annotations"] = json!({
            "tokenmint.dev/rotate": "r1",
            "kubectl.kubernetes.io/last-applied-configuration": "{...}"
        });
        full["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
        let token = cached(full).token().unwrap();
        assert_eq!(token.rotate_request(), Some("r1"));
        let meta = &token.metadata;
        assert_eq!(
            (
                meta.name.as_deref(),
                meta.namespace.as_deref(),
                meta.uid.as_deref()
            ),
            (Some("t"), Some("ns"), Some("u"))
        );
        assert_eq!(
            (meta.resource_version.as_deref(), meta.generation),
            (Some("7"), Some(3))
        );
        assert_eq!(meta.annotations.as_ref().map(|a| a.len()), Some(1));
        assert!(meta.labels.is_none() && meta.managed_fields.is_none());
    }

    /// A token with every field the planner and the verifiers read, as the API server returns it.
    fn full() -> serde_json::Value {
        json!({
            "apiVersion": "tokenmint.dev/v1alpha1",
            "kind": "ApiToken",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u", "resourceVersion": "9",
                "generation": 2, "annotations": {"tokenmint.dev/rotate": "r1"}},
            "spec": {
                "role": "writer", "description": "d", "secretName": "s",
                "scopes": [{"type": "DATASOURCES:READ", "resource": "events", "filter": "x > 1"}],
                "rotation": {"period": "720h", "overlap": "1h"},
                "audiences": ["gateway", "other/edge"],
                "expiresAt": "2027-06-01T00:00:00Z",
                "format": {"accessKeyLength": 24, "secretKeyLength": 40}
            },
            "status": {
                "phase": "Active", "accessKey": "tmAK", "fingerprint": "sha256:0123456789abcdef",
                "secretName": "s", "issuedAt": "2026-12-01T00:00:00Z",
                "nextRotationAt": "2026-12-31T00:00:00Z", "expiresAt": "2027-06-01T00:00:00Z",
                "rotations": 3, "lastRotateRequest": "r0", "lastRetireRequest": "q0",
                "previous": {"accessKey": "tmOLD", "fingerprint": "sha256:fedcba9876543210",
                    "retiresAt": "2026-12-01T01:00:00Z"},
                "audiences": [{"name": "gateway", "accepted": true, "reason": "Accepted"}],
                "observedGeneration": 2,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Issued",
                    "message": "m", "lastTransitionTime": "2026-12-01T00:00:00Z",
                    "observedGeneration": 2}]
            }
        })
    }

    #[test]
    fn a_kept_token_decodes_to_exactly_what_was_kept() {
        let decoded: ApiToken = serde_json::from_value(full()).unwrap();
        let object = cached(full());
        assert!(matches!(object.form, Form::Kept { .. }), "{object:?}");
        let back = object.token().unwrap();
        assert_eq!(
            (&back.metadata, &back.spec, &back.status),
            (&decoded.metadata, &decoded.spec, &decoded.status)
        );
        // What the reconcile compares its status against, byte for byte after a round trip.
        let again = serde_json::to_value(object.token().unwrap().status.clone()).unwrap();
        assert_eq!(again, full()["status"]);
        assert_eq!(object.resource_version(), Some("9"));
        assert_eq!((object.namespace(), object.name()), ("ns", "t"));
    }

    #[test]
    fn a_token_like_the_sample_is_kept_in_half_its_json() {
        let mut token = compact::issued().0.clone();
        token.metadata.name = Some("payments-api".into());
        let status = token.status.as_mut().unwrap();
        status.access_key = Some("tmK7Q2XRZ4PL9WD3".into());
        status.fingerprint = Some("sha256:9f2c4e1ab07d3865".into());
        token.metadata.uid = Some("5b0c6f3e-9a41-4d2b-8f7e-2c1d0a9b8e7f".into());
        token.metadata.resource_version = Some("48213".into());
        let json = body_of(&token).unwrap();
        let object = Cached::new(
            "sample-namespace/payments-api".into(),
            &token.clone().into(),
        );
        let Form::Kept { body, .. } = &object.form else {
            panic!("{object:?}")
        };
        assert!(
            body.len() * 2 < json.len(),
            "{} of {}",
            body.len(),
            json.len()
        );
        assert_eq!(object.token().unwrap().status, token.status);
    }

    #[test]
    fn the_summary_answers_without_decoding() {
        let decoded: ApiToken = serde_json::from_value(full()).unwrap();
        let token = cached(full());
        let summary = token.summary();
        assert_eq!(*summary, Summary::of(&decoded));
        assert_eq!(
            (&*summary.role, summary.phase),
            ("writer", Some(Phase::Active))
        );
        assert_eq!(summary.next_rotation, Some(1_798_675_200));
        assert_eq!(summary.expiry, Some(1_811_808_000));
        assert_eq!(token.secret_name(), Some("s"));
        assert!(token.names_audiences());

        let mut plain = object("2027-01-01T00:00:00Z");
        plain["spec"]["audiences"] = json!([]);
        let plain = cached(plain);
        assert_eq!(
            plain.secret_name(),
            Some("t"),
            "defaults to the token's name"
        );
        assert!(!plain.names_audiences());
        let bad = cached(object("9999-12-31T23:59:59Z"));
        assert!(bad.undecodable().is_some() && bad.secret_name().is_none());
        assert!(!bad.names_audiences());
        let status: ApiTokenStatus = serde_json::from_value(full()["status"].clone()).unwrap();
        let known = Summary::of_status(Some(&status));
        assert_eq!(
            (&*known.role, known.phase, known.next_rotation, known.expiry),
            (
                "",
                Some(Phase::Active),
                Some(1_798_675_200),
                Some(1_811_808_000)
            )
        );
    }

    #[test]
    fn the_error_names_the_field_not_the_value() {
        let mut bad = object("2027-01-01T00:00:00Z");
        bad["spec"]["format"] = json!({"secretKeyLength": "tm-SECRETVALUE"});
        let token: TokenObject = serde_json::from_value(bad).unwrap();
        let shown = format!("{token:?}");
        assert!(shown.contains("spec.format.secretKeyLength"));
        assert!(!shown.contains("SECRETVALUE"));
    }
}
