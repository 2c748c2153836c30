//! Row filters a real query engine enforces (issue 23): a verifier's `trino` output fed to a real
//! Trino 476 (password file and file-based access control, refreshed every second), queried over
//! HTTPS with tokenmint credentials. One Trino serves every phase, started once for this binary's
//! one test; each phase says what a user relies on.
//!
//! The tpch catalog's `nation` table has 25 rows, five per `regionkey`; a filter `regionkey = 1`
//! must yield exactly nations 1, 2, 3, 17 and 24, and `count(*)` must agree.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::tokens::*;
use common::trino::{REFRESH, Refused, Trino};
use common::verifiers::{create_verifier, ready};
use common::{Operator, TestNs, apply_yaml, wait_for};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokenmint::api::ApiToken;

const VERIFIER: &str = "warehouse";
const OUTPUT: &str = "warehouse-trino";
/// Nations of region 1 and of region 3, by key.
const REGION_1: [i64; 5] = [1, 2, 3, 17, 24];
const REGION_3: [i64; 5] = [6, 7, 19, 22, 23];
/// How long a change may take to be enforced here: the operator's render, the copy into Trino's
/// files (a watch, not a kubelet sync) and Trino's refresh period, with room for a busy machine.
const ENFORCED_WITHIN: Duration = Duration::from_secs(20);

/// Copies the output Secret into Trino's files whenever its resourceVersion changes, as a kubelet
/// does for a mounted Secret (minus the kubelet's sync delay, which `publishDelay` covers), until
/// dropped.
struct Feed {
    stop: Arc<AtomicBool>,
    /// When each version was written into Trino's files.
    fed: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl Feed {
    fn start(ns: &TestNs, trino: Arc<Trino>) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let fed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let written = fed.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={OUTPUT}"));
        let events = watcher(ns.api::<Secret>(), config);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let (Ok(watcher::Event::Apply(secret)) | Ok(watcher::Event::InitApply(secret))) =
                    event
                else {
                    continue;
                };
                let files: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                let trino = trino.clone();
                tokio::task::spawn_blocking(move || trino.feed(&files))
                    .await
                    .unwrap();
                written.lock().unwrap().push(Instant::now());
            }
        });
        Feed { stop, fed }
    }

    /// How long after `since` the first version after it was written into Trino's files.
    fn fed_after(&self, since: Instant) -> Option<Duration> {
        let fed = self.fed.lock().unwrap();
        fed.iter().find(|t| **t > since).map(|t| *t - since)
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The verifier: role `analyst` may claim any scope; tenant A may read `nation` only through
/// `regionkey = 1`, tenant B only through `regionkey = 3` (the server owner's words). Tenants are
/// roles here because the test's operator watches one namespace; in a shared cluster they are
/// namespaces (`namespaceSelector`), and the grant is checked the same way.
fn verifier_spec() -> Value {
    let tenant = |role: &str, filter: &str| {
        json!({
            "roles": [role],
            "scopes": [{"type": "DATASOURCES:READ", "resources": ["nation"],
                        "requireFilter": true, "filters": [filter]}],
        })
    };
    json!({
        "trust": [
            {"roles": ["analyst"]},
            tenant("tenant-a", "regionkey = 1"),
            tenant("tenant-b", "regionkey = 3"),
        ],
        // Trino re-reads its files every second and the feed is a watch: 3 s lets a rotated
        // credential reach Trino before clients are handed it.
        "publishDelay": "3s",
        "outputs": [{
            "secretName": OUTPUT,
            "format": "trino",
            "trino": {
                "tables": [
                    {"resource": "nation", "catalog": "tpch", "schema": "tiny"},
                    {"resource": "region", "catalog": "tpch", "schema": "tiny"},
                ],
                "privileges": [
                    {"scopeType": "DATASOURCES:READ", "privileges": ["SELECT"]},
                    {"scopeType": "DATASOURCES:APPEND", "privileges": ["INSERT"]},
                ],
            },
        }],
    })
}

fn token_spec(role: &str, scopes: &[&str]) -> Value {
    let scopes: Vec<Value> = scopes
        .iter()
        .map(|s| {
            let scope = tokenmint::core::scope::parse(s).unwrap();
            serde_json::to_value(scope).unwrap()
        })
        .collect();
    json!({"role": role, "audiences": [VERIFIER], "scopes": scopes})
}

/// Runs `sql` on a blocking thread.
async fn query(
    trino: &Arc<Trino>,
    creds: &Creds,
    sql: &str,
    headers: &[(&str, &str)],
) -> Result<Vec<Vec<Value>>, Refused> {
    let (trino, user, password, sql) = (
        trino.clone(),
        creds.access_key.clone(),
        creds.password.clone(),
        sql.to_owned(),
    );
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        trino.query_with(&user, &password, &sql, &headers)
    })
    .await
    .unwrap()
}

/// The nation keys `creds` reads.
async fn nations(trino: &Arc<Trino>, creds: &Creds) -> Result<Vec<i64>, Refused> {
    let rows = query(
        trino,
        creds,
        "SELECT nationkey FROM tpch.tiny.nation ORDER BY nationkey",
        &[],
    )
    .await?;
    Ok(rows.iter().map(|r| r[0].as_i64().unwrap()).collect())
}

async fn count(trino: &Arc<Trino>, creds: &Creds) -> Result<i64, Refused> {
    let rows = query(trino, creds, "SELECT count(*) FROM tpch.tiny.nation", &[]).await?;
    Ok(rows[0][0].as_i64().unwrap())
}

/// Waits until `creds` reads nations (Trino has loaded it), returns how long that took from `since`.
async fn wait_let_in(trino: &Arc<Trino>, creds: &Creds, since: Instant) -> Duration {
    wait_for(
        "Trino to let the credential in",
        ENFORCED_WITHIN,
        || async { nations(trino, creds).await.ok().map(|_| since.elapsed()) },
    )
    .await
}

/// Waits until Trino refuses `creds` at login, returns how long that took from `since`.
async fn wait_refused(trino: &Arc<Trino>, creds: &Creds, since: Instant) -> Duration {
    wait_for(
        "Trino to refuse the credential",
        ENFORCED_WITHIN,
        || async {
            (nations(trino, creds).await == Err(Refused::Credentials)).then(|| since.elapsed())
        },
    )
    .await
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trino_enforces_each_tokens_scopes_and_row_filters() {
    let ns = TestNs::new("trino").await;
    let op = Operator::start(&ns).await;
    let started = Instant::now();
    let trino = Arc::new(tokio::task::spawn_blocking(Trino::start).await.unwrap());
    eprintln!("trino: started in {:?}", started.elapsed());
    let feed = Feed::start(&ns, trino.clone());
    create_verifier(&ns, VERIFIER, verifier_spec()).await;

    // --- Filters: each tenant reads exactly its rows; the owner's own token reads all.
    let a = issue(
        &ns,
        "tenant-a",
        spec_of(token_spec(
            "tenant-a",
            &["DATASOURCES:READ:nation:regionkey = 1"],
        )),
    )
    .await;
    let b = issue(
        &ns,
        "tenant-b",
        spec_of(token_spec(
            "tenant-b",
            &["DATASOURCES:READ:nation:regionkey = 3"],
        )),
    )
    .await;
    let analyst = issue(
        &ns,
        "analyst",
        spec_of(token_spec("analyst", &["DATASOURCES:READ"])),
    )
    .await;
    let idle = issue(&ns, "idle", spec_of(token_spec("analyst", &["PIPES:READ"]))).await;
    wait_let_in(&trino, &a, Instant::now()).await;
    wait_let_in(&trino, &b, Instant::now()).await;
    assert_eq!(nations(&trino, &a).await, Ok(REGION_1.to_vec()));
    assert_eq!(
        count(&trino, &a).await,
        Ok(5),
        "count(*) sees the filter too"
    );
    assert_eq!(nations(&trino, &b).await, Ok(REGION_3.to_vec()));
    assert_eq!(nations(&trino, &analyst).await.map(|n| n.len()), Ok(25));
    let regions = query(
        &trino,
        &analyst,
        "SELECT count(*) FROM tpch.tiny.region",
        &[],
    )
    .await;
    assert_eq!(regions, Ok(vec![vec![json!(5)]]));

    // --- What is not granted is denied.
    let denied = |r: Result<Vec<Vec<Value>>, Refused>| matches!(r, Err(Refused::Query(m)) if m.starts_with("Access Denied"));
    assert!(
        denied(query(&trino, &a, "SELECT * FROM tpch.tiny.region", &[]).await),
        "a table the tenant's scope does not name"
    );
    assert!(
        denied(query(&trino, &a, "SELECT * FROM tpch.tiny.customer", &[]).await),
        "a table the mapping does not name"
    );
    assert!(
        denied(query(&trino, &analyst, "SELECT * FROM tpch.sf1.nation", &[]).await),
        "another schema"
    );
    assert!(
        denied(
            query(
                &trino,
                &analyst,
                "CREATE TABLE memory.default.t (a int)",
                &[]
            )
            .await
        ),
        "another catalog"
    );
    assert!(
        denied(
            query(
                &trino,
                &analyst,
                "SELECT * FROM system.runtime.queries",
                &[]
            )
            .await
        ),
        "other users' queries"
    );
    wait_let_in_idle(&trino, &idle).await;
    let wrong = Creds {
        password: format!("{}x", a.password),
        ..a.clone()
    };
    assert_eq!(
        nations(&trino, &wrong).await,
        Err(Refused::Credentials),
        "a wrong password"
    );

    // --- A client sending any header: tenant A's credential cannot act as the analyst.
    let as_analyst = query(
        &trino,
        &a,
        "SELECT count(*) FROM tpch.tiny.nation",
        &[("X-Trino-User", &analyst.access_key)],
    )
    .await;
    assert!(
        matches!(&as_analyst, Err(Refused::Query(m)) if m.contains("cannot impersonate")),
        "{as_analyst:?}"
    );

    // --- A tenant choosing another tenant's filter or table is not let in at all.
    for (name, scope) in [
        ("steal-filter", "DATASOURCES:READ:nation:regionkey = 1"),
        (
            "widen-filter",
            "DATASOURCES:READ:nation:regionkey = 3 OR true",
        ),
        ("steal-table", "DATASOURCES:READ:region:regionkey = 3"),
    ] {
        let thief = issue(&ns, name, spec_of(token_spec("tenant-b", &[scope]))).await;
        let t = wait_phase(&ns, name, tokenmint::api::Phase::Active, |t: &ApiToken| {
            status_of(t).audiences.first().is_some_and(|a| !a.accepted)
        })
        .await;
        assert_eq!(
            status_of(&t).audiences[0].reason,
            "ScopeNotTrusted",
            "{name}"
        );
        assert_eq!(
            nations(&trino, &thief).await,
            Err(Refused::Credentials),
            "{name}"
        );
    }

    // --- One tenant's mistakes lock out only that tenant.
    let typo = issue(
        &ns,
        "typo",
        spec_of(token_spec(
            "analyst",
            &["DATASOURCES:READ:nation:regionkey = ) 1"],
        )),
    )
    .await;
    let torn = issue(
        &ns,
        "torn",
        spec_of(token_spec(
            "analyst",
            &[
                "DATASOURCES:READ:nation:regionkey = 1",
                "DATASOURCES:APPEND:nation:regionkey = 2",
            ],
        )),
    )
    .await;
    wait_let_in_idle(&trino, &typo).await;
    assert!(
        matches!(nations(&trino, &typo).await, Err(Refused::Query(m)) if m.contains("Invalid row filter"))
    );
    assert_eq!(
        nations(&trino, &analyst).await.map(|n| n.len()),
        Ok(25),
        "everyone else still reads"
    );
    assert_eq!(
        nations(&trino, &torn).await,
        Err(Refused::Credentials),
        "two filters on one table: left out"
    );
    wait_for("the verifier to name the torn token", WAIT, || async {
        let ready = ready(&ns, VERIFIER).await?;
        (ready.message.contains("/torn") && ready.message.contains("resource nation")).then_some(())
    })
    .await;

    // --- Change → enforced: new tokens let in, revoked tokens refused, timed from the API write.
    // Each revocation's two hops: API write → output in Trino's files (the operator and the feed),
    // and files → refused (Trino's refresh period, plus this loop's polling).
    let mut let_in = Vec::new();
    let mut refused = Vec::new();
    let (mut to_files, mut to_trino) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let name = format!("churn-{i}");
        let t0 = Instant::now();
        let c = issue(
            &ns,
            &name,
            spec_of(token_spec(
                "analyst",
                &["DATASOURCES:READ:nation:regionkey = 2"],
            )),
        )
        .await;
        let_in.push(wait_let_in(&trino, &c, t0).await);
        let t0 = Instant::now();
        set_spec(&ns, &name, json!({"revoked": true}))
            .await
            .unwrap();
        let total = wait_refused(&trino, &c, t0).await;
        let files = feed
            .fed_after(t0)
            .expect("the revocation reached Trino's files");
        refused.push(total);
        to_files.push(files);
        to_trino.push(total.saturating_sub(files));
    }
    let t0 = Instant::now();
    set_spec(&ns, "tenant-a", json!({"revoked": true}))
        .await
        .unwrap();
    refused.push(wait_refused(&trino, &a, t0).await);
    eprintln!(
        "trino: new token created → let in p50 {:?} max {:?}; revoked → refused p50 {:?} max {:?} \
         ({} samples; of which API write → Trino's files p50 {:?} max {:?}, files → refused p50 {:?} max {:?} \
         with a refresh period of {REFRESH:?} and queries polled every 0.2 s)",
        percentile(&mut let_in, 0.5),
        percentile(&mut let_in, 1.0),
        percentile(&mut refused, 0.5),
        percentile(&mut refused, 1.0),
        refused.len(),
        percentile(&mut to_files, 0.5),
        percentile(&mut to_files, 1.0),
        percentile(&mut to_trino, 0.5),
        percentile(&mut to_trino, 1.0),
    );
    assert_eq!(
        nations(&trino, &b).await,
        Ok(REGION_3.to_vec()),
        "the other tenant is untouched"
    );

    // --- Expiry refuses on time.
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(12);
    let mut brief = token_spec("analyst", &["DATASOURCES:READ"]);
    brief["expiresAt"] = json!(expires.to_string());
    let short = issue(&ns, "brief", spec_of(brief)).await;
    wait_let_in(&trino, &short, Instant::now()).await;
    wait_for("the expiry", WAIT, || async {
        (jiff::Timestamp::now() >= expires).then_some(())
    })
    .await;
    let late = wait_refused(&trino, &short, Instant::now()).await;
    eprintln!("trino: expired → refused after {late:?}");

    // --- Rotation with an overlap under continuous queries from a client that re-reads its Secret.
    let mut rotating = token_spec("tenant-a", &["DATASOURCES:READ:nation:regionkey = 1"]);
    rotating["rotation"] = json!({"period": "30d", "overlap": "15s"});
    let first = issue(&ns, "rotor", spec_of(rotating)).await;
    wait_let_in(&trino, &first, Instant::now()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, lost, on_new) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
    );
    let client = {
        let (trino, stop, ok, lost, on_new) = (
            trino.clone(),
            stop.clone(),
            ok.clone(),
            lost.clone(),
            on_new.clone(),
        );
        let (ns_api, first_key) = (ns.api::<Secret>(), first.access_key.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let secret = ns_api.get("rotor").await.unwrap();
                let creds = Creds::from_secret(&secret);
                match nations(&trino, &creds).await {
                    Ok(rows) if rows == REGION_1 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if creds.access_key != first_key {
                            on_new.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => {
                        eprintln!("trino: a query of the rotating client failed: {other:?}");
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    annotate(&ns, "rotor", "tokenmint.dev/rotate", "r1").await;
    let rotated = wait_phase(
        &ns,
        "rotor",
        tokenmint::api::Phase::Active,
        |t: &ApiToken| status_of(t).last_rotate_request.as_deref() == Some("r1"),
    )
    .await;
    let second = creds(&ns, "rotor").await;
    assert_ne!(second.access_key, first.access_key);
    assert_eq!(
        nations(&trino, &first).await,
        Ok(REGION_1.to_vec()),
        "during the overlap the previous credential still reads"
    );
    assert_eq!(
        nations(&trino, &second).await,
        Ok(REGION_1.to_vec()),
        "and the new one reads the same rows"
    );
    wait_for("the client to use the new credential", WAIT, || async {
        (on_new.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    let retires = status_of(&rotated)
        .previous
        .as_ref()
        .expect("an overlap")
        .retires_at
        .0;
    wait_for("the overlap to end", Duration::from_secs(60), || async {
        (jiff::Timestamp::now() >= retires).then_some(())
    })
    .await;
    let retired = wait_refused(&trino, &first, Instant::now()).await;
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    eprintln!(
        "trino: rotation under load: {} queries, {} lost, {} on the new credential; retired → refused after {retired:?}",
        ok.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
        on_new.load(Ordering::Relaxed),
    );
    assert_eq!(
        lost.load(Ordering::Relaxed),
        0,
        "no query lost to the rotation"
    );
    assert_eq!(nations(&trino, &second).await, Ok(REGION_1.to_vec()));

    drop(op);
    ns.cleanup().await;
}

/// Waits until a credential with no readable table is let in at login (its own queries are then
/// refused by the rules, not the password file).
async fn wait_let_in_idle(trino: &Arc<Trino>, creds: &Creds) {
    wait_for(
        "Trino to let the credential log in",
        ENFORCED_WITHIN,
        || async {
            (query(trino, creds, "SELECT 1", &[]).await == Ok(vec![vec![json!(1)]])).then_some(())
        },
    )
    .await;
    let idle = nations(trino, creds).await;
    assert!(
        matches!(&idle, Err(Refused::Query(m)) if m.starts_with("Access Denied") || m.contains("row filter")),
        "{idle:?}"
    );
}

/// A mapping Trino could not use, or that would let one tenant's rule match another's table, is refused
/// at `kubectl apply`, naming the field; what the schema cannot say is a condition naming the field.
#[tokio::test]
async fn bad_trino_mappings_are_refused_at_apply_or_named_in_the_condition() {
    let ns = TestNs::new("trino-bad").await;
    common::ensure_crds();
    let verifier = |trino: &str| {
        format!(
            "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiTokenVerifier\nmetadata: {{name: w}}\n\
             spec:\n  outputs:\n  - secretName: w\n    format: trino\n    trino: {trino}\n"
        )
    };
    let good_privileges = r#"[{scopeType: "DATASOURCES:READ", privileges: [SELECT]}]"#;
    for (trino, field) in [
        (format!("{{tables: [{{resource: t, catalog: TPCH, schema: s}}], privileges: {good_privileges}}}"), "catalog"),
        (format!("{{tables: [{{resource: t, catalog: c, schema: \"s.x\"}}], privileges: {good_privileges}}}"), "schema"),
        (format!("{{tables: [{{resource: \"t*\", catalog: c, schema: s}}], privileges: {good_privileges}}}"), "resource"),
        ("{tables: [{resource: t, catalog: c, schema: s}], privileges: [{scopeType: read, privileges: [SELECT]}]}".to_owned(), "scopeType"),
        ("{tables: [{resource: t, catalog: c, schema: s}], privileges: [{scopeType: \"A:B\", privileges: [OWNERSHIP]}]}".to_owned(), "privileges"),
        (format!("{{tables: [], privileges: {good_privileges}}}"), "tables"),
        (format!("{{tables: [{{resource: t, catalog: c, schema: s}}], privileges: {good_privileges}, rulesKey: password.db}}"), "rulesKey"),
    ] {
        let out = apply_yaml(&ns.name, &verifier(&trino));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{trino} was accepted");
        assert!(stderr.contains(field), "{trino}: {stderr}");
    }
    let sha_with_trino = "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiTokenVerifier\nmetadata: {name: x}\n\
        spec:\n  outputs:\n  - secretName: x\n    format: sha256-map\n    trino: {tables: [{resource: t, catalog: c, schema: s}], \
        privileges: [{scopeType: A, privileges: [SELECT]}]}\n";
    assert!(!apply_yaml(&ns.name, sha_with_trino).status.success());

    // Two resources naming one table would give one user two rules for it: only the operator can tell.
    let _op = Operator::start(&ns).await;
    let twice = format!(
        "{{tables: [{{resource: a, catalog: c, schema: s, table: t}}, {{resource: b, catalog: c, schema: s, table: t}}], privileges: {good_privileges}}}"
    );
    common::ok(apply_yaml(&ns.name, &verifier(&twice)));
    wait_for("the verifier to name the field", WAIT, || async {
        let ready = ready(&ns, "w").await?;
        (ready.status == "False"
            && ready
                .message
                .contains("spec.outputs[0].trino.tables[1].table"))
        .then_some(())
    })
    .await;
    ns.cleanup().await;
}
