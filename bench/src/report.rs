//! The results as Markdown tables, with the conditions they were taken under and the targets.

use std::fmt::{self, Display, Write as _};
use std::time::Duration;

use crate::BenchResult;
use crate::Cli;
use crate::cluster::{Bucket, Cluster, Requests};
use crate::phases::{
    Bulk, Ceiling, Latency, OutputSize, Restart, Storm, StormCeiling, VerifierLatency,
};

/// Everything measured in one run.
pub struct Report {
    started: jiff::Timestamp,
    cores: usize,
    memory_gib: f64,
    kubernetes: String,
    load_at_start: String,
    busy_at_start: Vec<String>,
    operator_concurrency: String,
    concurrency: usize,
    ceiling_concurrency: usize,
    pub sizes: Vec<(Bulk, Option<Restart>, Option<Ceiling>)>,
    pub latency: Option<Latency>,
    pub storm: Option<Storm>,
    /// The storm's writes from the minimal client, no operator.
    pub storm_ceiling: Option<StormCeiling>,
    /// Bulk issues into one verifier, by size.
    pub verifier_sizes: Vec<Bulk>,
    pub verifier_latency: Option<VerifierLatency>,
    pub verifier_storm: Option<Storm>,
}

impl Report {
    pub async fn new(cluster: &Cluster, cli: &Cli) -> BenchResult<Report> {
        let version = cluster.admin.apiserver_version().await?;
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Ok(Report {
            started: jiff::Timestamp::now(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kubernetes: version.git_version,
            load_at_start: load(),
            busy_at_start: busy_processes(),
            operator_concurrency: cli
                .operator_concurrency
                .map_or("operator default".to_owned(), |c| c.to_string()),
            concurrency: cli.concurrency,
            ceiling_concurrency: cli.ceiling_concurrency.unwrap_or(cli.concurrency),
            sizes: Vec::new(),
            latency: None,
            storm: None,
            storm_ceiling: None,
            verifier_sizes: Vec::new(),
            verifier_latency: None,
            verifier_storm: None,
        })
    }

    /// One line on the machine and what else was running.
    pub fn conditions(&self) -> String {
        format!(
            "{} cores, {:.1} GiB, Kubernetes {}, load average {} at start, other build/test processes at start: {}",
            self.cores,
            self.memory_gib,
            self.kubernetes,
            self.load_at_start,
            if self.busy_at_start.is_empty() {
                "none".to_owned()
            } else {
                self.busy_at_start.join(", ")
            }
        )
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// cargo, rustc and tokenmint processes other than this bench's own children.
fn busy_processes() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if ["cargo", "rustc", "tokenmint", "clippy-driver"]
            .iter()
            .any(|p| comm.starts_with(p))
            && !comm.starts_with("tokenmint-bench")
        {
            found.push(format!("{comm}({pid})"));
        }
    }
    found.sort();
    found
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn per_token(requests: &Requests, n: usize) -> String {
    format!("{:.2}", requests.total() as f64 / n as f64)
}

fn breakdown(requests: &Requests, n: usize) -> String {
    Bucket::ALL
        .iter()
        .filter(|b| requests.get(**b) > 0)
        .map(|b| format!("{} {:.2}", b.name(), requests.get(*b) as f64 / n as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn bulk_line(b: &Bulk) -> String {
    format!(
        "N={}: all Active in {}s ({:.0} tokens/s), creates done in {}s, {} requests/token ({}), peak RSS {} MiB, CPU {:.2}s, wasted mints {}, Secret re-reads {}",
        b.n,
        secs(b.active_in),
        b.tokens_per_second(),
        secs(b.created_in),
        per_token(&b.requests, b.n),
        breakdown(&b.requests, b.n),
        mib(b.usage.peak_rss_kib),
        b.usage.cpu_seconds,
        b.wasted_mints,
        b.secret_reads
    )
}

pub fn restart_line(n: usize, r: &Restart) -> String {
    format!(
        "restart over {n}: ready {}s, re-observed {}s, {} writes, {} objects changed, {} requests ({}), peak RSS {} MiB",
        secs(r.ready_in),
        secs(r.reobserved_in),
        r.requests.writes(),
        r.changed_objects,
        r.requests.total(),
        breakdown(&r.requests, 1),
        mib(r.usage.peak_rss_kib)
    )
}

pub fn ceiling_line(c: &Ceiling) -> String {
    format!(
        "ceiling N={}: all Active in {}s ({:.0} tokens/s), {} requests/token ({})",
        c.n,
        secs(c.active_in),
        c.tokens_per_second(),
        per_token(&c.requests, c.n),
        breakdown(&c.requests, c.n)
    )
}

fn cpu(map: &std::collections::BTreeMap<&'static str, f64>, key: &str) -> String {
    map.get(key).map_or("-".to_owned(), |v| format!("{v:.1}"))
}

fn sorted(samples: &[Duration]) -> Vec<Duration> {
    let mut samples = samples.to_vec();
    samples.sort();
    samples
}

/// `| what | p50 | p90 | p99 | max |` in milliseconds, one row per series.
fn percentile_rows(f: &mut fmt::Formatter<'_>, rows: &[(&str, &[Duration])]) -> fmt::Result {
    writeln!(f, "| | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")?;
    writeln!(f, "|---|---:|---:|---:|---:|")?;
    for (what, v) in rows {
        let v = sorted(v);
        writeln!(
            f,
            "| {what} | {} | {} | {} | {} |",
            ms(percentile(&v, 50.0)),
            ms(percentile(&v, 90.0)),
            ms(percentile(&v, 99.0)),
            ms(percentile(&v, 100.0))
        )?;
    }
    writeln!(f)
}

/// `| output | writes | bytes | credentials |`.
fn output_rows(f: &mut fmt::Formatter<'_>, outputs: &[OutputSize]) -> fmt::Result {
    writeln!(f, "| output | writes | bytes | credentials |")?;
    writeln!(f, "|---|---:|---:|---:|")?;
    for o in outputs {
        writeln!(
            f,
            "| {} | {} | {} | {} |",
            o.name, o.writes, o.bytes, o.credentials
        )?;
    }
    writeln!(f)
}

/// Due → last new credential, the operator's over the ceiling's.
fn storm_ratio(s: &Storm, c: &StormCeiling) -> f64 {
    percentile(&s.secret_late, 100.0).as_secs_f64()
        / percentile(&c.secret_late, 100.0).as_secs_f64().max(0.001)
}

/// When each new credential was seen, relative to the due second, and the operator's requests.
fn storm_rows(f: &mut fmt::Formatter<'_>, s: &Storm) -> fmt::Result {
    writeln!(f, "| seen | p50 after due (s) | p99 (s) | last (s) |")?;
    writeln!(f, "|---|---:|---:|---:|")?;
    for (what, v) in [
        ("new credential in its Secret", &s.secret_late),
        ("status shows the rotation", &s.status_late),
    ] {
        writeln!(
            f,
            "| {what} | {} | {} | {} |",
            secs(percentile(v, 50.0)),
            secs(percentile(v, 99.0)),
            secs(percentile(v, 100.0))
        )?;
    }
    writeln!(
        f,
        "\nOperator requests during the storm: {} per rotation ({}). CPU from just before the due second to the last rotation: apiserver {} s, etcd {} s, operator {:.2} s.\n",
        per_token(&s.requests, s.n),
        breakdown(&s.requests, s.n),
        cpu(&s.control_plane_cpu, "kube-apiserver"),
        cpu(&s.control_plane_cpu, "etcd"),
        s.operator_cpu
    )
}

impl Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "## tokenmint-bench results\n")?;
        writeln!(
            f,
            "Run started {} UTC.",
            self.started.strftime("%Y-%m-%d %H:%M")
        )?;
        writeln!(f, "Machine: {}.", self.conditions())?;
        writeln!(
            f,
            "Load average at the end: {}. Bench creates in flight: {}; operator concurrency: {}; ceiling pipelines in flight: {}.\n",
            load(),
            self.concurrency,
            self.operator_concurrency,
            self.ceiling_concurrency
        )?;

        if !self.sizes.is_empty() {
            writeln!(
                f,
                "### Bulk issue: N ApiTokens created at once → all Active\n"
            )?;
            writeln!(
                f,
                "| N | creates done (s) | all Active (s) | tokenmint tokens/s | ceiling tokens/s | tokenmint / ceiling | requests/token | writes/token | peak RSS (MiB) | operator CPU (s) | apiserver CPU (s) | etcd CPU (s) | bench CPU (s) |"
            )?;
            writeln!(
                f,
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            )?;
            for (b, _, c) in &self.sizes {
                let (ceiling, ratio) = match c {
                    Some(c) => (
                        format!("{:.0}", c.tokens_per_second()),
                        format!("{:.2}", b.tokens_per_second() / c.tokens_per_second()),
                    ),
                    None => ("-".to_owned(), "-".to_owned()),
                };
                writeln!(
                    f,
                    "| {} | {} | {} | {:.0} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {:.1} |",
                    b.n,
                    secs(b.created_in),
                    secs(b.active_in),
                    b.tokens_per_second(),
                    ceiling,
                    ratio,
                    per_token(&b.requests, b.n),
                    b.requests.writes() as f64 / b.n as f64,
                    mib(b.usage.peak_rss_kib),
                    b.usage.cpu_seconds,
                    cpu(&b.control_plane_cpu, "kube-apiserver"),
                    cpu(&b.control_plane_cpu, "etcd"),
                    b.bench_cpu
                )?;
            }
            writeln!(f, "\nOperator requests per token, by kind:\n")?;
            for (b, _, c) in &self.sizes {
                writeln!(
                    f,
                    "- N={}: {}; wasted mints {}, Secret re-reads {}",
                    b.n,
                    breakdown(&b.requests, b.n),
                    b.wasted_mints,
                    b.secret_reads
                )?;
                if let Some(c) = c {
                    writeln!(
                        f,
                        "  - ceiling client: {}; all Active in {}s; apiserver CPU {} s, etcd CPU {} s, bench CPU {:.1} s",
                        breakdown(&c.requests, c.n),
                        secs(c.active_in),
                        cpu(&c.control_plane_cpu, "kube-apiserver"),
                        cpu(&c.control_plane_cpu, "etcd"),
                        c.bench_cpu
                    )?;
                }
            }
            writeln!(f)?;
        }

        if self.sizes.iter().any(|(_, r, _)| r.is_some()) {
            writeln!(f, "### Operator restart over N ready tokens\n")?;
            writeln!(
                f,
                "| N | ready (s) | all re-observed (s) | writes | objects changed | requests | peak RSS (MiB) | CPU (s) |"
            )?;
            writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
            for (b, r, _) in &self.sizes {
                if let Some(r) = r {
                    writeln!(
                        f,
                        "| {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                        b.n,
                        secs(r.ready_in),
                        secs(r.reobserved_in),
                        r.requests.writes(),
                        r.changed_objects,
                        r.requests.total(),
                        mib(r.usage.peak_rss_kib),
                        r.usage.cpu_seconds
                    )?;
                }
            }
            writeln!(f)?;
        }

        if let Some(l) = &self.latency {
            writeln!(
                f,
                "### Latency: one create → Active seen on a watch ({} tokens, idle operator)\n",
                l.samples.len()
            )?;
            percentile_rows(
                f,
                &[
                    ("create → Active", &l.samples),
                    ("create request alone", &l.create_rtt),
                ],
            )?;
        }

        if let Some(s) = &self.storm {
            writeln!(
                f,
                "### Rotation storm: {} credentials due at the same second\n",
                s.n
            )?;
            storm_rows(f, s)?;
            if let Some(c) = &self.storm_ceiling {
                writeln!(
                    f,
                    "The same writes from the minimal client with no operator (the ceiling): last new credential in its Secret {} s after due (p50 {} s); {} requests per rotation ({}); apiserver CPU {} s. Operator / ceiling, time to the last credential: {:.2}.\n",
                    secs(percentile(&c.secret_late, 100.0)),
                    secs(percentile(&c.secret_late, 50.0)),
                    per_token(&c.requests, c.n),
                    breakdown(&c.requests, c.n),
                    cpu(&c.control_plane_cpu, "kube-apiserver"),
                    storm_ratio(s, c)
                )?;
            }
            if let Some(o) = &s.overdue_restart {
                writeln!(
                    f,
                    "All {} overdue when the operator starts: ready {}s after spawn, last new credential in its Secret {}s after spawn, last status {}s; {} requests per rotation ({}).\n",
                    s.n,
                    secs(o.ready_in),
                    secs(o.last_secret_in),
                    secs(o.last_status_in),
                    per_token(&o.requests, s.n),
                    breakdown(&o.requests, s.n)
                )?;
            }
        }

        self.verifier_sections(f)?;

        writeln!(f, "### Targets\n")?;
        writeln!(f, "| target | measured | met |")?;
        writeln!(f, "|---|---|---|")?;
        let mut row = |target: &str, measured: String, met: bool| {
            let mut line = String::new();
            let _ = write!(
                line,
                "| {target} | {measured} | {} |",
                if met { "yes" } else { "**no**" }
            );
            writeln!(f, "{line}")
        };
        if let Some((b, _, Some(c))) = self.sizes.iter().max_by_key(|(b, _, _)| b.n) {
            let ratio = b.tokens_per_second() / c.tokens_per_second();
            row(
                &format!("throughput at N={} ≥ 0.8 × ceiling", b.n),
                format!(
                    "{ratio:.2} ({:.0} / {:.0} tokens/s)",
                    b.tokens_per_second(),
                    c.tokens_per_second()
                ),
                ratio >= 0.8,
            )?;
        }
        if let Some(l) = &self.latency {
            let mut samples = l.samples.clone();
            samples.sort();
            let p99 = percentile(&samples, 99.0);
            row(
                "p99 create → Active < 100 ms (idle)",
                format!("{} ms", ms(p99)),
                p99 < Duration::from_millis(100),
            )?;
        }
        // Issue 11's goal, for the size it names.
        if let Some((b, _, _)) = self.sizes.iter().find(|(b, _, _)| b.n == 10_000) {
            row(
                "peak RSS at N=10000 ≤ 32 MiB",
                format!("{} MiB", mib(b.usage.peak_rss_kib)),
                b.usage.peak_rss_kib <= 32 * 1024,
            )?;
        }
        if let Some((b, Some(r), _)) = self.sizes.iter().max_by_key(|(b, _, _)| b.n) {
            row(
                &format!("restart over N={}: 0 writes", b.n),
                format!(
                    "{} writes, {} objects changed",
                    r.requests.writes(),
                    r.changed_objects
                ),
                r.requests.writes() == 0 && r.changed_objects == 0,
            )?;
            row(
                &format!("restart over N={}: all re-observed < 10 s", b.n),
                format!("{} s", secs(r.reobserved_in)),
                r.reobserved_in < Duration::from_secs(10),
            )?;
        }
        if let Some(s) = &self.storm {
            let last = percentile(&s.secret_late, 100.0);
            row(
                &format!("storm: last of {} rotations ≤ 5 s after due", s.n),
                format!(
                    "{} s (status: {} s)",
                    secs(last),
                    secs(percentile(&s.status_late, 100.0))
                ),
                last <= Duration::from_secs(5),
            )?;
        }
        if let (Some(s), Some(c)) = (&self.storm, &self.storm_ceiling) {
            let ratio = storm_ratio(s, c);
            row(
                &format!(
                    "storm: last of {} rotations within 1.2 × the ceiling's time",
                    s.n
                ),
                format!(
                    "{ratio:.2} ({} s / {} s)",
                    secs(percentile(&s.secret_late, 100.0)),
                    secs(percentile(&c.secret_late, 100.0))
                ),
                ratio <= 1.2,
            )?;
        }
        if let Some(l) = &self.verifier_latency {
            let p99 = [&l.issue, &l.rotation, &l.revocation].map(|v| percentile(&sorted(v), 99.0));
            row(
                "verifier: p99 change → output < 1 s (issue, rotation, revocation)",
                format!("{} / {} / {} ms", ms(p99[0]), ms(p99[1]), ms(p99[2])),
                p99.iter().all(|p| *p < Duration::from_secs(1)),
            )?;
        }
        if let Some(s) = &self.verifier_storm {
            let most = s.outputs.iter().map(|o| o.writes).max().unwrap_or(0);
            row(
                &format!(
                    "verifier storm: tens of writes per output, not thousands ({} rotations)",
                    s.n
                ),
                format!("at most {most} writes per output"),
                most < 100,
            )?;
        }
        for b in &self.verifier_sizes {
            if let Some(ratio) = self.without_verifier_ratio(b) {
                row(
                    &format!("bulk N={} into one verifier ≥ 0.9 × without", b.n),
                    format!("{ratio:.2}"),
                    ratio >= 0.9,
                )?;
            }
        }
        Ok(())
    }
}

impl Report {
    /// Tokens/s of a bulk issue into a verifier over the same size's bulk without one.
    fn without_verifier_ratio(&self, into_verifier: &Bulk) -> Option<f64> {
        let (without, _, _) = self.sizes.iter().find(|(b, _, _)| b.n == into_verifier.n)?;
        Some(into_verifier.tokens_per_second() / without.tokens_per_second())
    }

    fn verifier_sections(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.verifier_latency {
            writeln!(
                f,
                "### Verifier: change → output seen on a watch ({} tokens, one verifier with an htpasswd (ssha) and a sha256-map output, publishDelay 0s, idle operator)\n",
                l.issue.len()
            )?;
            percentile_rows(
                f,
                &[
                    ("issue: create → credential in both outputs", &l.issue),
                    (
                        "rotation: rotate annotation → new credential in both outputs",
                        &l.rotation,
                    ),
                    (
                        "rotation: rotate annotation → new credential current in its Secret",
                        &l.rotation_secret,
                    ),
                    (
                        "revocation: revoked → credential gone from both outputs",
                        &l.revocation,
                    ),
                ],
            )?;
        }

        if !self.verifier_sizes.is_empty() {
            writeln!(
                f,
                "### Bulk issue into one verifier (htpasswd ssha + sha256-map outputs)\n"
            )?;
            writeln!(
                f,
                "| N | all Active (s) | tokens/s | without verifier tokens/s | ratio | all in htpasswd output (s) | requests/token | peak RSS (MiB) | operator CPU (s) | apiserver CPU (s) |"
            )?;
            writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
            for b in &self.verifier_sizes {
                let without = self
                    .sizes
                    .iter()
                    .find(|(w, _, _)| w.n == b.n)
                    .map_or("-".to_owned(), |(w, _, _)| {
                        format!("{:.0}", w.tokens_per_second())
                    });
                let ratio = self
                    .without_verifier_ratio(b)
                    .map_or("-".to_owned(), |r| format!("{r:.2}"));
                writeln!(
                    f,
                    "| {} | {} | {:.0} | {without} | {ratio} | {} | {} | {} | {:.2} | {} |",
                    b.n,
                    secs(b.active_in),
                    b.tokens_per_second(),
                    b.in_outputs_in.map_or("-".to_owned(), secs),
                    per_token(&b.requests, b.n),
                    mib(b.usage.peak_rss_kib),
                    b.usage.cpu_seconds,
                    cpu(&b.control_plane_cpu, "kube-apiserver"),
                )?;
            }
            writeln!(f)?;
            for b in &self.verifier_sizes {
                writeln!(
                    f,
                    "N={}: requests per token {}; verifier Ready: {}\n",
                    b.n,
                    breakdown(&b.requests, b.n),
                    b.verifier_ready.as_deref().unwrap_or("-")
                )?;
                output_rows(f, &b.outputs)?;
            }
        }

        if let Some(s) = &self.verifier_storm {
            writeln!(
                f,
                "### Rotation storm with {} verifiers: {} credentials due at the same second, each in every verifier's outputs (publishDelay 0s)\n",
                s.verifiers, s.n
            )?;
            storm_rows(f, s)?;
            let without = self.storm.as_ref().map(Storm::rotations_per_second);
            writeln!(
                f,
                "Rotations/s (N over due → last new credential in its Secret): {:.0} with verifiers, {} without, ratio {}.\n",
                s.rotations_per_second(),
                without.map_or("-".to_owned(), |w| format!("{w:.0}")),
                without.map_or("-".to_owned(), |w| format!(
                    "{:.2}",
                    s.rotations_per_second() / w
                ))
            )?;
            writeln!(
                f,
                "Output writes from just before the due second until the operator was quiet:\n"
            )?;
            output_rows(f, &s.outputs)?;
        }
        Ok(())
    }
}
