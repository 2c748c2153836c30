//! What a `trino` output costs, printed as Markdown (docs/benchmarks.md, "Trino"). A measurement, not
//! a check: ignored by default; run it in release mode, alone (it starts two Trino coordinators):
//!
//!     cargo test --release --test trino_bench -- --ignored --nocapture
//!
//! - Rendering: a password line (PBKDF2, Trino's minimum) against a bcrypt cost-8 line, and the bytes one
//!   credential takes in the output, hence how many fit in one Secret.
//! - Query latency through a real Trino 476 with the rendered files of 1,000 and 10,000 tokens (one
//!   filtered table each), against the same Trino build with no access control at all, same run. Each
//!   query is Trino's HTTP protocol through `curl` (a process per request, the same for both), as one
//!   of 20 users in turn, so logins hit Trino's credential cache as a real client's would, after 200
//!   untimed queries to warm the JVM.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::trino::{Trino, TrinoOptions};
use tokenmint::api::verifier::{
    HtpasswdHash, Output, OutputFormat, TrinoGrant, TrinoOutput, TrinoPrivilege, TrinoTable,
};
use tokenmint::core::credential::Credential;
use tokenmint::core::htpasswd;
use tokenmint::core::trino::{Mapping, password_line};
use tokenmint::core::verifier::output::validate_outputs;
use tokenmint::core::verifier::render::{ObservedOutputs, TokenCredentials, TokenRef, render};

const QUERIES: usize = 300;
const WARMUP: usize = 200;
const USERS: usize = 20;
const SQL: &str = "SELECT count(*) FROM tpch.tiny.nation";

fn trino_output() -> TrinoOutput {
    TrinoOutput {
        tables: vec![TrinoTable {
            resource: "nation".into(),
            catalog: "tpch".into(),
            schema: "tiny".into(),
            table: None,
        }],
        privileges: vec![TrinoGrant {
            scope_type: "DATASOURCES:READ".into(),
            privileges: vec![TrinoPrivilege::Select],
        }],
        rules_key: None,
    }
}

/// Token `i`: tenant `i % 5` reads `nation` through its region.
fn credential(i: usize) -> (Credential, Vec<String>) {
    let credential = Credential {
        prefix: "tm-".into(),
        access_key: format!("AK{i:014}"),
        secret_key: format!("secret{i:026}"),
    };
    (
        credential,
        vec![format!("DATASOURCES:READ:nation:regionkey = {}", i % 5)],
    )
}

/// The two files for `n` tokens, built with the functions the render uses.
fn files(n: usize) -> BTreeMap<String, Vec<u8>> {
    let mapping = Mapping::parse(&trino_output(), "password.db", "bench").unwrap();
    let mut lines = Vec::new();
    let mut rules = Vec::new();
    for i in 0..n {
        let (c, scopes) = credential(i);
        lines.extend_from_slice(password_line(&c.access_key, &c.secret_key, b"seed").as_bytes());
        lines.push(b'\n');
        rules.extend(mapping.user_rules(&c.access_key, &scopes).unwrap());
    }
    BTreeMap::from([
        ("password.db".to_owned(), lines),
        ("rules.json".to_owned(), mapping.rules_file(rules.iter())),
    ])
}

fn per_line(f: impl Fn(usize) -> String, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(f(i));
    }
    start.elapsed() / n as u32
}

/// p50 and p99 of `QUERIES` queries, users in turn; every query must succeed.
fn latency(trino: &Trino, n_tokens: usize) -> (Duration, Duration) {
    let users: Vec<(Credential, _)> = (0..USERS)
        .map(|u| credential(u * (n_tokens / USERS)))
        .collect();
    // Warm up: the JIT, the plan paths and each user's login (cached after the first).
    // Queries that scan a table wait for the coordinator to register as a worker, a little after
    // it reports having started.
    let deadline = Instant::now() + Duration::from_secs(60);
    for q in 0..WARMUP {
        let (c, _) = &users[q % USERS];
        while let Err(e) = trino.query(&c.access_key, &c.secret_key, SQL) {
            assert!(Instant::now() < deadline, "warm-up query {q}: {e:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut samples = Vec::with_capacity(QUERIES);
    for q in 0..QUERIES {
        let (c, _) = &users[q % USERS];
        let start = Instant::now();
        let rows = trino
            .query(&c.access_key, &c.secret_key, SQL)
            .unwrap_or_else(|e| panic!("query {q} as {}: {e:?}", c.access_key));
        samples.push(start.elapsed());
        assert_eq!(rows.len(), 1);
    }
    samples.sort();
    (samples[QUERIES / 2], samples[QUERIES * 99 / 100])
}

#[test]
#[ignore = "a measurement: run alone, in release mode"]
fn trino_output_costs() {
    println!("### Trino output\n");
    let pbkdf2 = per_line(
        |i| {
            let (c, _) = credential(i);
            password_line(&c.access_key, &c.secret_key, b"seed")
        },
        2000,
    );
    let bcrypt = per_line(
        |i| {
            let (c, _) = credential(i);
            htpasswd::line(&c.access_key, &c.secret_key, HtpasswdHash::Bcrypt, b"seed")
        },
        100,
    );
    println!(
        "| password line | time per credential |\n|---|---|\n| PBKDF2-HMAC-SHA1, 1000 iterations (trino) | {pbkdf2:?} |\n| bcrypt cost 8 (htpasswd) | {bcrypt:?} |\n"
    );

    // Bytes per credential through the real render, and what fits in one Secret.
    let outputs = validate_outputs(&[Output {
        secret_name: "warehouse-trino".into(),
        format: OutputFormat::Trino,
        key: None,
        hash: None,
        trino: Some(trino_output()),
    }])
    .unwrap();
    let entries: Vec<_> = (0..1000)
        .flat_map(|i| {
            let (c, scopes) = credential(i);
            TokenCredentials {
                token: TokenRef {
                    namespace: format!("tenant-{:03}", i % 100),
                    name: format!("token-{i:06}"),
                },
                role: "reader".into(),
                scopes,
                expires_at: None,
                current: c,
                previous: None,
                next: None,
            }
            .entries()
        })
        .collect();
    let r = render(
        &outputs,
        &entries,
        &ObservedOutputs::new(),
        jiff::Timestamp::now(),
        |e, _| password_line(e.access_key(), e.secret_key(), b"seed"),
    );
    let out = &r.outputs[0];
    let rules = out.extra.as_ref().unwrap().1.len();
    let per = (out.data.len() + rules) as f64 / 1000.0;
    println!(
        "1,000 credentials (one filtered table each): password file {} bytes, rules {} bytes, {per:.0} bytes per credential; one Secret (1 MiB) holds about {} credentials\n",
        out.data.len(),
        rules,
        (1024.0 * 1024.0 / per) as usize
    );

    println!(
        "| Trino 476, {QUERIES} queries `{SQL}`, {USERS} users in turn | p50 | p99 |\n|---|---|---|"
    );
    let open = Trino::start_with(TrinoOptions {
        access_control: false,
    });
    open.feed(&files(1000));
    open.wait_user(&credential(0).0.access_key, &credential(0).0.secret_key);
    let (p50, p99) = latency(&open, 1000);
    println!("| no access control (password file of 1,000) | {p50:?} | {p99:?} |");
    drop(open);
    let trino = Trino::start();
    for n in [1000, 10_000] {
        let files = files(n);
        let bytes: usize = files.values().map(Vec::len).sum();
        trino.feed(&files);
        let (c, _) = credential((USERS - 1) * (n / USERS));
        trino.wait_user(&c.access_key, &c.secret_key);
        let (p50, p99) = latency(&trino, n);
        println!(
            "| file access control, {n} tokens ({} KiB of files) | {p50:?} | {p99:?} |",
            bytes / 1024
        );
    }
}
