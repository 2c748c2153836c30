//! ApiTokens as the watch delivers them, decoded one object at a time.
//!
//! A typed watch decodes a whole list at once, so one object that does not fit our types (an
//! `expiresAt` in the year 9999, written before the CRD bounded it, is beyond what the time library
//! holds) fails the list, and with it every token in the watched scope. Decoding each object on its
//! own turns that into an error on that one object. The error names the field, never its value, and
//! no log line carries the object (the client library's own warning prints the whole response body,
//! so [`crate::telemetry`] silences it).

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::api::{ApiToken, ApiTokenStatus};

/// One watched ApiToken.
// The decoded variant is the one nearly every object takes; boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TokenObject {
    /// Decoded as an [`ApiToken`].
    Decoded(ApiToken),
    /// Its metadata, its status if that decoded on its own, and the path of the first field that
    /// could not be decoded.
    Undecodable {
        metadata: ObjectMeta,
        status: Option<ApiTokenStatus>,
        field: String,
    },
}

impl TokenObject {
    /// The token, when it decoded.
    pub fn token(&self) -> Option<&ApiToken> {
        match self {
            TokenObject::Decoded(token) => Some(token),
            TokenObject::Undecodable { .. } => None,
        }
    }
}

/// Annotations of an ApiToken that tokenmint reads: its own (`tokenmint.dev/rotate`, ...).
const READ_ANNOTATIONS: &str = "tokenmint.dev/";

impl TokenObject {
    /// Drops what no reconcile reads before the object goes into the cache: managed fields, labels,
    /// other tools' annotations (`kubectl apply` keeps a whole copy of the manifest in one), owner
    /// references, finalizers and timestamps. At 10,000 tokens that is a third of the token cache
    /// for a plain create, more for applied manifests.
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
            annotations: annotations.filter(|a| !a.is_empty()),
            ..ObjectMeta::default()
        };
    }
}

impl From<ApiToken> for TokenObject {
    fn from(token: ApiToken) -> Self {
        TokenObject::Decoded(token)
    }
}

impl<'de> Deserialize<'de> for TokenObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, ApiToken>(&value) {
            Ok(token) => Ok(TokenObject::Decoded(token)),
            Err(error) => {
                let part = |key: &str| value.get(key).filter(|v| !v.is_null());
                let metadata = part("metadata")
                    .and_then(|m| ObjectMeta::deserialize(m).ok())
                    .unwrap_or_default();
                let status = part("status").and_then(|s| ApiTokenStatus::deserialize(s).ok());
                Ok(TokenObject::Undecodable {
                    metadata,
                    status,
                    field: error.path().to_string(),
                })
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
            TokenObject::Undecodable { metadata, .. } => metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            TokenObject::Decoded(token) => &mut token.metadata,
            TokenObject::Undecodable { metadata, .. } => metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(tokens[0].token().is_some());
        let TokenObject::Undecodable {
            metadata,
            status,
            field,
        } = &tokens[1]
        else {
            panic!("{:?}", tokens[1])
        };
        assert_eq!(metadata.name.as_deref(), Some("t"));
        assert_eq!(
            status.as_ref().and_then(|s| s.access_key.as_deref()),
            Some("AKIAVISIBLE")
        );
        assert_eq!(field, "spec.expiresAt");
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
        let mut token: TokenObject = serde_json::from_value(full).unwrap();
        token.keep_what_is_read();
        let token = token.token().unwrap();
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
