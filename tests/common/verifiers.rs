//! ApiTokenVerifier helpers shared by the integration tests.

use kube::api::PostParams;
use serde_json::json;
use tokenmint::verifier::api::ApiTokenVerifier;

use super::TestNs;

pub async fn create_verifier(ns: &TestNs, name: &str, spec: serde_json::Value) -> ApiTokenVerifier {
    let verifier: ApiTokenVerifier = serde_json::from_value(json!({
        "apiVersion": "tokenmint.dev/v1alpha1",
        "kind": "ApiTokenVerifier",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    ns.api::<ApiTokenVerifier>()
        .create(&PostParams::default(), &verifier)
        .await
        .unwrap_or_else(|e| panic!("creating ApiTokenVerifier {name}: {e}"))
}

/// A verifier of the namespace's tokens with one `sha256-map` output, the Secret `output`.
pub async fn create_map_verifier(ns: &TestNs, name: &str, output: &str) -> ApiTokenVerifier {
    create_verifier(
        ns,
        name,
        json!({"outputs": [{"secretName": output, "format": "sha256-map"}]}),
    )
    .await
}
