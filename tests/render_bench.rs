//! What a verifier render costs at scale, printed as Markdown (docs/benchmarks.md, "verifier
//! render"). A measurement, not a check: ignored by default; run it in release mode, alone:
//!
//!     cargo test --release --test render_bench -- --ignored --nocapture
//!
//! Pure: the render the verifier controller calls, on tokens like a fleet's (two scopes with
//! resources and row filters, a third without, an expiry), with the per-token byte budget in
//! force. htpasswd lines are made once beforehand, as the controller keeps them per credential.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokenmint::api::verifier::{HtpasswdHash, Output, OutputFormat};
use tokenmint::core::credential::Credential;
use tokenmint::core::htpasswd;
use tokenmint::core::verifier::output::validate_outputs;
use tokenmint::core::verifier::render::{
    Entry, ObservedOutputs, Prepared, Rendered, TokenCredentials, TokenRef, render, render_prepared,
};

fn fleet(n: usize, now: Timestamp) -> Vec<Entry> {
    (0..n)
        .flat_map(|i| {
            TokenCredentials {
                token: TokenRef {
                    namespace: format!("team-{:03}", i % 100),
                    name: format!("token-{i:06}"),
                },
                role: "reader".into(),
                scopes: vec![
                    format!("DATASOURCES:READ:events:tenant_id = {i}"),
                    "PIPES:READ:top_pages".into(),
                    "DATASOURCES:APPEND".into(),
                ],
                expires_at: Some(now + jiff::SignedDuration::from_hours(24 * 90)),
                current: Credential {
                    prefix: "tm_".into(),
                    access_key: format!("K{i:015}"),
                    secret_key: format!("{i:032x}"),
                },
                previous: None,
                next: None,
            }
            .entries()
        })
        .collect()
}

/// What `f` renders, and the median of `REPEAT` timings of it (one render alone is noisy here).
fn timed(f: impl Fn() -> Rendered) -> (Rendered, Duration) {
    const REPEAT: usize = 7;
    let mut took: Vec<Duration> = (0..REPEAT)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed()
        })
        .collect();
    took.sort();
    (f(), took[REPEAT / 2])
}

#[test]
#[ignore = "a measurement: run alone, in release mode"]
fn render_at_scale() {
    let now = Timestamp::from_second(1_780_000_000).unwrap();
    let outputs = validate_outputs(&[
        Output {
            secret_name: "api-htpasswd".into(),
            format: OutputFormat::Htpasswd,
            key: None,
            hash: Some(HtpasswdHash::Ssha),
            trino: None,
        },
        Output {
            secret_name: "api-tokens".into(),
            format: OutputFormat::Sha256Map,
            key: None,
            hash: None,
            trino: None,
        },
    ])
    .unwrap();
    println!(
        "\n| tokens | output | bytes | bytes per credential | credentials written | first render (median of 7) | after one revocation | the same, entries prepared beforehand |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in [1_000, 10_000, 100_000] {
        let fleet = fleet(n, now);
        let lines: HashMap<String, String> = fleet
            .iter()
            .map(|e| {
                let line = htpasswd::line(e.access_key(), e.secret_key(), HtpasswdHash::Ssha, b"s");
                (e.access_key().to_owned(), line)
            })
            .collect();
        let line = |e: &Entry, _| lines[e.access_key()].clone();
        let (first, first_took) =
            timed(|| render(&outputs, &fleet, &ObservedOutputs::new(), now, line));
        assert!(first.excluded.is_empty(), "{:?}", first.excluded);
        let observed: ObservedOutputs<'_> = first
            .outputs
            .iter()
            .map(|o| (o.secret_name.as_str(), o.data.as_slice()))
            .collect();
        let (_, again_took) = timed(|| render(&outputs, &fleet[1..], &observed, now, line));
        // The controller's path: each credential prepared (hashed, its map item encoded) when its
        // token or Secret changes, kept across renders.
        let prepared: Vec<Prepared> = fleet.iter().cloned().map(Prepared::new).collect();
        let refs: Vec<&Prepared> = prepared[1..].iter().collect();
        let (_, kept_took) = timed(|| {
            render_prepared(&outputs, &refs, &observed, now, |p, _| {
                lines[p.entry.access_key()].clone()
            })
        });
        for output in &first.outputs {
            let bytes = output.data.len();
            println!(
                "| {n} | {} | {bytes} | {:.0} | {}{} | {:.1} ms | {:.1} ms | {:.1} ms |",
                output.secret_name,
                bytes as f64 / output.credentials.max(1) as f64,
                output.credentials,
                match &output.overflow {
                    Some(o) => format!(" of {} (over 1 MiB: reported, not cut)", o.credentials),
                    None => String::new(),
                },
                first_took.as_secs_f64() * 1e3,
                again_took.as_secs_f64() * 1e3,
                kept_took.as_secs_f64() * 1e3,
            );
        }
    }
}
