//! Rotation with `overlap` against the local control plane: the replaced credential stays in the
//! Secret as `previous-*` until it retires, at its instant or at once on request.

mod common;

use std::time::Duration;

use common::tokens::*;
use common::{Operator, TestNs, wait_for};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use tokenmint::api::{ApiToken, Phase};

const PREVIOUS_KEYS: [&str; 3] = ["previous-username", "previous-password", "previous-token"];

fn annotation(secret: &Secret, key: &str) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(key).cloned()
}

/// Rotates `name` by request and waits until the operator handled it.
async fn rotate(ns: &TestNs, name: &str, request: &str) -> ApiToken {
    annotate(ns, name, "tokenmint.dev/rotate", request).await;
    wait_phase(ns, name, Phase::Active, |t| {
        status_of(t).last_rotate_request.as_deref() == Some(request)
    })
    .await
}

#[tokio::test]
async fn the_replaced_credential_stays_valid_until_it_retires_then_goes_within_a_second() {
    let ns = TestNs::new("overlap").await;
    let _op = Operator::start(&ns).await;
    create(
        &ns,
        "smooth",
        spec_of(json!({"role": "r", "rotation": {"period": "1h", "overlap": "6s"}})),
    )
    .await;
    let first = active(&ns, "smooth").await;
    let old = data(&secret(&ns, "smooth").await.unwrap());

    let t = rotate(&ns, "smooth", "r1").await;
    let previous = status_of(&t).previous.clone().expect("status.previous");
    assert_eq!(previous.access_key, old["username"]);
    assert_eq!(
        Some(previous.fingerprint.clone()),
        status_of(&first).fingerprint
    );
    let rotated_at = status_of(&t).issued_at.clone().unwrap().0;
    assert_eq!(
        previous.retires_at.0,
        rotated_at + jiff::SignedDuration::from_secs(6)
    );
    let s = secret(&ns, "smooth").await.unwrap();
    let now = data(&s);
    assert_eq!(now["previous-username"], old["username"]);
    assert_eq!(now["previous-password"], old["password"]);
    assert_eq!(now["previous-token"], old["token"]);
    assert_ne!(
        now["password"], old["password"],
        "the current keys hold the new credential"
    );
    assert_eq!(
        annotation(&s, "tokenmint.dev/previous-fingerprint"),
        Some(previous.fingerprint.clone())
    );
    assert!(annotation(&s, "tokenmint.dev/previous-retires-at").is_some());

    // At retiresAt, and no later than a second after it, the previous keys go.
    let due = previous.retires_at.0;
    let gone_at = wait_for(
        "the previous credential retired",
        Duration::from_secs(20),
        || async {
            let s = secret(&ns, "smooth").await?;
            let read_at = Timestamp::now();
            let still = PREVIOUS_KEYS.iter().any(|k| data(&s).contains_key(*k));
            assert!(
                still || read_at >= due,
                "retired early: gone at {read_at}, due {due}"
            );
            (!still).then_some(read_at)
        },
    )
    .await;
    let late = gone_at.duration_since(due);
    eprintln!("previous credential retired {late:?} after retiresAt");
    assert!(late.as_millis() <= 1200, "retired {late:?} after retiresAt");
    let s = secret(&ns, "smooth").await.unwrap();
    assert_eq!(annotation(&s, "tokenmint.dev/previous-fingerprint"), None);
    assert_eq!(data(&s)["password"], now["password"]);
    let t = wait_phase(&ns, "smooth", Phase::Active, |t| {
        status_of(t).previous.is_none()
    })
    .await;
    assert_eq!(status_of(&t).rotations, Some(1));
    ns.cleanup().await;
}

#[tokio::test]
async fn retire_previous_retires_the_previous_credential_at_once() {
    let ns = TestNs::new("retire").await;
    let op = Operator::start(&ns).await;
    create(
        &ns,
        "leaky",
        spec_of(json!({"role": "r", "rotation": {"period": "30d", "overlap": "1d"}})),
    )
    .await;
    active(&ns, "leaky").await;
    let t = rotate(&ns, "leaky", "r1").await;
    assert!(status_of(&t).previous.is_some());

    annotate(&ns, "leaky", "tokenmint.dev/retire-previous", "leak-1").await;
    let t = wait_phase(&ns, "leaky", Phase::Active, |t| {
        status_of(t).last_retire_request.as_deref() == Some("leak-1")
    })
    .await;
    assert_eq!(status_of(&t).previous, None);
    let s = secret(&ns, "leaky").await.unwrap();
    for key in PREVIOUS_KEYS {
        assert!(!data(&s).contains_key(key), "{key} still in the Secret");
    }
    assert_eq!(status_of(&t).rotations, Some(1), "retiring does not rotate");

    // Rotate and retire in one step: a new credential, no overlap.
    let both = json!({"metadata": {"annotations": {
        "tokenmint.dev/rotate": "r2", "tokenmint.dev/retire-previous": "leak-2",
    }}});
    ns.api::<ApiToken>()
        .patch(
            "leaky",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&both),
        )
        .await
        .unwrap();
    let t = wait_phase(&ns, "leaky", Phase::Active, |t| {
        status_of(t).last_rotate_request.as_deref() == Some("r2")
    })
    .await;
    assert_eq!(status_of(&t).previous, None);
    assert_eq!(status_of(&t).rotations, Some(2));
    barrier(&op, &ns, "leaky").await;
    let s = secret(&ns, "leaky").await.unwrap();
    assert!(!data(&s).contains_key("previous-password"));
    ns.cleanup().await;
}

#[tokio::test]
async fn revocation_removes_the_previous_credential_with_the_current_one() {
    let ns = TestNs::new("overlap-revoke").await;
    let _op = Operator::start(&ns).await;
    create(
        &ns,
        "both",
        spec_of(json!({"role": "r", "rotation": {"period": "30d", "overlap": "1d"}})),
    )
    .await;
    active(&ns, "both").await;
    rotate(&ns, "both", "r1").await;
    set_spec(&ns, "both", json!({"revoked": true}))
        .await
        .unwrap();
    let t = wait_phase(&ns, "both", Phase::Revoked, |_| true).await;
    assert_eq!(status_of(&t).previous, None);
    assert!(secret(&ns, "both").await.is_none());
    ns.cleanup().await;
}

#[tokio::test]
async fn an_overlap_not_shorter_than_the_period_is_invalid_spec() {
    let ns = TestNs::new("overlap-invalid").await;
    let _op = Operator::start(&ns).await;
    create(
        &ns,
        "wrong",
        spec_of(json!({"role": "r", "rotation": {"period": "1h", "overlap": "1h"}})),
    )
    .await;
    let t = wait_phase(&ns, "wrong", Phase::Failed, |_| true).await;
    let ready = &status_of(&t).conditions[0];
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("spec.rotation.overlap"),
        "{}",
        ready.message
    );
    assert!(secret(&ns, "wrong").await.is_none());
    ns.cleanup().await;
}
