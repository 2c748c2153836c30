//! ApiTokenVerifier helpers shared by the integration tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::PostParams;
use serde_json::json;
use tokenmint::api::verifier::ApiTokenVerifier;

use super::tokens::{WAIT, data, secret};
use super::{TestNs, wait_for};

/// Creates the ApiTokenVerifier `name` with `spec` in `ns`.
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
        // authz follows the output through the API: its servers see a change at once.
        json!({"publishDelay": "0s", "outputs": [{"secretName": output, "format": "sha256-map"}]}),
    )
    .await
}

/// Waits until the verifier `name` holds `access_key` in its sha256-map output `output` and reports
/// `Ready=True`: the operator could read the token's Secret, write the output and its status.
pub async fn wait_published(ns: &TestNs, name: &str, output: &str, access_key: &str) {
    wait_for("the verifier's output and Ready", WAIT, || async {
        let map = data(&secret(ns, output).await?).get("tokens.json")?.clone();
        let ready = ready(ns, name).await?;
        (map.contains(access_key) && ready.status == "True").then_some(())
    })
    .await
}

/// The verifier `name`'s Ready condition, once it has one.
pub async fn ready(ns: &TestNs, name: &str) -> Option<Condition> {
    let v = ns.api::<ApiTokenVerifier>().get(name).await.ok()?;
    v.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
}
