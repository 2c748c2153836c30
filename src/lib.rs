//! tokenmint: mints, rotates and revokes API tokens declared as `ApiToken` resources.
//!
//! The reconcile is a pipeline with pure steps in the middle:
//! read ([`controller`]) → validate ([`validate`]) → decide ([`plan`], using [`secret`], [`token`],
//! [`schedule`]) → write and report ([`controller`], [`metrics`]).

pub mod api;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod schedule;
pub mod secret;
pub mod telemetry;
pub mod token;
pub mod validate;

use kube::CustomResourceExt;

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    let crd = api::ApiToken::crd();
    // Serializing a CRD built from our own types cannot fail.
    serde_yaml::to_string(&crd).unwrap_or_default()
}
