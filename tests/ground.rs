//! The ground the operator stands on is real: a ready apiserver at the pinned
//! release, RBAC that denies, a garbage collector that collects, a namespace
//! controller that finalizes, and server-side apply that detects conflicts.
mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Resource,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use common::{TestNs, wait_for};

fn pinned_kubernetes_version() -> String {
    let go_mod =
        std::fs::read_to_string(format!("{}/hack/controlplane/go.mod", common::REPO)).unwrap();
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
        .map(|v| v.trim().to_string())
        .expect("k8s.io/kubernetes pin in hack/controlplane/go.mod")
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn api_status(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error status, got {other}"),
    }
}

#[tokio::test]
async fn apiserver_is_ready_at_the_pinned_version() {
    let client = common::client().await;
    let readyz = kube::core::Request::new("")
        .get("readyz", &Default::default())
        .unwrap();
    assert_eq!(client.request_text(readyz).await.unwrap(), "ok");
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, pinned_kubernetes_version());
}

#[tokio::test]
async fn rbac_denies_a_service_account_without_rights() {
    let ns = TestNs::new("ground-rbac").await;
    let token = ns.service_account_token("nobody").await;
    // Same server and CA as the admin, but authenticated only by the bearer token.
    let as_nobody = common::client_for_token(&token).await;
    let err = Api::<Secret>::namespaced(as_nobody, &ns.name)
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without rights must not list Secrets");
    let kube::Error::Api(status) = err else {
        panic!("expected 403, got {err}")
    };
    assert_eq!(status.code, 403, "{status:?}");
    // 403 rather than 401: the token authenticated, and as the right identity.
    assert!(
        status
            .message
            .contains(&format!("system:serviceaccount:{}:nobody", ns.name)),
        "{}",
        status.message
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn dependents_of_a_deleted_owner_are_garbage_collected() {
    let ns = TestNs::new("ground-gc").await;
    let cms: Api<ConfigMap> = ns.api();
    let owner = cms
        .create(&PostParams::default(), &config_map("owner"))
        .await
        .unwrap();
    let mut child = config_map("child");
    child.metadata.owner_references = Some(vec![OwnerReference {
        api_version: ConfigMap::api_version(&()).into(),
        kind: ConfigMap::kind(&()).into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &child).await.unwrap();

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(
        "the garbage collector to delete the child",
        Duration::from_secs(30),
        || async { cms.get_opt("child").await.unwrap().is_none().then_some(()) },
    )
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn deleted_namespaces_are_finalized() {
    let ns = TestNs::new("ground-nsdel").await;
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &config_map("content"))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    let name = ns.name.clone();
    ns.cleanup().await;
    wait_for(
        "the namespace controller to remove the namespace",
        Duration::from_secs(30),
        || async {
            namespaces
                .get_opt(&name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn server_side_apply_reports_conflicts_between_managers() {
    let ns = TestNs::new("ground-ssa").await;
    let cms: Api<ConfigMap> = ns.api();
    let apply = |value: &str| {
        Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "shared" },
            "data": { "key": value },
        }))
    };
    cms.patch("shared", &PatchParams::apply("manager-a"), &apply("a"))
        .await
        .unwrap();

    let err = cms
        .patch("shared", &PatchParams::apply("manager-b"), &apply("b"))
        .await
        .expect_err("a second manager changing an owned field must conflict");
    assert_eq!(api_status(err), 409);
    assert_eq!(cms.get("shared").await.unwrap().data.unwrap()["key"], "a");

    let forced = cms
        .patch(
            "shared",
            &PatchParams::apply("manager-b").force(),
            &apply("b"),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["key"], "b");
    let managers: Vec<_> = forced
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(
        managers,
        ["manager-b"],
        "forcing transfers ownership of the field"
    );
    ns.cleanup().await;
}
