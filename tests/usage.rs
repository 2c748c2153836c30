//! Last use of credentials, end to end against the local control plane: the real operator, a real
//! `tokenmint authz` writing usage records in the namespace the operator trusts, and the plugin's
//! table. And the attacker's side: records in a namespace the operator does not trust, and entries
//! it must not believe.

mod common;

use std::collections::BTreeMap;

use common::authz::Authz;
use common::tokens::*;
use common::verifiers::{create_map_verifier, create_verifier, wait_published};
use common::{Operator, TestNs, kubeconfig_path, wait_for};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use tokenmint::api::{ApiToken, Phase};
use tokenmint::core::usage;

const VERIFIER: &str = "api";
const OUTPUT: &str = "api-tokens";

/// authz on the verifier's output, recording uses in `ns` at the finest granularity and writing
/// every second (`flush`), so a test sees a use within seconds.
async fn recording_authz(ns: &TestNs, flush: &str) -> Authz {
    let verifier = format!("{}/{VERIFIER}", ns.name);
    let authz = Authz::start(
        &[
            "--verifier",
            &verifier,
            "--output",
            OUTPUT,
            "--usage-namespace",
            &ns.name,
            "--usage-granularity",
            "1m",
            "--usage-flush-interval",
            flush,
        ],
        &kubeconfig_path(),
    )
    .await;
    authz.wait_readyz(200, "the output loaded").await;
    authz
}

/// The plugin's `list` for `ns`: each token's LAST USED cell, by name.
fn last_used_column(ns: &TestNs) -> BTreeMap<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-apitoken"))
        .args(["--kubeconfig"])
        .arg(kubeconfig_path())
        .args(["-n", &ns.name, "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let column = header.find("LAST USED").expect("a LAST USED column");
    lines
        .map(|line| {
            let name = line.split_whitespace().next().unwrap().to_owned();
            let cell = line[column..]
                .split("   ")
                .next()
                .unwrap()
                .trim()
                .to_owned();
            (name, cell)
        })
        .collect()
}

/// A usage record as authz writes it, with `entries`, named `name`, in `ns`.
async fn plant_record(ns: &TestNs, name: &str, verifier: &str, entries: &[(&str, String)]) {
    let record: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {usage::RECORD_LABEL: usage::RECORD_VERSION},
            "annotations": {usage::VERIFIER_ANNOTATION: verifier},
        },
        "data": entries.iter().cloned().collect::<BTreeMap<&str, String>>(),
    }))
    .unwrap();
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &record)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_credential_let_in_shows_its_last_use_a_quiet_one_never_and_an_unchecked_one_unknown() {
    let ns = TestNs::new("usage").await;
    let op = Operator::start(&ns).await;
    create_map_verifier(&ns, VERIFIER, OUTPUT).await;
    create_verifier(
        &ns,
        "files",
        json!({"publishDelay": "0s", "outputs": [{"secretName": "files-htpasswd", "format": "htpasswd"}]}),
    )
    .await;
    let rotating = json!({"role": "reader", "audiences": [VERIFIER],
        "rotation": {"period": "30d", "overlap": "1h"}});
    let used = issue(&ns, "used", spec_of(rotating)).await;
    let quiet = issue(
        &ns,
        "quiet",
        spec_of(json!({"role": "reader", "audiences": [VERIFIER]})),
    )
    .await;
    issue(
        &ns,
        "unchecked",
        spec_of(json!({"role": "reader", "audiences": ["files"]})),
    )
    .await;
    wait_published(&ns, VERIFIER, OUTPUT, &used.access_key).await;
    wait_published(&ns, VERIFIER, OUTPUT, &quiet.access_key).await;
    let mut authz = recording_authz(&ns, "1s").await;

    // authz's first record says it reports use for the verifier: its tokens' last use is known.
    wait_phase(&ns, "quiet", Phase::Active, |t| status_of(t).usage_tracked).await;
    let before = usage::start_of(usage::minute_of(Timestamp::now()));
    assert_eq!(authz.verify("", Some(&used.bearer())).status, 200);
    assert_eq!(authz.verify("", Some(&used.basic())).status, 200);
    // A refused check is no use.
    let wrong = format!("Bearer tm-{}-wrongwrongwrongwrong", quiet.access_key);
    assert_eq!(authz.verify("", Some(&wrong)).status, 401);

    let t = wait_phase(&ns, "used", Phase::Active, |t| {
        status_of(t).last_used_at.is_some()
    })
    .await;
    let at = status_of(&t).last_used_at.clone().unwrap().0;
    assert!(
        at >= before && at <= Timestamp::now(),
        "last use {at}, checked after {before}"
    );
    assert!(status_of(&t).usage_tracked);
    let quiet_status = status_of(&token(&ns, "quiet").await).clone();
    assert!(quiet_status.usage_tracked && quiet_status.last_used_at.is_none());
    let unchecked = status_of(&token(&ns, "unchecked").await).clone();
    assert!(!unchecked.usage_tracked && unchecked.last_used_at.is_none());

    let column = last_used_column(&ns);
    assert!(column["used"].ends_with(" ago"), "{column:?}");
    assert_eq!(column["quiet"], "never");
    assert_eq!(column["unchecked"], "unknown");
    let series = format!(
        r#"tokenmint_token_last_used_timestamp_seconds{{namespace="{}",name="used"}}"#,
        ns.name
    );
    wait_for("the last-use gauge", WAIT, || async {
        (op.metric(&series) == at.as_second() as f64).then_some(())
    })
    .await;

    // Rotated with an overlap: the previous credential's last use is its own, and the token's
    // stays; the new credential, once used, is recorded under its own access key.
    annotate(&ns, "used", "tokenmint.dev/rotate", "1").await;
    let rotated = wait_phase(&ns, "used", Phase::Active, |t| {
        status_of(t).previous.is_some()
    })
    .await;
    let previous = status_of(&rotated).previous.clone().unwrap();
    assert_eq!(previous.access_key, used.access_key);
    assert_eq!(previous.last_used_at.map(|t| t.0), Some(at));
    assert_eq!(
        status_of(&rotated).last_used_at.clone().map(|t| t.0),
        Some(at)
    );
    let new = creds(&ns, "used").await;
    wait_published(&ns, VERIFIER, OUTPUT, &new.access_key).await;
    // In the output now; authz follows it through its watch, a moment later.
    wait_for("authz letting the new credential in", WAIT, || async {
        (authz.verify("", Some(&new.bearer())).status == 200).then_some(())
    })
    .await;
    let records = ns.api::<ConfigMap>();
    let record = usage::record_name(
        &format!("{}/{VERIFIER}", ns.name),
        usage::shard_of(&new.access_key),
    );
    wait_for("the new credential's entry", WAIT, || async {
        let data = records.get(&record).await.ok()?.data?;
        data.get(&new.access_key)
            .filter(|v| v.ends_with(&format!(" {}/used", ns.name)))
            .map(|_| ())
    })
    .await;

    let secrets: Vec<String> = [&used, &quiet, &new]
        .iter()
        .flat_map(|c| c.secrets())
        .collect();
    authz.assert_never_shows(&secrets);

    // A use seen just before a stop is written at the stop, not lost: authz writes once an hour
    // here, so only the write at SIGTERM can carry it.
    authz.stop();
    let mut authz = recording_authz(&ns, "1h").await;
    assert_eq!(authz.verify("", Some(&quiet.bearer())).status, 200);
    authz.assert_never_shows(&secrets);
    authz.stop();
    let t = wait_phase(&ns, "quiet", Phase::Active, |t| {
        status_of(t).last_used_at.is_some()
    })
    .await;
    assert!(status_of(&t).last_used_at.clone().unwrap().0 <= Timestamp::now());

    let log = op.log();
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a credential in the operator's log"
        );
    }
    drop(op);
    ns.cleanup().await;
}

#[tokio::test]
async fn records_from_an_untrusted_namespace_or_with_future_or_malformed_entries_claim_nothing() {
    let ns = TestNs::new("usage-trust").await;
    let tenant = TestNs::new("usage-tenant").await;
    let op = Operator::start(&ns).await;
    create_map_verifier(&ns, VERIFIER, OUTPUT).await;
    let quiet = issue(
        &ns,
        "quiet",
        spec_of(json!({"role": "reader", "audiences": [VERIFIER]})),
    )
    .await;
    let verifier = format!("{}/{VERIFIER}", ns.name);
    let token = format!("{}/quiet", ns.name);
    let now = usage::start_of(usage::minute_of(Timestamp::now()));

    // A tenant writes a well-formed record in its own namespace: the operator never reads it.
    plant_record(
        &tenant,
        "tokenmint-usage-forged",
        &verifier,
        &[(quiet.access_key.as_str(), format!("{now} {token}"))],
    )
    .await;
    // In the trusted namespace: a use an hour ahead, and entries that are not usage at all.
    let ahead = Timestamp::now() + jiff::SignedDuration::from_hours(1);
    plant_record(
        &ns,
        "tokenmint-usage-bad",
        &verifier,
        &[
            (quiet.access_key.as_str(), format!("{ahead} {token}")),
            ("NOTAKEY1", "yesterday".to_owned()),
        ],
    )
    .await;
    let event = wait_event(&ns, "tokenmint-usage-bad", "UsageIgnored", "Warning").await;
    let note = event.message.unwrap_or_default();
    assert!(note.starts_with("data (entry "), "{note}");
    assert!(!note.contains(&quiet.access_key), "{note}");
    let warnings = wait_for("both entries reported", WAIT, || async {
        let events = events(&ns, "tokenmint-usage-bad").await;
        let notes: Vec<String> = events.into_iter().filter_map(|e| e.message).collect();
        (notes.len() == 2).then_some(notes)
    })
    .await;
    assert!(
        warnings.iter().any(|n| n.contains("ahead of this clock")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|n| n.contains("not `<RFC 3339")),
        "{warnings:?}"
    );

    // Everything above was read (the Events say so) before this reconcile: none of it counted.
    barrier(&op, &ns, "quiet").await;
    let status = status_of(&token_named(&ns, "quiet").await).clone();
    assert_eq!(
        status.last_used_at, None,
        "a forged or future use was believed"
    );

    // The planted records are left alone by the operator (it only reads records).
    let records = ns
        .api::<ConfigMap>()
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            usage::RECORD_LABEL,
            usage::RECORD_VERSION
        )))
        .await
        .unwrap();
    assert_eq!(records.items.len(), 1);
    drop(op);
    tenant.cleanup().await;
    ns.cleanup().await;
}

async fn token_named(ns: &TestNs, name: &str) -> ApiToken {
    ns.api::<ApiToken>().get(name).await.unwrap()
}

/// `spec.inactivity` end to end, with the shortest durations an authz granularity of one minute
/// allows: a token nobody uses is warned at `warnAfter` and revoked at `revokeAfter` (its Secret
/// deleted, for good); one used meanwhile is left alone; one whose policy is shorter than twice the
/// granularity gets a condition naming the field and is never revoked.
#[tokio::test]
async fn an_unused_token_is_warned_then_revoked_and_a_used_one_or_a_bad_policy_is_not() {
    let ns = TestNs::new("usage-inactive").await;
    let op = Operator::start(&ns).await;
    create_map_verifier(&ns, VERIFIER, OUTPUT).await;
    let policy = |warn: &str, revoke: &str| {
        spec_of(json!({"role": "reader", "audiences": [VERIFIER],
            "inactivity": {"warnAfter": warn, "revokeAfter": revoke}}))
    };
    let idle = issue(&ns, "idle", policy("2m", "3m")).await;
    let busy = issue(&ns, "busy", policy("2m", "3m")).await;
    issue(&ns, "hasty", policy("1m", "3m")).await;
    wait_published(&ns, VERIFIER, OUTPUT, &idle.access_key).await;
    wait_published(&ns, VERIFIER, OUTPUT, &busy.access_key).await;
    let authz = recording_authz(&ns, "1s").await;
    let unused = |t: &ApiToken| {
        let c = status_of(t)
            .conditions
            .iter()
            .find(|c| c.type_ == "Unused")?;
        Some((c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    // The policy shorter than twice the granularity: named, never applied.
    let hasty = wait_phase(&ns, "hasty", Phase::Active, |t| {
        unused(t).is_some_and(|(_, reason, _)| reason == "InvalidPolicy")
    })
    .await;
    let (status, _, message) = unused(&hasty).unwrap();
    assert_eq!(status, "Unknown");
    assert!(
        message.starts_with("spec.inactivity.warnAfter (1m) is shorter than twice"),
        "{message}"
    );

    // busy is used every 20 s; idle never.
    let keep_busy = {
        let (bearer, addr) = (busy.bearer(), authz.addr());
        tokio::spawn(async move {
            loop {
                let reply = common::nginx::Connection::open(addr)
                    .request("/verify", format!("Authorization: {bearer}\r\n").as_bytes());
                assert_eq!(reply.status, 200);
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
            }
        })
    };
    // Two minutes after its creation, then a minute more: longer than the usual wait.
    let minutes = std::time::Duration::from_secs(240);
    let warned = wait_for("the Unused Warning on idle", minutes, || async {
        let all = events(&ns, "idle").await;
        all.into_iter().find(|e| {
            e.reason.as_deref() == Some("Unused") && e.type_.as_deref() == Some("Warning")
        })
    })
    .await;
    assert!(warned.message.unwrap_or_default().contains("never used"));
    let t = token_named(&ns, "idle").await;
    assert_eq!(
        status_of(&t).phase,
        Some(Phase::Active),
        "warned first, not revoked"
    );
    let revoked = wait_for("idle revoked", minutes, || async {
        let t = token_named(&ns, "idle").await;
        (status_of(&t).phase == Some(Phase::Revoked)).then_some(t)
    })
    .await;
    let ready = status_of(&revoked)
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.reason, "Unused");
    assert!(secret_gone(&ns, "idle").await);
    // Gone from the output the verifier renders after the revocation, and so refused by authz.
    wait_for("authz refusing the revoked token", WAIT, || async {
        (authz.verify("", Some(&idle.bearer())).status == 401).then_some(())
    })
    .await;
    // For good: the operator restarted, the token stays revoked and nothing is minted.
    drop(op);
    let op = Operator::start(&ns).await;
    barrier(&op, &ns, "idle").await;
    assert_eq!(
        status_of(&token_named(&ns, "idle").await).phase,
        Some(Phase::Revoked)
    );
    assert!(secret_gone(&ns, "idle").await);

    keep_busy.abort();
    let busy_now = token_named(&ns, "busy").await;
    assert_eq!(status_of(&busy_now).phase, Some(Phase::Active));
    let (status, reason, _) = unused(&busy_now).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Used"));
    let hasty = token_named(&ns, "hasty").await;
    assert_eq!(
        status_of(&hasty).phase,
        Some(Phase::Active),
        "a bad policy revokes nothing"
    );
    drop(op);
    ns.cleanup().await;
}

async fn secret_gone(ns: &TestNs, name: &str) -> bool {
    let secrets = ns.api::<k8s_openapi::api::core::v1::Secret>();
    secrets.get_opt(name).await.unwrap().is_none()
}
