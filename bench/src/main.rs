//! `tokenmint-bench`: how far one tokenmint operator goes against the local control plane, and
//! against the API server's own ceiling for the same writes. Prints Markdown tables.
//!
//! Needs the release operator (`cargo build --release --bin tokenmint`) and a running control plane
//! (`make cluster-up`); `make bench` does both. Method and results: docs/benchmarks.md.

mod cluster;
mod operator;
mod phases;
mod report;
mod track;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::cluster::Cluster;
use crate::operator::OperatorSpec;
use crate::phases::Bench;

/// Errors are reported once, at the top, as text.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(
    name = "tokenmint-bench",
    about = "Benchmark one tokenmint operator against the local control plane and its ceiling"
)]
struct Cli {
    /// Bulk sizes: N ApiTokens created at once, each into a fresh namespace.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    sizes: Vec<usize>,
    /// Creates (and the ceiling's writes) the bench keeps in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Secret+status+Event pipelines the ceiling client keeps in flight (default: --concurrency).
    #[arg(long)]
    ceiling_concurrency: Option<usize>,
    /// `--concurrency` passed to the operator (default: the operator's own default).
    #[arg(long)]
    operator_concurrency: Option<u16>,
    /// Extra argument for `tokenmint run` (repeatable).
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Tokens created one by one for the latency measurement.
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// Tokens in the rotation storm.
    #[arg(long, default_value_t = 1000)]
    storm_size: usize,
    #[arg(long)]
    skip_ceiling: bool,
    #[arg(long)]
    skip_restart: bool,
    #[arg(long)]
    skip_latency: bool,
    #[arg(long)]
    skip_storm: bool,
    /// Skip the second storm variant (all rotations overdue when the operator starts).
    #[arg(long)]
    skip_overdue: bool,
    /// Skip the bulk issue (and so restart and ceiling) at every size.
    #[arg(long)]
    skip_bulk: bool,
    /// Only the ceiling at each size, no operator (its line is printed as it finishes): for
    /// sizes where the bulk and its ceiling are run against fresh clusters one after the other.
    #[arg(long)]
    ceiling_only: bool,
    /// ApiTokenVerifiers accepting every token in the verifier storm.
    #[arg(long, default_value_t = 3)]
    storm_verifiers: usize,
    /// Skip every verifier phase.
    #[arg(long)]
    skip_verifiers: bool,
    /// Skip the bulk issue into one verifier (run after each size's bulk issue).
    #[arg(long)]
    skip_verifier_bulk: bool,
    /// Skip the change → output latency through one verifier.
    #[arg(long)]
    skip_verifier_latency: bool,
    /// Skip the rotation storm with --storm-verifiers verifiers.
    #[arg(long)]
    skip_verifier_storm: bool,
    /// The operator binary.
    #[arg(long, default_value = "target/release/tokenmint")]
    operator_bin: PathBuf,
    /// Admin kubeconfig of the local control plane (never an ambient KUBECONFIG).
    #[arg(long, default_value_os_t = tokenmint_harness::local_kubeconfig())]
    kubeconfig: PathBuf,
    /// Where operator logs and the operator's kubeconfig go.
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Leave the bench namespaces and the operator's identity and FlowSchemas behind for inspection.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenmint-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> BenchResult<()> {
    if !cli.operator_bin.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release --bin tokenmint` (or `make bench`)",
            cli.operator_bin.display()
        )
        .into());
    }
    let cluster = Cluster::connect(&cli.kubeconfig, &cli.work_dir).await?;
    cluster.settle(std::time::Duration::from_secs(60)).await;
    let mut report = report::Report::new(&cluster, &cli).await?;
    eprintln!("bench: {}", report.conditions());
    let bench = Bench {
        operator: OperatorSpec {
            binary: cli.operator_bin.clone(),
            kubeconfig: cluster.operator_kubeconfig.clone(),
            concurrency: cli.operator_concurrency,
            extra_args: cli.operator_args.clone(),
            log_dir: cli.work_dir.join("logs"),
        },
        cluster,
        concurrency: cli.concurrency,
        ceiling_concurrency: cli.ceiling_concurrency.unwrap_or(cli.concurrency),
        keep: cli.keep,
    };

    let verifiers = !cli.skip_verifiers;
    let sizes = if cli.skip_bulk { &[][..] } else { &cli.sizes };
    for &n in sizes {
        if cli.ceiling_only {
            eprintln!("bench: ceiling for {n} tokens");
            let ceiling = bench.ceiling(n).await?;
            eprintln!("bench: {}", report::ceiling_line(&ceiling));
            continue;
        }
        eprintln!("bench: bulk issue of {n} tokens");
        let (bulk, restart) = bench.bulk(n, !cli.skip_restart, false).await?;
        eprintln!("bench: {}", report::bulk_line(&bulk));
        if let Some(restart) = &restart {
            eprintln!("bench: {}", report::restart_line(n, restart));
        }
        let ceiling = if cli.skip_ceiling {
            None
        } else {
            eprintln!("bench: ceiling for {n} tokens");
            let ceiling = bench.ceiling(n).await?;
            eprintln!("bench: {}", report::ceiling_line(&ceiling));
            Some(ceiling)
        };
        report.sizes.push((bulk, restart, ceiling));
        if verifiers && !cli.skip_verifier_bulk {
            eprintln!("bench: bulk issue of {n} tokens into one verifier");
            let (bulk, _) = bench.bulk(n, false, true).await?;
            eprintln!("bench: {}", report::bulk_line(&bulk));
            report.verifier_sizes.push(bulk);
        }
    }
    if !cli.skip_latency {
        eprintln!("bench: latency over {} tokens", cli.latency_samples);
        report.latency = Some(bench.latency(cli.latency_samples).await?);
    }
    if verifiers && !cli.skip_verifier_latency {
        eprintln!(
            "bench: change → verifier output latency over {} tokens",
            cli.latency_samples
        );
        report.verifier_latency = Some(bench.verifier_latency(cli.latency_samples).await?);
    }
    if !cli.skip_storm {
        eprintln!("bench: rotation storm of {} tokens", cli.storm_size);
        report.storm = Some(bench.storm(cli.storm_size, !cli.skip_overdue, 0).await?);
        if !cli.skip_ceiling {
            eprintln!("bench: ceiling for the storm of {} tokens", cli.storm_size);
            report.storm_ceiling = Some(bench.storm_ceiling(cli.storm_size).await?);
        }
    }
    if verifiers && !cli.skip_verifier_storm {
        eprintln!(
            "bench: rotation storm of {} tokens with {} verifiers",
            cli.storm_size, cli.storm_verifiers
        );
        let storm = bench
            .storm(cli.storm_size, false, cli.storm_verifiers)
            .await?;
        report.verifier_storm = Some(storm);
    }
    if !cli.keep {
        bench.cluster.uninstall().await?;
    }
    println!("{report}");
    Ok(())
}
