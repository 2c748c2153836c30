//! The operator against the local control plane: every behaviour of shared/API.md.

mod common;

use std::time::{Duration, Instant};

use common::tokens::*;
use common::{Operator, TestNs, apply_yaml, ensure_crds, kubectl, wait_for};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokenmint::api::{ApiToken, ApiTokenSpec, Phase};
use tokenmint::core::credential::{decode, fingerprint_of};

#[tokio::test]
async fn new_token_gets_a_complete_secret_and_active_status() {
    let ns = TestNs::new("issue").await;
    let op = Operator::start(&ns).await;
    let mut s: ApiTokenSpec = spec_of(json!({
        "role": "reader",
        "description": "Superset dashboards",
        "scopes": [
            {"type": "DATASOURCES:READ", "resource": "events", "filter": "tenant_id = 42"},
            {"type": "PIPES:READ", "resource": "top_pages"}
        ],
        "secretTemplate": {"labels": {"team": "analytics"}, "annotations": {"owner": "data"}},
        "format": {"prefix": "st-"}
    }));
    s.secret_name = Some("superset-reader-token".into());
    let mut t = ApiToken::new("superset-reader", s);
    t.metadata.labels = Some(
        [(
            "argocd.argoproj.io/instance".to_owned(),
            "analytics".to_owned(),
        )]
        .into(),
    );
    let started = Instant::now();
    ns.api::<ApiToken>()
        .create(&PostParams::default(), &t)
        .await
        .unwrap();
    let t = active(&ns, "superset-reader").await;
    eprintln!(
        "apply -> Active took {:?} (includes 200 ms polling)",
        started.elapsed()
    );

    let st = status_of(&t);
    let secret = secret(&ns, "superset-reader-token").await.expect("Secret");
    let d = data(&secret);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    let (user, pass) = (&d["username"], &d["password"]);
    assert_eq!((user.len(), pass.len()), (16, 32));
    assert_eq!(d["token"], format!("st-{user}-{pass}"));
    let basic = decode(&d["basic"]).unwrap();
    assert_eq!((&basic.username, &basic.password), (user, pass));
    assert_eq!(d["authorization-bearer"], format!("Bearer {}", d["token"]));
    assert_eq!(d["authorization-basic"], format!("Basic {}", d["basic"]));
    assert_eq!(d["role"], "reader");
    assert_eq!(
        d["scopes"],
        "DATASOURCES:READ:events:tenant_id = 42\nPIPES:READ:top_pages"
    );

    assert_eq!(st.access_key.as_deref(), Some(user.as_str()));
    assert_eq!(
        st.fingerprint.as_deref(),
        Some(fingerprint_of(&d["token"]).as_str())
    );
    assert_eq!(st.secret_name.as_deref(), Some("superset-reader-token"));
    assert_eq!(st.rotations, Some(0));
    assert_eq!(st.observed_generation, t.metadata.generation);
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Issued")
    );

    let labels = secret.labels();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("tokenmint")
    );
    assert_eq!(
        labels.get("tokenmint.dev/apitoken").map(String::as_str),
        Some("superset-reader")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("analytics"));
    assert!(
        !labels.contains_key("argocd.argoproj.io/instance"),
        "ApiToken labels must not be copied"
    );
    let annotations = secret.annotations();
    assert_eq!(annotations.get("owner").map(String::as_str), Some("data"));
    assert_eq!(
        annotations.get("tokenmint.dev/fingerprint"),
        st.fingerprint.as_ref()
    );
    assert!(
        annotations["tokenmint.dev/issued-at"]
            .parse::<Timestamp>()
            .is_ok()
    );
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ApiToken", Some(true))
    );
    assert_eq!(Some(&owner.uid), t.metadata.uid.as_ref());
    wait_event(&ns, "superset-reader", "Issued", "Normal").await;

    let metrics = op.metrics();
    assert!(metrics.contains(&format!(
        r#"tokenmint_token_info{{namespace="{}",name="superset-reader",role="reader",phase="Active"}} 1"#,
        ns.name
    )));
    for value in credential_values(&secret).iter().chain([pass]) {
        assert!(!metrics.contains(value.as_str()), "credential in /metrics");
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_rejected_at_apply_with_the_field_named() {
    ensure_crds();
    let ns = TestNs::new("reject").await;
    let cases = [
        (r#"role: "Bad Role""#, "spec.role"),
        (
            "role: r\n  scopes: [{type: \"lower:case\"}]",
            "spec.scopes[0].type",
        ),
        (
            "role: r\n  scopes: [{type: DATASOURCES:READ, filter: \"a = 1\"}]",
            "filter needs resource",
        ),
        (
            "role: r\n  scopes: [{type: PIPES:READ, resource: p}, {type: PIPES:READ, resource: p}]",
            "no two scopes",
        ),
        (
            "role: r\n  rotation: {period: 30days}",
            "spec.rotation.period",
        ),
        (
            "role: r\n  format: {prefix: \"has space\"}",
            "spec.format.prefix",
        ),
        (
            "role: r\n  format: {accessKeyLength: 4}",
            "spec.format.accessKeyLength",
        ),
        (
            "role: r\n  format: {secretKeyLength: 500}",
            "spec.format.secretKeyLength",
        ),
        ("role: r\n  secretName: Not_A_Name", "spec.secretName"),
        ("role: r\n  expiresAt: tomorrow", "spec.expiresAt"),
        (
            "role: r\n  secretTemplate: {labels: {app.kubernetes.io/managed-by: me}}",
            "tokenmint owns them",
        ),
        ("description: no role", "spec.role: Required value"),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let yaml = format!(
            "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiToken\nmetadata: {{name: bad-{i}}}\nspec:\n  {body}\n"
        );
        let out = apply_yaml(&ns.name, &yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted:\n{yaml}");
        assert!(
            stderr.contains(expected),
            "case {i}: expected {expected:?} in:\n{stderr}"
        );
    }

    // Transition rules: revocation is final, secretName is immutable.
    create(&ns, "final", spec_of(json!({"role": "r", "revoked": true}))).await;
    let err = set_spec(&ns, "final", json!({"revoked": false}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("revocation is final"), "{err}");
    for patch in [json!({"secretName": "other"}), json!({"revoked": null})] {
        let err = set_spec(&ns, "final", patch.clone()).await;
        if patch.get("secretName").is_some() {
            assert!(
                err.unwrap_err()
                    .to_string()
                    .contains("spec.secretName is immutable")
            );
        } else {
            assert!(err.unwrap_err().to_string().contains("revocation is final"));
        }
    }
    create(
        &ns,
        "named",
        spec_of(json!({"role": "r", "secretName": "one"})),
    )
    .await;
    for patch in [json!({"secretName": "two"}), json!({"secretName": null})] {
        let err = set_spec(&ns, "named", patch).await.unwrap_err().to_string();
        assert!(err.contains("spec.secretName is immutable"), "{err}");
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn out_of_bounds_period_ends_as_invalid_spec_without_a_credential() {
    let ns = TestNs::new("invalid").await;
    let _op = Operator::start(&ns).await;
    create(
        &ns,
        "too-fast",
        spec_of(json!({"role": "r", "rotation": {"period": "30s"}})),
    )
    .await;
    let t = wait_phase(&ns, "too-fast", Phase::Failed, |_| true).await;
    let ready = &status_of(&t).conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("spec.rotation.period"),
        "{}",
        ready.message
    );
    assert!(secret(&ns, "too-fast").await.is_none());
    wait_event(&ns, "too-fast", "InvalidSpec", "Warning").await;
    // Fixing the field issues the token.
    set_spec(&ns, "too-fast", json!({"rotation": {"period": "1h"}}))
        .await
        .unwrap();
    active(&ns, "too-fast").await;
    ns.cleanup().await;
}

#[tokio::test]
async fn foreign_secret_is_left_byte_for_byte_untouched() {
    let ns = TestNs::new("conflict").await;
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("taken".into()),
            ..Default::default()
        },
        string_data: Some([("password".to_owned(), "someone-elses".to_owned())].into()),
        ..Default::default()
    };
    let before = ns
        .api::<Secret>()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let op = Operator::start(&ns).await;
    create(&ns, "taken", spec("reader")).await;
    let t = wait_phase(&ns, "taken", Phase::Failed, |_| true).await;
    let ready = &status_of(&t).conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretConflict")
    );
    wait_event(&ns, "taken", "SecretConflict", "Warning").await;
    let stalled = status_of(&t)
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled");
    assert_eq!(stalled.map(|c| c.status.as_str()), Some("True"));
    // The first look cannot know the name is taken (such a Secret is not watched), so its create may be
    // refused once; from then on the token reads before it plans a create: no further wasted mint.
    let wasted = op.metric("tokenmint_wasted_mints_total");
    assert!(wasted <= 1.0, "{wasted} wasted mints");
    barrier(&op, &ns, "taken").await;
    barrier(&op, &ns, "taken").await;
    assert_eq!(op.metric("tokenmint_wasted_mints_total"), wasted);
    let after = secret(&ns, "taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.data, before.data);
    assert_eq!(after.metadata.owner_references, None);
    ns.cleanup().await;
}

#[tokio::test]
async fn restart_and_lost_status_change_no_credential_and_write_nothing() {
    let ns = TestNs::new("idempotent").await;
    let mut op = Operator::start(&ns).await;
    create(
        &ns,
        "steady",
        spec_of(json!({"role": "r", "rotation": {"period": "1h"}})),
    )
    .await;
    let t = active(&ns, "steady").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t_rv, s_rv) = (
        token(&ns, "steady").await.metadata.resource_version,
        secret(&ns, "steady")
            .await
            .unwrap()
            .metadata
            .resource_version,
    );

    op.restart().await;
    op.wait_for_log("caches synced", WAIT).await;
    // The restarted operator reconciles every token it lists: wait until it has decided.
    op.wait_reconciles_above(0).await;
    assert_eq!(
        token(&ns, "steady").await.metadata.resource_version,
        t_rv,
        "restart wrote the ApiToken"
    );
    assert_eq!(
        secret(&ns, "steady")
            .await
            .unwrap()
            .metadata
            .resource_version,
        s_rv,
        "restart wrote the Secret"
    );

    // Losing the status subresource: the operator rebuilds it from the Secret, same credential.
    kubectl(&[
        "patch",
        "apitoken",
        "steady",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":null}"#,
    ]);
    let rebuilt = wait_phase(&ns, "steady", Phase::Active, |_| true).await;
    assert_eq!(status_of(&rebuilt).fingerprint, status_of(&t).fingerprint);
    assert_eq!(status_of(&rebuilt).issued_at, status_of(&t).issued_at);
    assert_eq!(status_of(&rebuilt).rotations, Some(0));
    assert_eq!(
        secret(&ns, "steady")
            .await
            .unwrap()
            .metadata
            .resource_version,
        s_rv
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn scheduled_rotation_lands_within_a_second_of_next_rotation_at() {
    let ns = TestNs::new("rotate").await;
    let _op = Operator::start(&ns).await;
    create(
        &ns,
        "minutely",
        spec_of(json!({"role": "r", "rotation": {"period": "1m"}})),
    )
    .await;
    let t = active(&ns, "minutely").await;
    let first = status_of(&t).clone();
    let due = first.next_rotation_at.clone().unwrap().0;
    let old = secret(&ns, "minutely").await.unwrap();

    // Watch the Secret itself: the credential must change between `due` and `due + 1s`, and a
    // read that finished before `due` must still show the old one.
    let rotated = wait_for(
        "the scheduled rotation",
        Duration::from_secs(90),
        || async {
            let s = secret(&ns, "minutely").await?;
            let read_at = Timestamp::now();
            let changed = data(&s)["token"] != data(&old)["token"];
            assert!(
                !changed || read_at >= due,
                "rotated early: new credential seen at {read_at}, due {due}"
            );
            changed.then_some(read_at)
        },
    )
    .await;
    let late = rotated.duration_since(due);
    eprintln!("scheduled rotation landed {late:?} after nextRotationAt");
    let issued = secret(&ns, "minutely")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap()["tokenmint.dev/issued-at"]
        .parse::<Timestamp>()
        .unwrap();
    assert!(issued >= due, "issued at {issued}, before the due {due}");
    assert!(
        late.as_millis() <= 1200,
        "rotated {late:?} after nextRotationAt (200 ms of that is polling)"
    );

    let t = wait_phase(&ns, "minutely", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    let st = status_of(&t);
    assert_ne!(st.fingerprint, first.fingerprint);
    assert!(st.issued_at.as_ref().unwrap().0 >= due);
    assert!(st.next_rotation_at.as_ref().unwrap().0 > due);
    let ready = &st.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Rotated")
    );
    wait_event(&ns, "minutely", "Rotated", "Normal").await;
    ns.cleanup().await;
}

#[tokio::test]
async fn overdue_rotation_after_an_outage_happens_once() {
    let ns = TestNs::new("outage").await;
    let mut op = Operator::start(&ns).await;
    create(
        &ns,
        "missed",
        spec_of(json!({"role": "r", "rotation": {"period": "1m"}})),
    )
    .await;
    active(&ns, "missed").await;
    op.stop();
    // Miss two whole periods.
    tokio::time::sleep(Duration::from_secs(130)).await;
    let restarted = Timestamp::now();
    op.restart().await;
    let t = wait_phase(&ns, "missed", Phase::Active, |t| {
        status_of(t).rotations >= Some(1)
    })
    .await;
    wait_event(&ns, "missed", "Rotated", "Normal").await;
    barrier(&op, &ns, "missed").await;
    let t2 = token(&ns, "missed").await;
    assert_eq!(
        status_of(&t2).rotations,
        Some(1),
        "one rotation for the outage, not one per missed period"
    );
    assert_eq!(status_of(&t2).fingerprint, status_of(&t).fingerprint);
    let next = status_of(&t2).next_rotation_at.as_ref().unwrap().0;
    assert!(
        next.duration_since(restarted).as_secs() >= 55,
        "next rotation is a full period after the restart"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn manual_rotation_by_annotation_happens_once() {
    let ns = TestNs::new("manual").await;
    let mut op = Operator::start(&ns).await;
    create(&ns, "refresh", spec("reader")).await;
    let first = active(&ns, "refresh").await;
    annotate(&ns, "refresh", "tokenmint.dev/rotate", "leak-2026-11-23").await;
    let t = wait_phase(&ns, "refresh", Phase::Active, |t| {
        status_of(t).last_rotate_request.as_deref() == Some("leak-2026-11-23")
    })
    .await;
    assert_eq!(status_of(&t).rotations, Some(1));
    assert_ne!(status_of(&t).fingerprint, status_of(&first).fingerprint);
    wait_event(&ns, "refresh", "Rotated", "Normal").await;
    let s = secret(&ns, "refresh").await.unwrap();
    assert_eq!(
        fingerprint_of(&data(&s)["token"]),
        status_of(&t).fingerprint.clone().unwrap()
    );

    // The handled value survives a restart and status loss without rotating again.
    kubectl(&[
        "patch",
        "apitoken",
        "refresh",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":null}"#,
    ]);
    op.restart().await;
    wait_phase(&ns, "refresh", Phase::Active, |_| true).await;
    barrier(&op, &ns, "refresh").await;
    let again = token(&ns, "refresh").await;
    assert_eq!(status_of(&again).rotations, Some(1));
    assert_eq!(status_of(&again).fingerprint, status_of(&t).fingerprint);
    assert_eq!(
        status_of(&again).last_rotate_request.as_deref(),
        Some("leak-2026-11-23")
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn revoked_token_loses_its_secret_and_cannot_be_restored() {
    let ns = TestNs::new("revoke").await;
    let op = Operator::start(&ns).await;
    create(&ns, "leaked", spec("reader")).await;
    let issued = active(&ns, "leaked").await;
    assert!(secret(&ns, "leaked").await.is_some());
    set_spec(&ns, "leaked", json!({"revoked": true}))
        .await
        .unwrap();
    let t = wait_phase(&ns, "leaked", Phase::Revoked, |_| true).await;
    let st = status_of(&t);
    assert!(st.revoked_at.is_some());
    assert_eq!(st.next_rotation_at, None);
    assert_eq!(
        st.access_key,
        status_of(&issued).access_key,
        "the record keeps the public access key"
    );
    let ready = &st.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Revoked")
    );
    assert!(
        secret(&ns, "leaked").await.is_none(),
        "Secret must be deleted at once"
    );
    wait_event(&ns, "leaked", "Revoked", "Normal").await;
    let err = set_spec(&ns, "leaked", json!({"revoked": false}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revocation is final"));
    // The token stays as the record and no credential comes back.
    barrier(&op, &ns, "leaked").await;
    assert!(secret(&ns, "leaked").await.is_none());
    assert_eq!(
        status_of(&token(&ns, "leaked").await).phase,
        Some(Phase::Revoked)
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn expiry_removes_the_secret_at_the_instant() {
    let ns = TestNs::new("expiry").await;
    let _op = Operator::start(&ns).await;
    let expires = Timestamp::from_second(Timestamp::now().as_second() + 4).unwrap();
    create(
        &ns,
        "brief",
        spec_of(json!({"role": "r", "expiresAt": expires.to_string()})),
    )
    .await;
    let t = active(&ns, "brief").await;
    assert_eq!(
        status_of(&t).expires_at.as_ref().map(|t| t.0),
        Some(expires)
    );
    let gone = wait_for("the Secret to be deleted at expiry", WAIT, || async {
        secret(&ns, "brief").await.is_none().then(Timestamp::now)
    })
    .await;
    let late = gone.duration_since(expires);
    eprintln!("expiry carried out {late:?} after expiresAt");
    assert!(
        late.as_millis() >= 0 && late.as_millis() <= 1200,
        "{late:?}"
    );
    let t = wait_phase(&ns, "brief", Phase::Expired, |_| true).await;
    assert_eq!(status_of(&t).conditions[0].reason, "Expired");
    wait_event(&ns, "brief", "Expired", "Normal").await;

    // A past expiry on create: Expired at once, nothing minted.
    create(
        &ns,
        "stillborn",
        spec_of(json!({"role": "r", "expiresAt": "2020-01-01T00:00:00Z"})),
    )
    .await;
    let t = wait_phase(&ns, "stillborn", Phase::Expired, |_| true).await;
    assert_eq!(status_of(&t).access_key, None);
    assert!(secret(&ns, "stillborn").await.is_none());
    ns.cleanup().await;
}

#[tokio::test]
async fn tampered_or_deleted_secret_gets_a_new_credential_and_a_warning() {
    let ns = TestNs::new("tamper").await;
    let op = Operator::start(&ns).await;
    create(&ns, "guarded", spec("reader")).await;
    let first = active(&ns, "guarded").await;
    let mut seen = credential_values(&secret(&ns, "guarded").await.unwrap());

    let patch = json!({"stringData": {"password": "hunter2hunter2hunter2"}});
    ns.api::<Secret>()
        .patch("guarded", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let t = wait_phase(&ns, "guarded", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    assert_ne!(status_of(&t).fingerprint, status_of(&first).fingerprint);
    let s = secret(&ns, "guarded").await.unwrap();
    assert_ne!(data(&s)["password"], "hunter2hunter2hunter2");
    assert_eq!(
        fingerprint_of(&data(&s)["token"]),
        status_of(&t).fingerprint.clone().unwrap()
    );
    let warning = wait_event(&ns, "guarded", "Rotated", "Warning").await;
    assert!(!warning.message.unwrap_or_default().contains("hunter2"));
    seen.extend(credential_values(&s));

    ns.api::<Secret>()
        .delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    let t = wait_phase(&ns, "guarded", Phase::Active, |t| {
        status_of(t).rotations == Some(2)
    })
    .await;
    let s = secret(&ns, "guarded").await.expect("Secret recreated");
    assert_eq!(
        fingerprint_of(&data(&s)["token"]),
        status_of(&t).fingerprint.clone().unwrap()
    );
    seen.extend(credential_values(&s));

    // Secrets stay secret: nothing minted here appears in the log, Events or status.
    let log = op.log();
    let event_text = serde_json::to_string(&events(&ns, "guarded").await).unwrap();
    let status_text = serde_json::to_string(&t.status).unwrap();
    for value in &seen {
        assert!(
            !log.contains(value.as_str()),
            "credential in the operator log"
        );
        assert!(
            !event_text.contains(value.as_str()),
            "credential in an Event"
        );
        assert!(
            !status_text.contains(value.as_str()),
            "credential in status"
        );
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn deleting_the_token_garbage_collects_its_secret() {
    let ns = TestNs::new("gc").await;
    let op = Operator::start(&ns).await;
    create(&ns, "temporary", spec("reader")).await;
    active(&ns, "temporary").await;
    ns.api::<ApiToken>()
        .delete("temporary", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(
        "the Secret to be garbage-collected",
        Duration::from_secs(60),
        || async { secret(&ns, "temporary").await.is_none().then_some(()) },
    )
    .await;
    wait_for("per-token metrics to go", WAIT, || async {
        (!op.metrics().contains(r#"name="temporary""#)).then_some(())
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn same_token_name_in_two_namespaces_gets_different_credentials() {
    let (a, b) = (TestNs::new("twin-a").await, TestNs::new("twin-b").await);
    let (_op_a, _op_b) = (Operator::start(&a).await, Operator::start(&b).await);
    create(&a, "shared", spec("reader")).await;
    create(&b, "shared", spec("reader")).await;
    let (ta, tb) = (active(&a, "shared").await, active(&b, "shared").await);
    assert_ne!(status_of(&ta).access_key, status_of(&tb).access_key);
    assert_ne!(status_of(&ta).fingerprint, status_of(&tb).fingerprint);
    a.cleanup().await;
    b.cleanup().await;
}

#[tokio::test]
async fn examples_apply_cleanly_and_reach_their_phases() {
    let ns = TestNs::new("examples").await;
    let _op = Operator::start(&ns).await;
    let dir = std::path::Path::new(common::REPO).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files.iter().filter(|f| !f.ends_with("00-namespace.yaml")) {
        let yaml = std::fs::read_to_string(file).unwrap().replace(
            "namespace: tokenmint-demo",
            &format!("namespace: {}", ns.name),
        );
        common::ok(apply_yaml(&ns.name, &yaml));
    }
    for (name, phase) in [
        ("minimal", Phase::Active),
        ("superset-reader", Phase::Active),
        ("pinot-ingest", Phase::Active),
        ("rotating", Phase::Active),
        ("contractor", Phase::Active),
        ("retired", Phase::Revoked),
        ("web-client", Phase::Active),
        ("tenant-42", Phase::Active),
        ("tenant-7", Phase::Active),
    ] {
        wait_phase(&ns, name, phase, |_| true).await;
    }
    // The example pair: the verifier accepts the token and renders both outputs.
    let client = wait_phase(&ns, "web-client", Phase::Active, |t| {
        status_of(t).audiences.first().is_some_and(|a| a.accepted)
    })
    .await;
    let user = status_of(&client).access_key.clone().unwrap();
    wait_for("the example verifier's outputs", WAIT, || async {
        let htpasswd = data(&secret(&ns, "web-htpasswd").await?)
            .get("auth")?
            .clone();
        let map = data(&secret(&ns, "web-tokens").await?)
            .get("tokens.json")?
            .clone();
        (htpasswd.starts_with(&format!("{user}:$5$")) && map.contains(&user)).then_some(())
    })
    .await;
    // The Trino pair: both tenants in the password file, each with its own filter in the rules.
    wait_for("the example trino output", WAIT, || async {
        let out = data(&secret(&ns, "warehouse-trino").await?);
        let (users, rules) = (out.get("password.db")?, out.get("rules.json")?);
        (users.lines().count() == 2
            && rules.contains("suppkey = 42")
            && rules.contains("suppkey = 7"))
        .then_some(())
    })
    .await;
    let pinot = data(&secret(&ns, "pinot-ingest").await.unwrap());
    assert!(pinot["token"].starts_with("st-") && pinot["token"].len() == 3 + 16 + 1 + 32);
    assert!(secret(&ns, "superset-reader-token").await.is_some());
    ns.cleanup().await;
}
