//! The `tokenmint` binary: `run` the operator, or print the `crd`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokenmint::controller::{self, Settings};
use tokenmint::metrics::{self, Metrics};
use tokenmint::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "tokenmint", version, about = "Mints, rotates and revokes API tokens declared as ApiToken resources")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the ApiToken CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TOKENMINT_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// How many tokens may be reconciled at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u16,
}

#[tokio::main]
async fn main() -> anyhow_free::Result {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", tokenmint::crd_yaml());
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow_free::Result {
    telemetry::init(args.log_format);
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let server = tokio::spawn(metrics::serve(args.metrics_addr, metrics.clone(), stopped()));
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let settings = Settings {
        namespace: args.namespace,
        concurrency: args.concurrency,
        instance: std::env::var("POD_NAME").ok(),
    };
    controller::run(client, settings, metrics, stopped()).await;
    server.await??;
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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

/// `main`'s error type: any error, printed once by the runtime.
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
