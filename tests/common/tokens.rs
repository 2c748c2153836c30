//! ApiToken helpers shared by the integration tests: create, read, wait for a phase or an Event,
//! patch, and the values that must never leave a Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokenmint::api::{ApiToken, ApiTokenSpec, Phase};

use super::{TestNs, wait_for};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn spec(role: &str) -> ApiTokenSpec {
    spec_of(json!({ "role": role }))
}

/// A spec from its JSON form, as a user would write it.
pub fn spec_of(fields: serde_json::Value) -> ApiTokenSpec {
    serde_json::from_value(fields).unwrap()
}

pub async fn create(ns: &TestNs, name: &str, spec: ApiTokenSpec) -> ApiToken {
    let api: Api<ApiToken> = ns.api();
    api.create(&PostParams::default(), &ApiToken::new(name, spec))
        .await
        .unwrap_or_else(|e| panic!("creating ApiToken {name}: {e}"))
}

pub async fn token(ns: &TestNs, name: &str) -> ApiToken {
    ns.api::<ApiToken>().get(name).await.unwrap()
}

/// Waits until the token's status reaches `phase` and `pred` holds, on a watch of that one token
/// (`kube::runtime::wait::await_condition`), so it returns on the event rather than on a poll.
pub async fn wait_phase(
    ns: &TestNs,
    name: &str,
    phase: Phase,
    pred: impl Fn(&ApiToken) -> bool,
) -> ApiToken {
    let reached = |t: Option<&ApiToken>| {
        t.is_some_and(|t| t.status.as_ref().and_then(|s| s.phase) == Some(phase) && pred(t))
    };
    let waited = tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(ns.api::<ApiToken>(), name, reached),
    )
    .await;
    match waited {
        Ok(Ok(Some(t))) => t,
        Ok(Ok(None)) => panic!("ApiToken {name} was deleted while waiting for {phase:?}"),
        Ok(Err(e)) => panic!("watching ApiToken {name}: {e}"),
        Err(_) => {
            let last = ns.api::<ApiToken>().get_opt(name).await.ok().flatten();
            panic!(
                "timed out after {WAIT:?} waiting for ApiToken {name} to be {phase:?}; status: {:?}",
                last.and_then(|t| t.status)
            )
        }
    }
}

pub async fn active(ns: &TestNs, name: &str) -> ApiToken {
    wait_phase(ns, name, Phase::Active, |_| true).await
}

pub fn status_of(t: &ApiToken) -> &tokenmint::api::ApiTokenStatus {
    t.status.as_ref().expect("status")
}

pub fn data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
        .collect()
}

pub async fn secret(ns: &TestNs, name: &str) -> Option<Secret> {
    ns.api::<Secret>().get_opt(name).await.unwrap()
}

pub async fn events(ns: &TestNs, name: &str) -> Vec<CoreEvent> {
    let list = ns
        .api::<CoreEvent>()
        .list(&ListParams::default())
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .collect()
}

pub async fn wait_event(ns: &TestNs, name: &str, reason: &str, type_: &str) -> CoreEvent {
    wait_for(
        &format!("{type_} Event {reason} on {name}"),
        WAIT,
        || async {
            events(ns, name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_))
        },
    )
    .await
}

pub async fn annotate(ns: &TestNs, name: &str, key: &str, value: &str) {
    let patch = json!({ "metadata": { "annotations": { key: value } } });
    ns.api::<ApiToken>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

pub async fn set_spec(
    ns: &TestNs,
    name: &str,
    spec_patch: serde_json::Value,
) -> Result<ApiToken, kube::Error> {
    ns.api::<ApiToken>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": spec_patch })),
        )
        .await
}

/// One token's current credential as its Secret holds it.
#[derive(Clone, Debug)]
pub struct Creds {
    pub bearer: String,
    pub basic: String,
    pub access_key: String,
    pub password: String,
}

impl Creds {
    /// The `Authorization` value of the Bearer form.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.bearer)
    }

    /// The `Authorization` value of the Basic form.
    pub fn basic(&self) -> String {
        format!("Basic {}", self.basic)
    }

    /// What must never leave the Secret (the access key included: it never belongs in a log).
    pub fn secrets(&self) -> Vec<String> {
        vec![
            self.bearer.clone(),
            self.basic.clone(),
            self.access_key.clone(),
            self.password.clone(),
        ]
    }
}

/// The current credential of `token`, from its Secret.
pub async fn creds(ns: &TestNs, token: &str) -> Creds {
    Creds::from_secret(&secret(ns, token).await.expect("the token's Secret"))
}

impl Creds {
    /// The credential a token's Secret holds, as a client that reads it would.
    pub fn from_secret(secret: &Secret) -> Creds {
        let d = data(secret);
        Creds {
            bearer: d["token"].clone(),
            basic: d["basic"].clone(),
            access_key: d["username"].clone(),
            password: d["password"].clone(),
        }
    }
}

/// Creates token `name`, waits until it is Active and returns its credential.
pub async fn issue(ns: &TestNs, name: &str, spec: ApiTokenSpec) -> Creds {
    create(ns, name, spec).await;
    active(ns, name).await;
    creds(ns, name).await
}

/// Every value that must never leave the Secret.
pub fn credential_values(secret: &Secret) -> Vec<String> {
    let d = data(secret);
    [
        "password",
        "token",
        "basic",
        "authorization-bearer",
        "authorization-basic",
    ]
    .iter()
    .filter_map(|k| d.get(*k).cloned())
    .collect()
}

/// Makes the operator look at token `name` once more (a throwaway annotation is a change) and waits
/// until a reconcile after that has finished: what a test asserts as "nothing happened" after this
/// was decided by the operator, not assumed after a sleep.
pub async fn barrier(op: &super::Operator, ns: &TestNs, name: &str) {
    let before = op.reconciles();
    annotate(
        ns,
        name,
        "test.tokenmint.dev/barrier",
        &rand::random::<u64>().to_string(),
    )
    .await;
    op.wait_reconciles_above(before).await;
}
