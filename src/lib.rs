//! tokenmint: mints, rotates and revokes API tokens declared as `ApiToken` resources.
//!
//! The reconcile is a pipeline with pure steps in the middle:
//! read ([`controller`]) → validate ([`validate`]) → decide ([`plan`], using [`secret`], [`token`],
//! [`schedule`]) → write and report ([`controller`], [`metrics`]). [`verifier`] renders what servers
//! check credentials with; [`authz`] is such a check for gateways.

pub mod api;
pub mod authz;
pub mod cache;
pub mod compact;
pub mod controller;
pub mod htpasswd;
pub mod keystore;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod queue;
pub mod schedule;
pub mod seal;
pub mod secret;
pub mod telemetry;
pub mod token;
pub mod validate;
pub mod verifier;
pub mod wakeups;
pub mod watch;
pub mod watched;

use kube::CustomResourceExt;

/// The ApiTokenVerifier CRD as YAML, exactly as committed under `crds/`.
pub fn verifier_crd_yaml() -> String {
    serde_yaml::to_string(&verifier::api::crd()).unwrap_or_default()
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
    let crd = describe_kind(api::ApiToken::crd(), API_TOKEN_DESCRIPTION);
    // Serializing a CRD built from our own types cannot fail.
    serde_yaml::to_string(&crd).unwrap_or_default()
}
