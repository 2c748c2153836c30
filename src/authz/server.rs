//! The HTTP side of authz: `/verify` (any method, any path below it, as Envoy's `path_prefix`
//! sends), `/healthz`, `/readyz`, `/metrics`.
//!
//! Responses to a refused check carry no credential, access key or token name; metric labels are
//! fixed strings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Shared;
use super::check::{self, Decision};

pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-tokenmint-token");
pub const ROLE_HEADER: HeaderName = HeaderName::from_static("x-tokenmint-role");
pub const SCOPE_HEADER: HeaderName = HeaderName::from_static("x-tokenmint-scope");
pub const FILTER_HEADER: HeaderName = HeaderName::from_static("x-tokenmint-filter");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
}

/// authz's metrics, under `tokenmint_authz_`.
#[derive(Debug)]
pub struct AuthzMetrics {
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    duration: Histogram,
    loads: Family<LoadLabels, Counter>,
    credentials: Gauge,
    api_requests: Family<RequestLabels, Counter>,
}

impl Default for AuthzMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthzMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenmint_authz");
        let checks = Family::<CheckLabels, Counter>::default();
        // 10 µs to about 0.3 s.
        let duration = Histogram::new(exponential_buckets(0.00001, 2.0, 16));
        let loads = Family::<LoadLabels, Counter>::default();
        let credentials = Gauge::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "checks",
            "Checks by result (allowed, unauthorized, forbidden, unavailable) and reason",
            checks.clone(),
        );
        registry.register(
            "check_duration_seconds",
            "Time to answer one check",
            duration.clone(),
        );
        registry.register(
            "loads",
            "Reads of the output by result (loaded, invalid, absent)",
            loads.clone(),
        );
        registry.register(
            "credentials",
            "Credentials in the output being served (0 when none is)",
            credentials.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the API server by verb (list, watch, get): a few an hour when idle",
            api_requests.clone(),
        );
        AuthzMetrics {
            registry,
            checks,
            duration,
            loads,
            credentials,
            api_requests,
        }
    }

    fn checked(&self, result: &'static str, reason: &'static str, took: Duration) {
        self.checks
            .get_or_create(&CheckLabels { result, reason })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub(super) fn loaded(&self, result: &'static str, credentials: usize) {
        self.loads.get_or_create(&LoadLabels { result }).inc();
        self.credentials
            .set(i64::try_from(credentials).unwrap_or(i64::MAX));
    }

    /// One request to the API server (`list`, `watch` or `get`).
    pub(super) fn requested(&self, verb: &'static str) {
        self.api_requests
            .get_or_create(&RequestLabels { verb })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The routes, for [`serve`] and for tests that call them in-process.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/verify", any(verify))
        .route("/verify/{*path}", any(verify))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves [`router`] on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /verify, /healthz, /readyz and /metrics");
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

/// One challenge per scheme authz reads.
const CHALLENGES: [&str; 2] = ["Bearer realm=\"tokenmint\"", "Basic realm=\"tokenmint\""];

async fn verify(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let credentials = match shared.serving() {
        Ok(credentials) => credentials,
        Err(why) => {
            tracing::debug!(reason = %why, "check refused: not ready");
            shared
                .metrics
                .checked("unavailable", "not_ready", started.elapsed());
            return (StatusCode::SERVICE_UNAVAILABLE, no_store(), "not ready\n").into_response();
        }
    };
    let authorization: Vec<&[u8]> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let now = jiff::Timestamp::now();
    let decision = check::check(&credentials, &authorization, uri.query(), now);
    let (result, reason, response) = match decision {
        Decision::Allowed { grant, scope } => {
            if shared.records_uses() {
                credentials.note_use(grant, crate::core::usage::minute_of(now));
            }
            let mut headers = no_store();
            headers.insert(TOKEN_HEADER, grant.token.clone());
            headers.insert(ROLE_HEADER, grant.role.clone());
            for granted in grant.scopes.iter() {
                headers.append(SCOPE_HEADER, granted.canonical.clone());
            }
            if let Some(filter) = scope.and_then(|s| s.filter.clone()) {
                headers.insert(FILTER_HEADER, filter);
            }
            ("allowed", "ok", (StatusCode::OK, headers).into_response())
        }
        Decision::Unauthorized(why) => {
            let mut headers = no_store();
            for challenge in CHALLENGES {
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            let response = (StatusCode::UNAUTHORIZED, headers, "unauthorized\n").into_response();
            ("unauthorized", why.as_str(), response)
        }
        Decision::Forbidden(why) => {
            if why == check::Forbidden::BadScope {
                tracing::warn!("a check asked for a scope parameter that is not TYPE[:resource]");
            }
            let response = (StatusCode::FORBIDDEN, no_store(), "forbidden\n").into_response();
            ("forbidden", why.as_str(), response)
        }
    };
    shared.metrics.checked(result, reason, started.elapsed());
    response
}

fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.serving() {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}
