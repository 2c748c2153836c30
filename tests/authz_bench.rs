//! What `tokenmint authz` costs and how fast it refuses, printed as Markdown (docs/benchmarks.md,
//! "tokenmint authz"). A measurement, not a check: ignored by default; run it in release mode, alone:
//!
//!     cargo test --release --test authz_bench -- --ignored --nocapture
//!
//! (`make bench-authz`). Needs nginx and, for the revocation part, the local control plane.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::authz::{APP, Authz, OPEN, site};
use common::nginx::{Connection, Nginx};
use common::tokens::*;
use common::verifiers::create_map_verifier;
use common::{Operator, TestNs, free_addr};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use serde_json::json;
use tokenmint::core::sha256_map::{has_key, key as presented_hash};
use tokenmint::core::usage;

/// When one revocation reached each hop, from its patch; `None` where the watch here missed it.
struct Hops {
    emptied: Option<Duration>,
    published: Option<Duration>,
    refused: Duration,
}

/// One hop's time, from a revocation's [`Hops`].
type Hop = fn(&Hops) -> Option<Duration>;

/// Each version of the Secrets in a namespace with the instant its watch event arrived here.
struct Arrivals(Arc<Mutex<Vec<(Instant, Secret)>>>);

impl Arrivals {
    fn record(api: kube::Api<Secret>) -> Arrivals {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let secret = match event {
                    Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => secret,
                    // A revoked token's Secret is deleted: recorded as holding nothing.
                    Ok(watcher::Event::Delete(secret)) => Secret {
                        data: None,
                        ..secret
                    },
                    _ => continue,
                };
                sink.lock().unwrap().push((Instant::now(), secret));
            }
        });
        Arrivals(seen)
    }

    /// How long after `since` the first version of Secret `name` for which `pred` holds arrived.
    fn first(
        &self,
        name: &str,
        since: Instant,
        pred: impl Fn(&Secret) -> bool,
    ) -> Option<Duration> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|(at, s)| *at >= since && s.metadata.name.as_deref() == Some(name))
            .find(|(_, s)| pred(s))
            .map(|(at, _)| at.duration_since(since))
    }
}

/// Connections kept busy by the load generator, for every load measurement.
const CONNECTIONS: usize = 16;
const LOAD_FOR: Duration = Duration::from_secs(3);
const REVOCATIONS: usize = 200;
/// Revocations more after those, each at least `SPACED` after the last refusal, so no earlier change
/// is still being rendered: an isolated revocation, as most are in a real cluster.
const ISOLATED: usize = 100;
const SPACED: Duration = Duration::from_millis(300);

/// A map in the verifier's layout with `n` typical credentials (a 16-character access key, three
/// scopes, an expiry), and the `Authorization` header lines of the first `sample` of them.
fn synthetic_map(n: usize, sample: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut out = String::with_capacity(n * 600);
    out.push_str("{\"tokens\":{");
    let mut headers = Vec::new();
    for i in 0..n {
        let access_key = format!("K{i:015}");
        let bearer = format!("tm-{access_key}-S{i:031}");
        let basic = BASE64.encode(format!("{access_key}:S{i:031}"));
        let item = format!(
            "{{\"accessKey\":\"{access_key}\",\"notAfter\":\"2030-01-01T00:00:00Z\",\"previous\":false,\
             \"role\":\"reader\",\"scopes\":[\"DATASOURCES:READ:events:tenant_id = {i}\",\
             \"PIPES:READ:top_pages\",\"DATASOURCES:APPEND:events\"],\"token\":\"bench/token-{i:06}\"}}"
        );
        for key in [presented_hash(&bearer), presented_hash(&basic)] {
            if out.len() > 11 {
                out.push(',');
            }
            write!(out, "\"{key}\":{item}").unwrap();
        }
        if i < sample {
            headers.push(format!("Authorization: Bearer {bearer}\r\n").into_bytes());
        }
    }
    out.push_str("},\"version\":1}\n");
    (out.into_bytes(), headers)
}

struct Load {
    requests: usize,
    failed: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// `CONNECTIONS` keep-alive connections sending GET `path` for `LOAD_FOR`, cycling through `headers`.
fn load(addr: SocketAddr, path: &str, headers: &[Vec<u8>]) -> Load {
    let started = Instant::now();
    let deadline = started + LOAD_FOR;
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failed = 0;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|k| {
                scope.spawn(move || {
                    let mut connection = Connection::open(addr);
                    let (mut seen, mut bad) = (Vec::new(), 0);
                    let mut i = k * 7919;
                    while Instant::now() < deadline {
                        let header = &headers[i % headers.len()];
                        i += 1;
                        let t = Instant::now();
                        if connection.request(path, header).status != 200 {
                            bad += 1;
                        }
                        seen.push(t.elapsed());
                    }
                    (seen, bad)
                })
            })
            .collect();
        for worker in workers {
            let (seen, bad) = worker.join().unwrap();
            latencies.extend(seen);
            failed += bad;
        }
    });
    let took = started.elapsed();
    latencies.sort();
    Load {
        requests: latencies.len(),
        failed,
        per_second: latencies.len() as f64 / took.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn row(what: &str, l: &Load) -> String {
    format!(
        "| {what} | {} | {:.0} | {} | {} | {} |",
        l.requests,
        l.per_second,
        ms(l.p50),
        ms(l.p99),
        l.failed
    )
}

async fn authz_on_file(dir: &Path, map: &[u8]) -> Authz {
    authz_on_file_with(dir, map, &[], Path::new("/nonexistent")).await
}

/// authz on a copy of `map` with `extra` flags and the identity in `kubeconfig`.
async fn authz_on_file_with(dir: &Path, map: &[u8], extra: &[&str], kubeconfig: &Path) -> Authz {
    let path = dir.join("tokens.json");
    std::fs::write(&path, map).unwrap();
    let mut args = vec!["--file", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let authz = Authz::start(&args, kubeconfig).await;
    common::wait_for(
        "the synthetic map loaded",
        Duration::from_secs(120),
        || async { (authz.readyz() == 200).then_some(()) },
    )
    .await;
    authz
}

/// Last-use recording off, on without writes in the run (the hot path alone: written once an hour),
/// and on with a write every second (the hot path plus the writes, and the API server they load on
/// these same two cores), same map, runs alternated; and the usage-record writes it costs with every
/// credential of the map in use.
async fn usage_rows(dir: &Path) {
    let ns = TestNs::new("bench-usage").await;
    let verifier = format!("{}/api", ns.name);
    let recording = |every: &'static str| {
        vec![
            "--verifier".to_owned(),
            verifier.clone(),
            "--usage-namespace".to_owned(),
            ns.name.clone(),
            "--usage-granularity".to_owned(),
            "1m".to_owned(),
            "--usage-flush-interval".to_owned(),
            every.to_owned(),
        ]
    };
    let selector = format!("{}={}", usage::RECORD_LABEL, usage::RECORD_VERSION);
    let records = ns.api::<k8s_openapi::api::core::v1::ConfigMap>();
    println!(
        "\n| credentials in use | recording | requests/s | p99 | usage-record writes | writes/s | entries in the records | authz RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in [10_000, 100_000] {
        let (map, headers) = synthetic_map(n, n);
        let kubeconfig = common::kubeconfig_path();
        let hourly = recording("1h");
        let hourly: Vec<&str> = hourly.iter().map(String::as_str).collect();
        let each_second = recording("1s");
        let each_second: Vec<&str> = each_second.iter().map(String::as_str).collect();
        let variants = [
            ("off", authz_on_file(dir, &map).await),
            (
                "on, hot path (written hourly)",
                authz_on_file_with(dir, &map, &hourly, &kubeconfig).await,
            ),
            (
                "on, written every 1 s",
                authz_on_file_with(dir, &map, &each_second, &kubeconfig).await,
            ),
        ];
        let writes = |authz: &Authz| {
            ["create", "update"]
                .iter()
                .map(|verb| {
                    authz.metric(&format!(
                        "tokenmint_authz_api_requests_total{{verb=\"{verb}\"}}"
                    ))
                })
                .sum::<f64>()
        };
        let before = writes(&variants[2].1);
        let started = Instant::now();
        let mut runs: Vec<(usize, Load)> = Vec::new();
        // Alternated, so drift on a shared machine falls on all alike.
        for round in 0..6 {
            let v = round % 3;
            runs.push((v, load(variants[v].1.addr(), "/verify", &headers)));
        }
        // The last write of what the runs let in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let took = started.elapsed();
        let written = writes(&variants[2].1) - before;
        let listed = records
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .unwrap();
        let entries: usize = listed
            .items
            .iter()
            .filter_map(|r| r.data.as_ref())
            .map(|d| d.len())
            .sum();
        for (v, (what, authz)) in variants.iter().enumerate() {
            let mine: Vec<&Load> = runs
                .iter()
                .filter(|(r, _)| *r == v)
                .map(|(_, l)| l)
                .collect();
            let per_second = mine.iter().map(|l| l.per_second).sum::<f64>() / mine.len() as f64;
            let p99 = mine.iter().map(|l| l.p99).max().unwrap();
            let (writes, rate, entries) = if v == 2 {
                (
                    format!("{written:.0}"),
                    format!("{:.2}", written / took.as_secs_f64()),
                    entries.to_string(),
                )
            } else {
                ("-".into(), "-".into(), "-".into())
            };
            println!(
                "| {n} | {what} | {per_second:.0} | {} | {writes} | {rate} | {entries} | {:.1} MiB |",
                ms(p99),
                authz.rss_kib() as f64 / 1024.0
            );
        }
        // Records of the next size start empty.
        for record in listed.items {
            let name = record.metadata.name.unwrap();
            records.delete(&name, &Default::default()).await.unwrap();
        }
    }
    ns.cleanup().await;
}

#[tokio::test]
#[ignore = "a measurement: run alone, in release mode"]
async fn authz_bench() {
    let dir = tempfile::tempdir().unwrap();
    println!("\n### tokenmint authz ({CONNECTIONS} connections, {LOAD_FOR:?} per row)\n");

    // Memory: an empty map, 10,000 and 100,000 credentials (each: a Bearer and a Basic key).
    println!("| credentials in the map | map bytes | authz RSS after loading |");
    println!("|---|---|---|");
    for n in [0, 10_000, 100_000] {
        let (map, headers) = synthetic_map(n, 1000);
        let authz = authz_on_file(dir.path(), &map).await;
        if let Some(h) = headers.first() {
            assert_eq!(
                Connection::open(authz.addr()).request("/verify", h).status,
                200
            );
        }
        println!(
            "| {n} | {:.1} MB | {:.1} MiB |",
            map.len() as f64 / 1e6,
            authz.rss_kib() as f64 / 1024.0
        );
    }

    // Throughput: authz alone at 10,000 credentials, then nginx with and without it, same run.
    let (map, headers) = synthetic_map(10_000, 10_000);
    let authz = authz_on_file(dir.path(), &map).await;
    let nginx = Nginx::start_with(&site(authz.addr(), free_addr()));
    let none: Vec<Vec<u8>> = vec![Vec::new()];
    println!("\n| path | requests | requests/s | p50 | p99 | not 200 |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        row(
            "authz `/verify` alone, 10,000 credentials",
            &load(authz.addr(), "/verify", &headers)
        )
    );
    let open = load(nginx.addr(), OPEN, &none);
    let checked = load(nginx.addr(), APP, &headers);
    println!("{}", row("nginx → upstream, no auth (ceiling)", &open));
    println!(
        "{}",
        row("nginx + auth_request → authz → upstream", &checked)
    );
    println!(
        "\nnginx with authz: {:.2} of the ceiling's requests/s",
        checked.per_second / open.per_second
    );
    drop(nginx);
    drop(authz);

    usage_rows(dir.path()).await;

    // Revocation → first refused request at nginx, one token at a time, through the API.
    let ns = TestNs::new("bench-authz").await;
    let _op = Operator::start(&ns).await;
    create_map_verifier(&ns, "api", "api-tokens").await;
    let authz = Authz::for_output(&ns.name, "api", "api-tokens").await;
    let nginx = Nginx::start_with(&site(authz.addr(), free_addr()));
    for i in 0..REVOCATIONS + ISOLATED {
        create(
            &ns,
            &format!("t{i:03}"),
            spec_of(json!({"role": "reader", "audiences": ["api"]})),
        )
        .await;
    }
    let mut bearers = Vec::new();
    for i in 0..REVOCATIONS + ISOLATED {
        let name = format!("t{i:03}");
        active(&ns, &name).await;
        let token = data(&secret(&ns, &name).await.unwrap())["token"].clone();
        bearers.push((name, format!("Bearer {token}")));
    }
    let mut connection = nginx.connect();
    for (_, bearer) in &bearers {
        let until = Instant::now() + WAIT;
        while connection.get(APP, Some(bearer)) != 200 {
            assert!(Instant::now() < until, "a token never let in");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every version of the token Secrets and of the output, as a watch here saw it arrive: where
    // each revocation spent its time.
    let arrivals = Arrivals::record(ns.api::<Secret>());
    let mut revoke = async |name: &str, bearer: &str| {
        let asked = Instant::now();
        set_spec(&ns, name, json!({"revoked": true})).await.unwrap();
        while connection.get(APP, Some(bearer)) != 401 {
            assert!(asked.elapsed() < WAIT, "a revoked token never refused");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let refused = asked.elapsed();
        let token = bearer.trim_start_matches("Bearer ");
        Hops {
            emptied: arrivals.first(name, asked, |s| !data(s).contains_key("password")),
            published: arrivals.first("api-tokens", asked, |s| {
                s.data.iter().flatten().all(|(_, v)| !has_key(&v.0, token))
            }),
            refused,
        }
    };
    let mut took = Vec::new();
    for (name, bearer) in &bearers[..REVOCATIONS] {
        took.push(revoke(name, bearer).await);
    }
    let mut isolated = Vec::new();
    for (name, bearer) in &bearers[REVOCATIONS..] {
        tokio::time::sleep(SPACED).await;
        isolated.push(revoke(name, bearer).await);
    }
    println!(
        "\n| revocation (patch `revoked: true`) → | tokens | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    for (hops, what) in [
        (&took, format!("{REVOCATIONS} one after another")),
        (
            &isolated,
            format!("{ISOLATED}, each {SPACED:?} after the last refusal"),
        ),
    ] {
        let lines: [(&str, Hop); 4] = [
            ("token Secret deleted or emptied (token controller)", |h| {
                h.emptied
            }),
            ("gone from the output (verifier render and write)", |h| {
                h.published
            }),
            (
                "first refusal at nginx after the output changed (authz)",
                |h| Some(h.refused.checked_sub(h.published?).unwrap_or_default()),
            ),
            ("first refusal at nginx", |h| Some(h.refused)),
        ];
        for (hop, of) in lines {
            let mut seen: Vec<Duration> = hops.iter().filter_map(of).collect();
            seen.sort();
            let Some(max) = seen.last() else { continue };
            println!(
                "| {hop} | {what} | {} | {} | {} |",
                ms(percentile(&seen, 50.0)),
                ms(percentile(&seen, 99.0)),
                ms(*max)
            );
        }
    }
    ns.cleanup().await;
}

/// authz's memory alone (issue 24): RSS after loading a map of 10,000 and 100,000 credentials from a
/// file, the peak while loading, and the peak while swapping to a new version of the same size
/// (the old map is served until the new one is whole, so both exist for a moment).
///
///     cargo test --release --test authz_bench authz_memory -- --ignored --nocapture
#[tokio::test]
#[ignore = "a measurement: run alone, in release mode"]
async fn authz_memory() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "\n| credentials | map bytes | RSS after loading | peak while loading | peak after a swap |"
    );
    println!("|---|---|---|---|---|");
    for n in [10_000, 100_000] {
        let (map, headers) = synthetic_map(n, 1);
        let authz = authz_on_file(dir.path(), &map).await;
        assert_eq!(
            Connection::open(authz.addr())
                .request("/verify", &headers[0])
                .status,
            200
        );
        let (rss, loading) = (authz.rss_kib(), authz.peak_rss_kib());
        // A new version: one credential more, written as a kubelet would (a new file renamed in).
        let (next, _) = synthetic_map(n + 1, 0);
        let tmp = dir.path().join("tokens.json.next");
        std::fs::write(&tmp, &next).unwrap();
        std::fs::rename(&tmp, dir.path().join("tokens.json")).unwrap();
        common::wait_for(
            "the new version loaded",
            Duration::from_secs(120),
            || async {
                (authz.metric("tokenmint_authz_credentials") == (n + 1) as f64).then_some(())
            },
        )
        .await;
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "| {n} | {:.1} MB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            map.len() as f64 / 1e6,
            mib(rss),
            mib(loading),
            mib(authz.peak_rss_kib())
        );
    }
}
