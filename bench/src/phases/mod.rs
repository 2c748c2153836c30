//! The measurements: bulk issue (+ restart), the API server ceiling, latency, rotation storm; each
//! of bulk, latency and storm also with ApiTokenVerifiers rendering every credential.

mod bulk;
mod ceiling;
mod latency;
mod storm;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tokenmint::api::verifier::{
    ApiTokenVerifier, ApiTokenVerifierSpec, AudienceRef, HtpasswdHash, Output, OutputFormat,
};
use tokenmint::api::{ApiToken, ApiTokenSpec, Rotation, Scope};

use crate::BenchResult;
use crate::cluster::{BENCH_MANAGER, Cluster, Requests};
use crate::operator::{Operator, OperatorSpec, Usage};
use crate::track::Tracker;

/// Settings shared by every phase.
pub struct Bench {
    pub cluster: Cluster,
    pub operator: OperatorSpec,
    /// How many creates (or patches) the bench keeps in flight.
    pub concurrency: usize,
    /// How many Secret+status writes the ceiling client keeps in flight.
    pub ceiling_concurrency: usize,
    /// Keep namespaces for inspection.
    pub keep: bool,
}

/// Throughput of one bulk issue.
#[derive(Clone, Debug)]
pub struct Bulk {
    pub n: usize,
    /// First create sent → every create answered.
    pub created_in: Duration,
    /// First create sent → every token seen Active.
    pub active_in: Duration,
    /// The operator identity's requests from ready until quiet after the last Active.
    pub requests: Requests,
    /// The operator's peak RSS and CPU used while issuing.
    pub usage: Usage,
    /// CPU seconds of each control-plane process while issuing.
    pub control_plane_cpu: BTreeMap<&'static str, f64>,
    /// CPU seconds of the bench process while issuing.
    pub bench_cpu: f64,
    /// Credentials the operator minted whose conditional write was refused (must be 0).
    pub wasted_mints: u64,
    /// Secrets the operator had to read because its cache could not be trusted for a write.
    pub secret_reads: u64,
    /// Into a verifier: first create sent → every credential in its htpasswd output.
    pub in_outputs_in: Option<Duration>,
    /// Into a verifier: its outputs once quiet (writes counted from the first create).
    pub outputs: Vec<OutputSize>,
    /// Into a verifier: its `Ready` condition once quiet (`status reason: message`).
    pub verifier_ready: Option<String>,
}

/// One verifier output at the end of a phase.
#[derive(Clone, Debug)]
pub struct OutputSize {
    pub name: String,
    pub bytes: usize,
    /// Distinct access keys it lets in.
    pub credentials: usize,
    /// Writes during the phase (resourceVersions seen on a watch).
    pub writes: u64,
}

impl Bulk {
    pub fn tokens_per_second(&self) -> f64 {
        self.n as f64 / self.active_in.as_secs_f64()
    }
}

/// An operator restart over ready tokens.
#[derive(Clone, Debug)]
pub struct Restart {
    /// Spawn → caches synced (`/readyz`).
    pub ready_in: Duration,
    /// Spawn → every token reconciled again (`tokenmint_tokens{phase="Active"}` = N).
    pub reobserved_in: Duration,
    /// The new process's requests until quiet.
    pub requests: Requests,
    /// ApiTokens and Secrets whose resourceVersion changed.
    pub changed_objects: usize,
    /// The new process's peak RSS and CPU.
    pub usage: Usage,
}

/// The same writes as the operator makes, from a minimal client with no controller.
#[derive(Clone, Debug)]
pub struct Ceiling {
    pub n: usize,
    pub active_in: Duration,
    pub requests: Requests,
    pub control_plane_cpu: BTreeMap<&'static str, f64>,
    pub bench_cpu: f64,
}

impl Ceiling {
    pub fn tokens_per_second(&self) -> f64 {
        self.n as f64 / self.active_in.as_secs_f64()
    }
}

/// Create → Active, one token at a time.
#[derive(Clone, Debug)]
pub struct Latency {
    /// Before the create is sent → Active seen on the watch.
    pub samples: Vec<Duration>,
    /// The create request alone.
    pub create_rtt: Vec<Duration>,
}

/// Change → verifier output, one token at a time, through one verifier with an htpasswd (ssha)
/// and a sha256-map output that publishes at once (`publishDelay: 0s`).
#[derive(Clone, Debug)]
pub struct VerifierLatency {
    /// Before the create is sent → the credential in both outputs.
    pub issue: Vec<Duration>,
    /// Before the rotate annotation is sent → the new (staged) credential in both outputs.
    pub rotation: Vec<Duration>,
    /// Before the rotate annotation is sent → the new credential current in the token's Secret
    /// (staged, published, then promoted).
    pub rotation_secret: Vec<Duration>,
    /// Before `spec.revoked: true` is sent → the credential gone from both outputs.
    pub revocation: Vec<Duration>,
}

/// Many rotations due at one instant.
#[derive(Clone, Debug)]
pub struct Storm {
    pub n: usize,
    /// ApiTokenVerifiers accepting every token (0: the plain storm).
    pub verifiers: usize,
    /// Their outputs; writes counted from just before the due instant until quiet.
    pub outputs: Vec<OutputSize>,
    /// Due instant → each new credential seen in its Secret, sorted.
    pub secret_late: Vec<Duration>,
    /// Due instant → each status showing the rotation, sorted.
    pub status_late: Vec<Duration>,
    pub requests: Requests,
    /// CPU seconds from just before the due instant until the last rotation was seen.
    pub control_plane_cpu: BTreeMap<&'static str, f64>,
    pub operator_cpu: f64,
    /// Overdue at start: operator spawn → last new credential seen, if measured.
    pub overdue_restart: Option<OverdueRestart>,
}

impl Storm {
    /// Rotations per second: N over due → last new credential in its Secret.
    pub fn rotations_per_second(&self) -> f64 {
        let last = self.secret_late.last().copied().unwrap_or_default();
        self.n as f64 / last.as_secs_f64().max(0.001)
    }
}

/// The storm's writes from the minimal client (see [`Bench::storm_ceiling`]).
#[derive(Clone, Debug)]
pub struct StormCeiling {
    pub n: usize,
    /// Due instant → each new credential seen in its Secret, sorted.
    pub secret_late: Vec<Duration>,
    pub requests: Requests,
    pub control_plane_cpu: BTreeMap<&'static str, f64>,
}

#[derive(Clone, Debug)]
pub struct OverdueRestart {
    pub ready_in: Duration,
    /// Operator spawn → last new credential seen in its Secret.
    pub last_secret_in: Duration,
    /// Operator spawn → last status showing it.
    pub last_status_in: Duration,
    pub requests: Requests,
}

pub(super) fn token_manifest(name: &str, period: &str, audiences: &[String]) -> ApiToken {
    ApiToken::new(
        name,
        ApiTokenSpec {
            role: "reader".into(),
            description: Some("tokenmint-bench".into()),
            scopes: Some(vec![Scope {
                type_: "DATASOURCES:READ".into(),
                resource: Some("events".into()),
                filter: None,
            }]),
            rotation: Some(Rotation {
                period: period.into(),
                overlap: None,
            }),
            audiences: (!audiences.is_empty())
                .then(|| audiences.iter().map(|a| AudienceRef(a.clone())).collect()),
            expires_at: None,
            revoked: None,
            secret_name: None,
            secret_template: None,
            format: None,
            consumers: None,
            inactivity: None,
        },
    )
}

pub(super) fn token_name(i: usize) -> String {
    format!("tok-{i:05}")
}

/// Names of `n` verifiers.
pub(super) fn verifier_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("verifier-{i}")).collect()
}

/// The output Secrets of [`verifier_manifest`]: htpasswd first.
pub(super) fn output_names(verifiers: &[String]) -> Vec<String> {
    verifiers
        .iter()
        .flat_map(|v| [format!("{v}-htpasswd"), format!("{v}-map")])
        .collect()
}

/// A verifier trusting its own namespace, with one htpasswd output (ssha, the hash recommended
/// for nginx) and one sha256-map output. `publishDelay: 0s`: a rotation is promoted as soon as the
/// outputs hold it, so the bench measures the operator, not a kubelet's refresh period.
pub(super) fn verifier_manifest(name: &str) -> ApiTokenVerifier {
    let output = |secret_name: String, format, hash| Output {
        secret_name,
        format,
        key: None,
        hash,
        trino: None,
    };
    ApiTokenVerifier::new(
        name,
        ApiTokenVerifierSpec {
            trust: None,
            outputs: vec![
                output(
                    format!("{name}-htpasswd"),
                    OutputFormat::Htpasswd,
                    Some(HtpasswdHash::Ssha),
                ),
                output(format!("{name}-map"), OutputFormat::Sha256Map, None),
            ],
            publish_delay: Some("0s".into()),
        },
    )
}

pub(super) async fn create_verifiers(
    admin: &Client,
    ns: &str,
    names: &[String],
) -> BenchResult<()> {
    let api: Api<ApiTokenVerifier> = Api::namespaced(admin.clone(), ns);
    let params = PostParams {
        field_manager: Some(BENCH_MANAGER.to_owned()),
        ..PostParams::default()
    };
    for name in names {
        api.create(&params, &verifier_manifest(name)).await?;
    }
    Ok(())
}

/// The `Ready` condition of verifier `name`, as `status reason: message`.
pub(super) async fn verifier_ready(admin: &Client, ns: &str, name: &str) -> BenchResult<String> {
    let verifier = Api::<ApiTokenVerifier>::namespaced(admin.clone(), ns)
        .get(name)
        .await?;
    let conditions = verifier.status.map(|s| s.conditions).unwrap_or_default();
    Ok(conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or("no Ready condition".to_owned(), |c| {
            format!("{} {}: {}", c.status, c.reason, c.message)
        }))
}

/// Each output as `outputs` sees it now; writes counted since `versions_before`.
pub(super) fn output_sizes(
    outputs: &Tracker,
    names: &[String],
    versions_before: &HashMap<String, u64>,
) -> Vec<OutputSize> {
    outputs.with(|s| {
        names
            .iter()
            .map(|name| OutputSize {
                name: name.clone(),
                bytes: s.bytes.get(name).copied().unwrap_or(0),
                credentials: s.holding(name),
                writes: s.versions.get(name).copied().unwrap_or(0)
                    - versions_before.get(name).copied().unwrap_or(0),
            })
            .collect()
    })
}

/// Creates one ApiToken, retrying transient failures; returns the stored object.
pub(super) async fn create_token(api: &Api<ApiToken>, token: &ApiToken) -> BenchResult<ApiToken> {
    let params = PostParams {
        field_manager: Some(BENCH_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut attempt = 0;
    loop {
        match api.create(&params, token).await {
            Ok(created) => return Ok(created),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(api.get(&token.name_any()).await?);
            }
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("bench: create {} failed ({e}); retrying", token.name_any());
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates tokens `0..n` naming `audiences` with `concurrency` requests in flight, handing each stored
/// token to `sink`.
pub(super) async fn create_tokens(
    api: &Api<ApiToken>,
    n: usize,
    period: &str,
    audiences: &[String],
    concurrency: usize,
    sink: Option<futures::channel::mpsc::UnboundedSender<ApiToken>>,
) -> BenchResult<Duration> {
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let sink = sink.clone();
            async move {
                let token = token_manifest(&token_name(i), period, audiences);
                let created = create_token(api, &token).await?;
                if let Some(sink) = sink {
                    let _ = sink.unbounded_send(created);
                }
                BenchResult::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    Ok(started.elapsed())
}

pub(super) fn timeout_for(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(60 * n as u64)
}

pub(super) fn bench_cpu() -> f64 {
    crate::operator::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

pub(super) fn cpu_delta(
    after: &BTreeMap<&'static str, f64>,
    before: &BTreeMap<&'static str, f64>,
) -> BTreeMap<&'static str, f64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

pub(super) async fn ready_operator(bench: &Bench, ns: &str) -> BenchResult<(Operator, Duration)> {
    let mut operator = Operator::start(&bench.operator, ns)?;
    let ready = operator.wait_ready(Duration::from_secs(120)).await?;
    Ok((operator, ready))
}

impl Bench {
    pub(super) async fn cleanup(&self, ns: &str) -> BenchResult<()> {
        if self.keep {
            eprintln!("bench: keeping namespace {ns}");
            return Ok(());
        }
        let took = self.cluster.delete_namespace(ns).await?;
        let settled = self.cluster.settle(Duration::from_secs(60)).await;
        eprintln!(
            "bench: deleted namespace {ns} in {:.1}s; control plane idle {:.1}s later",
            took.as_secs_f64(),
            settled.as_secs_f64()
        );
        Ok(())
    }
}
