//! The `tokenmint` binary: `run` the operator, serve the `authz` check, or print the `crd`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use tokenmint::authz::{self, AuthzArgs};
use tokenmint::operator::{self, RunArgs};
use tokenmint::runtime::telemetry;

#[derive(Parser)]
#[command(
    name = "tokenmint",
    version,
    about = "Mints, rotates and revokes API tokens declared as ApiToken resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> Result<(), operator::Error> {
    release_large_blocks();
    match Cli::parse().command {
        Command::Crd { kind } => {
            match kind.as_deref() {
                None => print!("{}", tokenmint::all_crds_yaml()),
                Some("apitoken") => print!("{}", tokenmint::crd_yaml()),
                Some("apitokenverifier") => print!("{}", tokenmint::verifier_crd_yaml()),
                Some(other) => {
                    return Err(format!("no CRD {other:?}: apitoken or apitokenverifier").into());
                }
            }
            Ok(())
        }
        Command::Run(args) => {
            telemetry::init(args.log_format);
            let budget = args.shutdown_timeout;
            let signalled = async move {
                shutdown_signal().await;
                tokio::spawn(last_resort(budget));
            };
            operator::run(args, signalled).await
        }
        Command::Authz(args) => {
            telemetry::init(args.log_format);
            authz::run(args, shutdown_signal()).await
        }
    }
}

/// Blocks of 128 KiB and more go back to the system when freed. glibc raises that threshold each
/// time one is freed, after which large transient blocks (a 1 MiB Secret that a watch decodes
/// and drops) stay in its arenas: 150 such Secrets left the operator 8 MiB larger, 2.5 MiB with
/// the threshold fixed (tests/hardening.rs). musl, the image's libc, returns them anyway.
fn release_large_blocks() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called once, first thing in main.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Serve /verify for gateways (nginx auth_request, Traefik forwardAuth, Envoy ext_authz) from an
    /// ApiTokenVerifier's sha256-map output.
    Authz(AuthzArgs),
    /// Print the CustomResourceDefinitions as YAML (both, or the one named).
    Crd {
        /// `apitoken` or `apitokenverifier`; both when absent.
        kind: Option<String>,
    },
}

/// Each shutdown step is bounded, but whatever the API server, the watches or a stuck request are
/// doing, the process is gone a second after the budget, inside the pod's grace period.
async fn last_resort(budget: Duration) {
    tokio::time::sleep(budget + Duration::from_secs(1)).await;
    tracing::error!(?budget, "shutdown did not finish in time; exiting");
    std::process::exit(1);
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or_default(),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or_default();
}
