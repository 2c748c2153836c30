//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//!
//! Labels carry names, roles and phases only: never a credential, never an access key.

use std::collections::HashMap;
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
use prometheus_client::encoding::EncodeLabelSet;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    namespace: String,
    name: String,
    role: String,
    phase: &'static str,
}

/// What the metrics know about one token, so label changes and deletions can be undone.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenView {
    pub role: String,
    pub phase: Phase,
    /// Unix seconds of the next scheduled rotation, if any.
    pub next_rotation: Option<i64>,
    /// Unix seconds of expiry, if any.
    pub expiry: Option<i64>,
}

/// All of tokenmint's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    errors: Family<ErrorLabels, Counter>,
    rotations: Counter,
    revocations: Counter,
    tokens: Family<PhaseLabels, Gauge>,
    next_rotation: Family<TokenLabels, Gauge>,
    expiry: Family<TokenLabels, Gauge>,
    info: Family<InfoLabels, Gauge>,
    known: Mutex<HashMap<(String, String), TokenView>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `tokenmint_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenmint");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let errors = Family::<ErrorLabels, Counter>::default();
        let rotations = Counter::default();
        let revocations = Counter::default();
        let tokens = Family::<PhaseLabels, Gauge>::default();
        let next_rotation = Family::<TokenLabels, Gauge>::default();
        let expiry = Family::<TokenLabels, Gauge>::default();
        let info = Family::<InfoLabels, Gauge>::default();
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
        registry.register("tokens", "ApiTokens by phase", tokens.clone());
        registry.register(
            "token_next_rotation_timestamp_seconds",
            "Unix time of the token's next scheduled rotation",
            next_rotation.clone(),
        );
        registry.register(
            "token_expiry_timestamp_seconds",
            "Unix time at which the token expires",
            expiry.clone(),
        );
        registry.register(
            "token_info",
            "One series per token with its role and phase",
            info.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            rotations,
            revocations,
            tokens,
            next_rotation,
            expiry,
            info,
            known: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
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

    /// Counts a revocation or expiry carried out.
    pub fn revoked(&self) {
        self.revocations.inc();
    }

    /// Sets the per-token series to `view`, replacing whatever labels the token had.
    pub fn observe_token(&self, namespace: &str, name: &str, view: TokenView) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.get(&key) == Some(&view) {
            return;
        }
        if let Some(old) = known.remove(&key) {
            self.clear_token(&key, &old);
        }
        let labels = TokenLabels {
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        if let Some(at) = view.next_rotation {
            self.next_rotation.get_or_create(&labels).set(at);
        }
        if let Some(at) = view.expiry {
            self.expiry.get_or_create(&labels).set(at);
        }
        self.info.get_or_create(&info_labels(&key, &view)).set(1);
        self.tokens
            .get_or_create(&PhaseLabels {
                phase: view.phase.as_str(),
            })
            .inc();
        known.insert(key, view);
    }

    /// Removes every series of a deleted token.
    pub fn forget_token(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = known.remove(&key) {
            self.clear_token(&key, &old);
        }
    }

    fn clear_token(&self, key: &(String, String), old: &TokenView) {
        let labels = TokenLabels {
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        self.next_rotation.remove(&labels);
        self.expiry.remove(&labels);
        self.info.remove(&info_labels(key, old));
        self.tokens
            .get_or_create(&PhaseLabels {
                phase: old.phase.as_str(),
            })
            .dec();
    }

    /// Marks the operator ready (caches synced) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn info_labels(key: &(String, String), view: &TokenView) -> InfoLabels {
    InfoLabels {
        namespace: key.0.clone(),
        name: key.1.clone(),
        role: view.role.clone(),
        phase: view.phase.as_str(),
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

    fn view(phase: Phase) -> TokenView {
        TokenView {
            role: "reader".into(),
            phase,
            next_rotation: Some(1_900_000_000),
            expiry: None,
        }
    }

    #[test]
    fn per_token_series_follow_phase_changes_and_deletion() {
        let metrics = Metrics::new();
        metrics.observe_token("ns", "a", view(Phase::Active));
        let text = metrics.encode();
        assert!(text.contains(
            r#"tokenmint_token_info{namespace="ns",name="a",role="reader",phase="Active"} 1"#
        ));
        assert!(text.contains(
            r#"tokenmint_token_next_rotation_timestamp_seconds{namespace="ns",name="a"} 1900000000"#
        ));

        metrics.observe_token("ns", "a", view(Phase::Revoked));
        let text = metrics.encode();
        assert!(!text.contains(r#"phase="Active"} 1"#));
        assert!(text.contains(r#"tokenmint_tokens{phase="Revoked"} 1"#));
        assert!(text.contains(r#"tokenmint_tokens{phase="Active"} 0"#));

        metrics.forget_token("ns", "a");
        let text = metrics.encode();
        assert!(!text.contains(r#"name="a""#));
    }
}
