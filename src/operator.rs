//! The operator process, wired: metrics and health server, leader election, seal key, controller,
//! and a shutdown bounded in time. `main.rs` only parses arguments and turns signals into `shutdown`,
//! so a test can start all of this in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;

use crate::controller::token::{self as controller, Settings};
use crate::core::seal;
use crate::core::token::plan::Rules;
use crate::core::token::validate::Policy;
use crate::runtime::keystore;
use crate::runtime::leader::{self, Elector};
use crate::runtime::metrics::{self, Metrics};
use crate::runtime::telemetry::LogFormat;

/// Any error, printed once by the binary.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags of `tokenmint run`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TOKENMINT_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// How many tokens may be reconciled at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// Reconcile only while holding a Lease, so several replicas can run and one works at a time.
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (in a cluster: the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader-election Lease; replicas of one installation share it.
    #[arg(long, default_value = leader::LEASE_NAME)]
    pub leader_election_lease: String,
    /// Secret holding the key that seals every token Secret (created on first start).
    #[arg(long, default_value = seal::DEFAULT_KEY_SECRET)]
    pub seal_key_secret: String,
    /// Namespace of the seal key Secret (in a cluster: the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub seal_key_namespace: String,
    /// Namespaces whose usage records (ConfigMaps `tokenmint authz --usage-namespace` writes) are
    /// believed for `status.lastUsedAt`; repeat or separate by commas. Only namespaces no tenant
    /// can write to: a record there can claim any token's use. Default: the operator's own.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "default",
        value_delimiter = ','
    )]
    pub usage_namespace: Vec<String>,
    /// Tokens whose status is updated per second because a later use was recorded: at 100,000
    /// tokens in continuous use and a 1h granularity, 28 would be needed; fewer makes a last use
    /// lag more, never lost.
    #[arg(long, default_value_t = 20)]
    pub usage_updates_per_second: u32,
    /// How long a consumer's due restart waits for other tokens of the same workload, so tokens
    /// promoted together restart it once.
    #[arg(long, default_value = "5s", value_parser = crate::core::schedule::parse_seconds)]
    pub consumer_window: Duration,
    /// Consumer rollouts at once in the cluster.
    #[arg(long, default_value_t = 10)]
    pub consumer_rollouts: usize,
    /// Consumer rollouts at once in one namespace.
    #[arg(long, default_value_t = 2)]
    pub consumer_rollouts_per_namespace: usize,
    /// How long a consumer's rollout may take before it counts as stuck (a Warning Event; the
    /// previous credential's retirement stops waiting for it at one more overlap anyway).
    #[arg(long, default_value = "10m", value_parser = crate::core::schedule::parse_seconds)]
    pub consumer_rollout_timeout: Duration,
    /// Let secretTemplate carry Reflector, kubed or mittwald replicator annotations, which copy the
    /// credential into other namespaces.
    #[arg(long)]
    pub allow_replication_annotations: bool,
    /// Whether the caches list through a watch (`sendInitialEvents`, the WatchList feature), one
    /// object at a time, rather than in pages of 500: `auto` does where the API server enables it
    /// by default (Kubernetes 1.32, and 1.34 on).
    #[arg(long, value_enum, default_value = "auto")]
    pub streaming_lists: StreamingLists,
    /// How long a shutdown may wait for in-flight reconciles before the process exits anyway
    /// (keep it below the pod's termination grace period).
    #[arg(long, default_value = "10s", value_parser = crate::core::schedule::parse_seconds)]
    pub shutdown_timeout: Duration,
}

/// When the caches list through a watch.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamingLists {
    /// Where the API server's version enables WatchList by default.
    Auto,
    Always,
    Never,
}

impl StreamingLists {
    /// Whether to stream, for an API server of version `major.minor` (as `/version` spells them:
    /// some providers write `34+`).
    fn decide(self, major: &str, minor: &str) -> bool {
        let number = |s: &str| -> Option<u32> {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        match self {
            StreamingLists::Always => true,
            StreamingLists::Never => false,
            // On by default in 1.32, off again in 1.33, on from 1.34.
            StreamingLists::Auto => match (number(major), number(minor)) {
                (Some(1), Some(minor)) => minor == 32 || minor >= 34,
                (Some(major), _) => major > 1,
                _ => false,
            },
        }
    }
}

/// Runs the operator until `shutdown` resolves (or the Lease is lost), then stops within
/// `args.shutdown_timeout`.
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(tokio::sync::watch::Sender::new(false));
    let stopped = {
        let stop = stop.clone();
        move || {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };
    let server = tokio::spawn(metrics::serve(
        args.metrics_addr,
        metrics.clone(),
        stopped(),
    ));
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        signalled.send_replace(true);
    });

    // A follower only waits: it is ready (healthy standby) while it can read the Lease, and its
    // metrics carry no per-token series. Only the leader starts the controller.
    let leadership = if args.leader_elect {
        let identity = leader::default_identity();
        tracing::info!(
            lease = %args.leader_election_lease,
            namespace = %args.leader_election_namespace,
            %identity,
            "leader election: waiting for the Lease"
        );
        let lease = leader::Settings::new(
            &args.leader_election_lease,
            &args.leader_election_namespace,
            identity,
        );
        let standby = metrics.clone();
        let acquired = Elector::new(client.clone(), lease).acquire(move |ok| standby.set_ready(ok));
        tokio::select! {
            leadership = acquired => Some(leadership),
            () = stopped() => {
                server.await??;
                return Ok(());
            }
        }
    } else {
        None
    };
    // Ready again once the leader's caches are synced.
    metrics.set_ready(false);

    let loaded = tokio::select! {
        loaded = keystore::load_or_create(client.clone(), &args.seal_key_namespace, &args.seal_key_secret) => Some(loaded),
        () = stopped() => None,
    };
    let key = match loaded {
        Some(Ok(key)) => key,
        None => {
            if let Some(leadership) = leadership {
                let _ = tokio::time::timeout(args.shutdown_timeout, leadership.release()).await;
            }
            let _ = tokio::time::timeout(args.shutdown_timeout, server).await;
            return Ok(());
        }
        Some(Err(e)) => {
            if let Some(leadership) = leadership {
                leadership.release().await;
            }
            stop.send_replace(true);
            let _ = tokio::time::timeout(args.shutdown_timeout, server).await;
            return Err(e.into());
        }
    };
    let streaming_lists = match args.streaming_lists {
        StreamingLists::Auto => match client.apiserver_version().await {
            Ok(info) => StreamingLists::Auto.decide(&info.major, &info.minor),
            Err(error) => {
                tracing::warn!(%error, "API server version unknown: listing in pages");
                false
            }
        },
        fixed => fixed.decide("", ""),
    };
    let settings = Settings {
        streaming_lists,
        usage_namespaces: args.usage_namespace,
        usage_updates_per_second: args.usage_updates_per_second,
        consumers: crate::controller::consumers::Settings {
            window: args.consumer_window,
            max: args.consumer_rollouts.max(1),
            per_namespace: args.consumer_rollouts_per_namespace.max(1),
            timeout: args.consumer_rollout_timeout,
        },
        namespace: args.namespace,
        concurrency: args.concurrency,
        instance: if args.leader_elect {
            Some(leader::default_identity())
        } else {
            std::env::var("POD_NAME").ok()
        },
        rules: Rules {
            key,
            policy: Policy {
                allow_replication_annotations: args.allow_replication_annotations,
            },
        },
    };
    // The controller stops on a signal (finishing in-flight reconciles) or when the Lease is lost.
    let halted = || {
        let lost = leadership.as_ref().map(leader::Leadership::lost);
        let signal = stopped();
        async move {
            match lost {
                Some(lost) => {
                    futures::future::select(Box::pin(signal), Box::pin(lost))
                        .await
                        .factor_first()
                        .0
                }
                None => signal.await,
            }
        }
    };
    // Whatever the watches and in-flight requests are doing, the process exits in time.
    let timeout = args.shutdown_timeout;
    let deadline = halted().then(move |()| tokio::time::sleep(timeout));
    tokio::select! {
        () = controller::run(client, settings, metrics, halted()) => {}
        () = deadline => tracing::warn!(?timeout, "in-flight reconciles did not finish in time; exiting anyway"),
    }

    let lost = leadership.as_ref().is_some_and(leader::Leadership::is_lost);
    if let Some(leadership) = leadership {
        // Hands over at once instead of making the next leader wait out the lease duration.
        if tokio::time::timeout(timeout, leadership.release())
            .await
            .is_err()
        {
            tracing::warn!("could not release the Lease in time; the next leader waits it out");
        }
    }
    stop.send_replace(true);
    match tokio::time::timeout(timeout, server).await {
        Ok(served) => served??,
        Err(_) => tracing::warn!("metrics server did not stop in time"),
    }
    if lost {
        // Exit non-zero so the restart is visible; the new process waits for the Lease again.
        return Err("lost the leader-election Lease".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StreamingLists;

    #[test]
    fn lists_stream_where_the_api_server_enables_watch_list_by_default() {
        let auto = |major, minor| StreamingLists::Auto.decide(major, minor);
        assert!(!auto("1", "31"));
        assert!(auto("1", "32"));
        assert!(!auto("1", "33"));
        assert!(auto("1", "34"));
        assert!(auto("1", "35+"));
        assert!(!auto("", "x"));
        assert!(StreamingLists::Always.decide("1", "29"));
        assert!(!StreamingLists::Never.decide("1", "34"));
    }
}
