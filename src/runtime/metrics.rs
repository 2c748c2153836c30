//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//!
//! Labels carry names, roles and phases only: never a credential, never an access key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// What the per-token series show about one token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenView {
    pub namespace: String,
    pub name: String,
    pub role: String,
    pub phase: Phase,
    /// Unix seconds of the next scheduled rotation, if any.
    pub next_rotation: Option<i64>,
    /// Unix seconds of expiry, if any.
    pub expiry: Option<i64>,
    /// Unix seconds of the last recorded use, if any.
    pub last_used: Option<i64>,
}

/// Where the per-token series come from at scrape time: the controller's token cache.
pub type TokenSource = Box<dyn Fn() -> Vec<TokenView> + Send + Sync>;

/// All of tokenmint's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    errors: Family<ErrorLabels, Counter>,
    rotations: Counter,
    revocations: Counter,
    dropped: Counter,
    wasted_mints: Counter,
    secret_reads: Counter,
    consumer_restarts: Counter,
    consumer_rollouts: Gauge,
    ready: AtomicBool,
    tokens: Arc<Mutex<Option<TokenSource>>>,
    /// Bytes of the last scrape's text: the next one is written into a buffer of that size plus
    /// room, not grown by doubling (which holds the old buffer and one twice its size while it
    /// copies: heaptrack saw 5.7 MB for a scrape at 10,000 tokens).
    last_len: std::sync::atomic::AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Renders the per-token series from the token cache on each scrape, so nothing per token is stored
/// here: a token deleted while a watch relisted leaves no stale series, and a new leader exports
/// exactly the series of the tokens it sees.
struct TokenCollector {
    source: Arc<Mutex<Option<TokenSource>>>,
}

impl std::fmt::Debug for TokenCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCollector")
    }
}

impl Collector for TokenCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tokens = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|source| source())
            .unwrap_or_default();
        let mut by_phase: Vec<(Phase, i64)> = PHASES.iter().map(|p| (*p, 0)).collect();
        for token in &tokens {
            if let Some(count) = by_phase.iter_mut().find(|(p, _)| *p == token.phase) {
                count.1 += 1;
            }
        }
        let mut family =
            encoder.encode_descriptor("tokens", "ApiTokens by phase", None, MetricType::Gauge)?;
        for (phase, count) in &by_phase {
            let labels = PhaseLabels {
                phase: phase.as_str(),
            };
            family.encode_family(&labels)?.encode_gauge(count)?;
        }
        let timestamps: [TimestampSeries; 3] = [
            (
                "token_next_rotation_timestamp_seconds",
                "Unix time of the token's next scheduled rotation",
                |t| t.next_rotation,
            ),
            (
                "token_expiry_timestamp_seconds",
                "Unix time at which the token expires",
                |t| t.expiry,
            ),
            (
                "token_last_used_timestamp_seconds",
                "Unix time a credential of the token was last let in by an authz that reports use",
                |t| t.last_used,
            ),
        ];
        for (name, help, value) in timestamps {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for token in &tokens {
                if let Some(at) = value(token) {
                    let labels = [
                        ("namespace", token.namespace.as_str()),
                        ("name", token.name.as_str()),
                    ];
                    family.encode_family(&labels)?.encode_gauge(&at)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "token_info",
            "One series per token with its role and phase",
            None,
            MetricType::Gauge,
        )?;
        for token in &tokens {
            let labels = [
                ("namespace", token.namespace.as_str()),
                ("name", token.name.as_str()),
                ("role", token.role.as_str()),
                ("phase", token.phase.as_str()),
            ];
            family.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        Ok(())
    }
}

/// Name, help and value of one per-token timestamp gauge.
type TimestampSeries = (&'static str, &'static str, fn(&TokenView) -> Option<i64>);

const PHASES: [Phase; 5] = [
    Phase::Pending,
    Phase::Active,
    Phase::Revoked,
    Phase::Expired,
    Phase::Failed,
];

impl Metrics {
    /// Creates and registers every metric under the `tokenmint_` prefix.
    pub fn new() -> Self {
        Self::with_tokens(Arc::default())
    }

    fn with_tokens(source: Arc<Mutex<Option<TokenSource>>>) -> Self {
        let mut registry = Registry::with_prefix("tokenmint");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let errors = Family::<ErrorLabels, Counter>::default();
        let rotations = Counter::default();
        let revocations = Counter::default();
        let dropped = Counter::default();
        let wasted_mints = Counter::default();
        let secret_reads = Counter::default();
        let consumer_restarts = Counter::default();
        let consumer_rollouts = Gauge::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by kind",
            errors.clone(),
        );
        registry.register(
            "rotations",
            "Credentials replaced (scheduled, manual or after tampering)",
            rotations.clone(),
        );
        registry.register(
            "revocations",
            "Tokens revoked or expired",
            revocations.clone(),
        );
        registry.register(
            "reconcile_requests_dropped",
            "Reconcile requests for a token not in the cache (retried)",
            dropped.clone(),
        );
        registry.register(
            "wasted_mints",
            "Credentials minted whose write was refused because the Secret had changed",
            wasted_mints.clone(),
        );
        registry.register(
            "secret_reads",
            "Secrets read from the API server because the cache could not be trusted for a write",
            secret_reads.clone(),
        );
        registry.register(
            "consumer_restarts",
            "Workloads restarted for a token's new credential (spec.consumers)",
            consumer_restarts.clone(),
        );
        registry.register(
            "consumer_rollouts",
            "Consumer restarts written and rolling out now",
            consumer_rollouts.clone(),
        );
        registry.register_collector(Box::new(TokenCollector {
            source: source.clone(),
        }));
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            rotations,
            revocations,
            dropped,
            wasted_mints,
            secret_reads,
            consumer_restarts,
            consumer_rollouts,
            ready: AtomicBool::new(false),
            tokens: source,
            last_len: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Records one finished reconcile.
    pub fn reconciled(&self, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts an error by its kind (a fixed string, never a message).
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Counts a credential replacement.
    pub fn rotated(&self) {
        self.rotations.inc();
    }

    /// A consumer restart was written (`restarted`: it changed the pod template) and rolls out.
    pub fn consumer_rollout_started(&self, restarted: bool) {
        if restarted {
            self.consumer_restarts.inc();
        }
        self.consumer_rollouts.inc();
    }

    /// A consumer rollout ended (complete, stuck or gone).
    pub fn consumer_rollout_ended(&self) {
        self.consumer_rollouts.dec();
    }

    /// Counts a revocation or expiry carried out.
    pub fn revoked(&self) {
        self.revocations.inc();
    }

    /// Counts a reconcile request dropped because its token was not in the cache.
    pub fn dropped(&self) {
        self.dropped.inc();
    }

    /// Counts a minted credential whose conditional write was refused.
    pub fn wasted_mint(&self) {
        self.wasted_mints.inc();
    }

    /// Counts a Secret read from the API server.
    pub fn secret_read(&self) {
        self.secret_reads.inc();
    }

    /// Renders the per-token series from `source` from now on (the leader's token cache).
    pub fn set_tokens(&self, source: TokenSource) {
        *self.tokens.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// Marks the operator ready (caches synced) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let last = self.last_len.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last + last / 16 + 4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        self.last_len.store(out.len(), Ordering::Relaxed);
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics and health");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn ready_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, phase: Phase) -> TokenView {
        TokenView {
            namespace: "ns".into(),
            name: name.into(),
            role: "reader".into(),
            phase,
            next_rotation: Some(1_900_000_000),
            expiry: None,
            last_used: None,
        }
    }

    #[test]
    fn per_token_series_are_rendered_from_the_source_at_scrape_time() {
        let metrics = Metrics::new();
        let tokens = Arc::new(Mutex::new(vec![view("a", Phase::Active)]));
        let shown = tokens.clone();
        metrics.set_tokens(Box::new(move || shown.lock().unwrap().clone()));
        let text = metrics.encode();
        assert!(text.contains(
            r#"tokenmint_token_info{namespace="ns",name="a",role="reader",phase="Active"} 1"#
        ));
        assert!(text.contains(
            r#"tokenmint_token_next_rotation_timestamp_seconds{namespace="ns",name="a"} 1900000000"#
        ));
        assert!(text.contains(r#"tokenmint_tokens{phase="Active"} 1"#));

        *tokens.lock().unwrap() = vec![view("a", Phase::Revoked)];
        let text = metrics.encode();
        assert!(!text.contains(r#"phase="Active"} 1"#));
        assert!(text.contains(r#"tokenmint_tokens{phase="Revoked"} 1"#));
        assert!(text.contains(r#"tokenmint_tokens{phase="Active"} 0"#));

        tokens.lock().unwrap().clear();
        let text = metrics.encode();
        assert!(!text.contains(r#"name="a""#));
    }

    #[test]
    fn counters_carry_the_prefix_and_total_suffix() {
        let metrics = Metrics::new();
        metrics.wasted_mint();
        metrics.dropped();
        let text = metrics.encode();
        assert!(text.contains("tokenmint_wasted_mints_total 1"));
        assert!(text.contains("tokenmint_reconcile_requests_dropped_total 1"));
    }
}
