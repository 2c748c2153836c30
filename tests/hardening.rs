//! What a hostile tenant or an unlucky SRE can do to a token, against the local control plane: the
//! seal, hostile input, one broken object, foreign Secrets, finalizers, two operators, a hung API.

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tokens::*;
use common::{Operator, TestNs, apply_yaml, http_get, kubectl, wait_for};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokenmint::api::{ApiToken, Phase};
use tokenmint::core::credential::Credential;

const SEAL: &str = "tokenmint.dev/seal";
const SEAL_KEY_ID: &str = "tokenmint.dev/seal-key-id";

fn annotations(secret: &Secret) -> BTreeMap<String, String> {
    secret.metadata.annotations.clone().unwrap_or_default()
}

async fn merge_secret(ns: &TestNs, name: &str, patch: serde_json::Value) {
    ns.api::<Secret>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patching Secret {name}: {e}"));
}

/// Ready and Stalled of a token, as (status, reason).
fn condition(t: &ApiToken, type_: &str) -> Option<(String, String)> {
    status_of(t)
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn hostile_manifests_are_rejected_at_apply_with_the_field_named() {
    let ns = TestNs::new("hostile-apply").await;
    common::ensure_crds();
    let long_name = "n".repeat(64);
    let cases = [
        (
            format!("metadata: {{name: {long_name}}}\nspec: {{role: r}}"),
            "at most 63 characters",
        ),
        (
            "metadata: {name: forever}\nspec: {role: r, expiresAt: \"9999-12-31T23:59:59Z\"}"
                .to_owned(),
            "before the year 9000",
        ),
        (
            "metadata: {name: inject}\nspec:\n  role: r\n  scopes:\n  - {type: \"DATASOURCES:READ\", resource: events, filter: \"a = 1\\nADMIN\"}"
                .to_owned(),
            "filter",
        ),
        (
            "metadata: {name: weak}\nspec: {role: r, format: {secretKeyLength: 16}}".to_owned(),
            "secretKeyLength",
        ),
    ];
    for (body, expected) in cases {
        let yaml = format!("apiVersion: tokenmint.dev/v1alpha1\nkind: ApiToken\n{body}\n");
        let out = apply_yaml(&ns.name, &yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{yaml}");
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn template_keys_the_api_server_would_refuse_are_invalid_spec_not_endless_retries() {
    let ns = TestNs::new("hostile-template").await;
    let op = Operator::start(&ns).await;
    let cases = [
        ("badkey", json!({"labels": {"bad key!": "x"}}), "labels"),
        (
            "longvalue",
            json!({"labels": {"team": "v".repeat(64)}}),
            "labels",
        ),
        (
            "replicated",
            json!({"annotations": {"reflector.v1.k8s.emberstack.com/reflection-allowed": "true"}}),
            "other namespaces",
        ),
    ];
    for (name, template, _) in &cases {
        create(
            &ns,
            name,
            spec_of(json!({"role": "r", "secretTemplate": template})),
        )
        .await;
    }
    for (name, _, expected) in &cases {
        let t = wait_phase(&ns, name, Phase::Failed, |_| true).await;
        let ready = status_of(&t)
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason, "InvalidSpec", "{name}");
        assert!(
            ready.message.contains(expected),
            "{name}: {}",
            ready.message
        );
        assert_eq!(
            condition(&t, "Stalled"),
            Some(("True".into(), "InvalidSpec".into()))
        );
        assert!(secret(&ns, name).await.is_none(), "{name}: nothing minted");
    }
    barrier(&op, &ns, "badkey").await;
    assert_eq!(
        op.metric(r#"tokenmint_reconcile_errors_total{kind="write_secret"}"#),
        0.0,
        "no write was even tried"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn one_undecodable_token_is_an_error_on_that_token_only() {
    let ns = TestNs::new("undecodable").await;
    common::ensure_crds();
    create(&ns, "broken", spec("reader")).await;
    // The schema takes any RFC 3339 date in status; the time library's range ends in 9999. The
    // access key is a canary: no log line may print the object that failed to decode.
    let canary = "CANARYACCESSKEY0";
    let status = json!({"status": {"accessKey": canary, "issuedAt": "9999-12-31T23:59:59Z"}});
    // kubectl, since this test's own typed client cannot read the answer either.
    common::ok(kubectl(&[
        "patch",
        "apitoken",
        "broken",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]));
    create(&ns, "healthy", spec("reader")).await;

    let op = Operator::start(&ns).await;
    active(&ns, "healthy").await;
    let conditions = wait_for("the broken token's status", WAIT, || async {
        let out = kubectl(&[
            "get",
            "apitoken",
            "broken",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.conditions}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("InvalidSpec").then_some(text)
    })
    .await;
    let conditions: Vec<serde_json::Value> = serde_json::from_str(&conditions).unwrap();
    let of = |type_: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap()
    };
    assert_eq!(of("Ready")["status"], "False");
    let message = of("Ready")["message"].as_str().unwrap().to_owned();
    assert!(message.contains("status.issuedAt"), "{message}");
    assert_eq!(of("Stalled")["status"], "True");
    assert!(secret(&ns, "broken").await.is_none());
    let (code, _) = http_get(op.metrics_addr(), "/readyz");
    assert_eq!(
        code, 200,
        "one broken token must not keep the operator unready"
    );
    assert!(
        !op.log().contains(canary),
        "the object was printed in a log"
    );
    ns.cleanup().await;
}

/// Each way of editing a Secret without the seal key ends in a new credential and a Warning.
#[tokio::test]
async fn forged_secret_contents_are_treated_as_compromised() {
    let ns = TestNs::new("forged").await;
    let _op = Operator::start(&ns).await;
    create(
        &ns,
        "target",
        spec_of(json!({"role": "r", "rotation": {"period": "30d"}})),
    )
    .await;
    let mut t = active(&ns, "target").await;
    let planted = Credential {
        prefix: "tm-".into(),
        access_key: "PLANTEDACCESSKEY".into(),
        secret_key: "PLANTEDSECRETKEY000000000000".into(),
    };
    let forgeries: [(&str, serde_json::Value); 3] = [
        (
            "planted credential",
            json!({
                "stringData": {
                    "username": planted.access_key, "password": planted.secret_key,
                    "token": planted.bearer(), "basic": planted.basic(),
                    "authorization-bearer": format!("Bearer {}", planted.bearer()),
                    "authorization-basic": format!("Basic {}", planted.basic()),
                },
                "metadata": {"annotations": {"tokenmint.dev/fingerprint": planted.fingerprint()}},
            }),
        ),
        (
            "issued-at in 2099",
            json!({"metadata": {"annotations": {"tokenmint.dev/issued-at": "2099-01-01T00:00:00Z"}}}),
        ),
        (
            "rotation count raised",
            json!({"metadata": {"annotations": {"tokenmint.dev/rotations": "7"}}}),
        ),
    ];
    for (round, (what, patch)) in forgeries.into_iter().enumerate() {
        let before = status_of(&t).clone();
        merge_secret(&ns, "target", patch).await;
        t = wait_phase(&ns, "target", Phase::Active, |t| {
            status_of(t).rotations > before.rotations
                && status_of(t).fingerprint != before.fingerprint
        })
        .await;
        let s = secret(&ns, "target").await.unwrap();
        let st = status_of(&t);
        assert_ne!(data(&s)["username"], planted.access_key, "{what}");
        assert_eq!(
            annotations(&s)["tokenmint.dev/fingerprint"],
            st.fingerprint.clone().unwrap(),
            "{what}"
        );
        let issued = st.issued_at.as_ref().unwrap().0;
        assert!(
            issued.as_second() - jiff::Timestamp::now().as_second() < 60,
            "{what}: rotation postponed to {issued}"
        );
        // Events are recorded after the status write, so the Warning may trail it.
        wait_for(&format!("{what}: a Warning Event"), WAIT, || async {
            let warnings = events(&ns, "target")
                .await
                .into_iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .count();
            (warnings > round).then_some(())
        })
        .await;
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn a_lost_seal_key_reseals_every_secret_without_reminting() {
    let ns = TestNs::new("lost-key").await;
    let mut op = Operator::start(&ns).await;
    for name in ["a", "b"] {
        create(&ns, name, spec("reader")).await;
    }
    let before = [active(&ns, "a").await, active(&ns, "b").await];
    let old_id = annotations(&secret(&ns, "a").await.unwrap())[SEAL_KEY_ID].clone();
    op.stop();
    ns.api::<Secret>()
        .delete("tokenmint-seal-key", &DeleteParams::default())
        .await
        .unwrap();
    op.restart().await;
    for t in &before {
        let name = t.metadata.name.as_deref().unwrap();
        let resealed = wait_for("the Secret re-sealed under the new key", WAIT, || async {
            let s = secret(&ns, name).await?;
            (annotations(&s)[SEAL_KEY_ID] != old_id).then_some(s)
        })
        .await;
        let now = token(&ns, name).await;
        assert_eq!(status_of(&now).fingerprint, status_of(t).fingerprint);
        assert_eq!(status_of(&now).rotations, Some(0), "{name} was re-minted");
        assert_eq!(
            fingerprint(&resealed),
            status_of(t).fingerprint.clone().unwrap()
        );
    }
    ns.cleanup().await;
}

fn fingerprint(secret: &Secret) -> String {
    tokenmint::core::credential::fingerprint_of(&data(secret)["token"])
}

#[tokio::test]
async fn a_secret_from_before_the_seal_is_sealed_without_reminting() {
    let ns = TestNs::new("upgrade").await;
    let op = Operator::start(&ns).await;
    create(&ns, "old", spec("reader")).await;
    let t = active(&ns, "old").await;
    // What tokenmint 0.1 wrote: the same Secret without the seal annotations.
    merge_secret(
        &ns,
        "old",
        json!({"metadata": {"annotations": {SEAL: null, SEAL_KEY_ID: null}}}),
    )
    .await;
    let sealed = wait_for("the Secret sealed", WAIT, || async {
        let s = secret(&ns, "old").await?;
        annotations(&s).contains_key(SEAL).then_some(s)
    })
    .await;
    barrier(&op, &ns, "old").await;
    let after = token(&ns, "old").await;
    assert_eq!(status_of(&after).rotations, Some(0));
    assert_eq!(status_of(&after).fingerprint, status_of(&t).fingerprint);
    assert_eq!(
        fingerprint(&sealed),
        status_of(&t).fingerprint.clone().unwrap()
    );
    assert_eq!(op.metric("tokenmint_rotations_total"), 0.0);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_label_removed_from_secret_template_is_removed_from_the_secret() {
    let ns = TestNs::new("template").await;
    let _op = Operator::start(&ns).await;
    create(
        &ns,
        "labelled",
        spec_of(json!({"role": "r", "secretTemplate": {
            "labels": {"team": "a", "tier": "gold"},
            "annotations": {"example.com/owner": "data"},
        }})),
    )
    .await;
    active(&ns, "labelled").await;
    let labels = |s: &Secret| s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels(&secret(&ns, "labelled").await.unwrap())["team"], "a");
    // Drop one label and the annotation; keep the other label.
    let patch =
        json!({"spec": {"secretTemplate": {"labels": {"team": null}, "annotations": null}}});
    ns.api::<ApiToken>()
        .patch("labelled", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let s = wait_for("the label removed", WAIT, || async {
        let s = secret(&ns, "labelled").await?;
        (!labels(&s).contains_key("team")).then_some(s)
    })
    .await;
    assert_eq!(labels(&s)["tier"], "gold");
    assert!(!annotations(&s).contains_key("example.com/owner"));
    assert_eq!(status_of(&token(&ns, "labelled").await).rotations, Some(0));
    ns.cleanup().await;
}

/// A tenant who may write Secrets plants, in its own namespace, 150 Secrets of about 1 MiB of
/// random bytes (incompressible), each with our label and a controller reference to its own
/// ApiToken (the real uid: anyone may write that), and fills its own token Secret with 1 MiB
/// more. None of it may stay in the operator's memory: not in steady state, not at the peak of the
/// first list after a restart (listed one Secret at a time; in pages of 500 the peak was 431 MiB);
/// and no token stops working.
#[tokio::test]
async fn large_secrets_planted_under_a_tenants_own_token_do_not_grow_the_operator() {
    let ns = TestNs::new("foreign-memory").await;
    let mut op = Operator::start(&ns).await;
    let bait = create(&ns, "bait", spec("reader")).await;
    create(&ns, "other", spec("reader")).await;
    let issued = active(&ns, "bait").await;
    active(&ns, "other").await;
    barrier(&op, &ns, "bait").await;
    let (before, peak_before) = (op.rss_kib(), op.peak_rss_kib());

    let count = 150;
    let size = 1000 * 1024;
    let owner = json!([{
        "apiVersion": "tokenmint.dev/v1alpha1",
        "kind": "ApiToken",
        "name": "bait",
        "uid": bait.metadata.uid.clone().unwrap(),
        "controller": true,
    }]);
    let random = |bytes: usize| {
        let mut junk = vec![0u8; bytes];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut junk);
        k8s_openapi::ByteString(junk)
    };
    let secrets = ns.api::<Secret>();
    futures::stream::iter(0..count)
        .for_each_concurrent(4, |i| {
            let (secrets, owner) = (&secrets, &owner);
            // Under a key nobody reads, and under one tokenmint reads in a token Secret.
            let key = if i % 2 == 0 { "blob" } else { "password" };
            let s = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("ballast-{i}")),
                    labels: Some(BTreeMap::from([
                        ("app.kubernetes.io/managed-by".into(), "tokenmint".into()),
                        ("tokenmint.dev/apitoken".into(), "bait".into()),
                    ])),
                    owner_references: Some(serde_json::from_value(owner.clone()).unwrap()),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(key.to_owned(), random(size))])),
                ..Secret::default()
            };
            async move {
                secrets.create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .await;
    merge_secret(&ns, "bait", json!({"data": {"blob": random(size)}})).await;
    // Every one of them maps to the bait token; once a reconcile after the last write is done, the
    // watch has delivered them all (one stream, in order).
    barrier(&op, &ns, "bait").await;
    let after = op.rss_kib();
    let planted_kib = (count + 1) * size / 1024;
    eprintln!(
        "operator RSS {before} KiB -> {after} KiB after {planted_kib} KiB of planted Secrets"
    );
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} to {after} KiB: the planted data is being kept"
    );

    // The first list after a restart: one Secret at a time, nothing kept.
    op.restart().await;
    barrier(&op, &ns, "bait").await;
    let (restarted, peak) = (op.rss_kib(), op.peak_rss_kib());
    eprintln!(
        "after a restart: RSS {restarted} KiB, peak {peak} KiB (before the planting: peak {peak_before} KiB)"
    );
    assert!(
        peak < peak_before + 10 * 1024,
        "the restart's peak was {peak} KiB against {peak_before} KiB before the planting"
    );
    assert!(
        restarted < before + 10 * 1024,
        "RSS {restarted} KiB after the restart"
    );

    // Nothing re-minted, and the other token still rotates.
    let held = token(&ns, "bait").await;
    assert_eq!(status_of(&held).fingerprint, status_of(&issued).fingerprint);
    let ready = condition(&held, "Ready").map(|c| c.0);
    assert_eq!(ready.as_deref(), Some("True"), "{:?}", status_of(&held));
    annotate(&ns, "other", "tokenmint.dev/rotate", "now").await;
    wait_phase(&ns, "other", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn revocation_empties_a_secret_that_a_finalizer_keeps() {
    let ns = TestNs::new("finalizer").await;
    let _op = Operator::start(&ns).await;
    create(&ns, "held", spec("reader")).await;
    active(&ns, "held").await;
    merge_secret(
        &ns,
        "held",
        json!({"metadata": {"finalizers": ["example.com/backup"]}}),
    )
    .await;
    set_spec(&ns, "held", json!({"revoked": true}))
        .await
        .unwrap();
    wait_phase(&ns, "held", Phase::Revoked, |_| true).await;
    let s = secret(&ns, "held")
        .await
        .expect("the finalizer keeps the Secret");
    assert!(
        s.metadata.deletion_timestamp.is_some(),
        "deletion was requested"
    );
    let keys: Vec<_> = data(&s).into_keys().collect();
    // The access key (username) is public and stays: a basic-auth Secret must keep it or a password.
    for key in [
        "password",
        "token",
        "basic",
        "authorization-bearer",
        "authorization-basic",
    ] {
        assert!(
            !keys.contains(&key.to_owned()),
            "{key} still readable: {keys:?}"
        );
    }
    merge_secret(&ns, "held", json!({"metadata": {"finalizers": null}})).await;
    wait_for("the Secret gone", WAIT, || async {
        secret(&ns, "held").await.is_none().then_some(())
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn two_operators_at_once_never_mint_twice() {
    let ns = TestNs::new("two-operators").await;
    let (a, b) = (Operator::start(&ns).await, Operator::start(&ns).await);
    let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    for name in &names {
        create(&ns, name, spec("reader")).await;
    }
    for name in &names {
        let t = active(&ns, name).await;
        assert_eq!(status_of(&t).rotations, Some(0), "{name} minted twice");
        assert_eq!(
            fingerprint(&secret(&ns, name).await.unwrap()),
            status_of(&t).fingerprint.clone().unwrap()
        );
    }
    for name in &names {
        annotate(&ns, name, "tokenmint.dev/rotate", "wave-1").await;
    }
    for name in &names {
        let t = wait_phase(&ns, name, Phase::Active, |t| {
            status_of(t).last_rotate_request.as_deref() == Some("wave-1")
        })
        .await;
        barrier(&a, &ns, name).await;
        barrier(&b, &ns, name).await;
        let t2 = token(&ns, name).await;
        assert_eq!(status_of(&t2).rotations, Some(1), "{name} rotated twice");
        assert_eq!(status_of(&t2).fingerprint, status_of(&t).fingerprint);
        assert_eq!(
            fingerprint(&secret(&ns, name).await.unwrap()),
            status_of(&t2).fingerprint.clone().unwrap()
        );
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn shutdown_finishes_in_time_when_the_api_server_hangs() {
    // An "API server" that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: hung, cluster: {{server: \"http://{addr}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: c, context: {{cluster: hung, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let metrics = common::free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenmint"))
        .args(["run", "--namespace", "hung", "--shutdown-timeout", "3s"])
        .args(["--metrics-addr", &metrics.to_string()])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the metrics endpoint", WAIT, || async {
        std::net::TcpStream::connect(metrics).ok().map(drop)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("still running 15 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = signalled.elapsed();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    eprintln!("exited {exited} {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(8),
        "took {took:?} to exit with a 3 s shutdown timeout:\n{log}"
    );
}

#[tokio::test]
async fn kubectl_explain_describes_the_kind() {
    common::ensure_crds();
    let out = wait_for("kubectl explain to know the kind", WAIT, || async {
        let out = kubectl(&["explain", "apitoken"]);
        out.status.success().then_some(out)
    })
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("An API token managed by tokenmint"), "{text}");
    assert!(!text.contains("Auto-generated"), "{text}");
}
