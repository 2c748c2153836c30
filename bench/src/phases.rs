//! The measurements: bulk issue (+ restart), the API server ceiling, latency, rotation storm; each
//! of bulk, latency and storm also with ApiTokenVerifiers rendering every credential.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokenmint::api::verifier::{
    ApiTokenVerifier, ApiTokenVerifierSpec, AudienceRef, HtpasswdHash, Output, OutputFormat,
};
use tokenmint::api::{ApiToken, ApiTokenSpec, MANAGER, ROTATE_ANNOTATION, Rotation, Scope};
use tokenmint::controller::write::{Written, write_secret};
use tokenmint::core::credential::os_rng;
use tokenmint::core::token::plan::{self, SecretWrite};
use tokenmint::core::token::secret::{self, ISSUED_AT_ANNOTATION, managed_selector};

use crate::BenchResult;
use crate::cluster::{BENCH_MANAGER, Cluster, Requests};
use crate::operator::{Operator, OperatorSpec, Usage, metric_sum};
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

fn token_manifest(name: &str, period: &str, audiences: &[String]) -> ApiToken {
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
        },
    )
}

fn token_name(i: usize) -> String {
    format!("tok-{i:05}")
}

/// Names of `n` verifiers.
fn verifier_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("verifier-{i}")).collect()
}

/// The output Secrets of [`verifier_manifest`]: htpasswd first.
fn output_names(verifiers: &[String]) -> Vec<String> {
    verifiers
        .iter()
        .flat_map(|v| [format!("{v}-htpasswd"), format!("{v}-map")])
        .collect()
}

/// A verifier trusting its own namespace, with one htpasswd output (ssha, the hash recommended
/// for nginx) and one sha256-map output. `publishDelay: 0s`: a rotation is promoted as soon as the
/// outputs hold it, so the bench measures the operator, not a kubelet's refresh period.
fn verifier_manifest(name: &str) -> ApiTokenVerifier {
    let output = |secret_name: String, format, hash| Output {
        secret_name,
        format,
        key: None,
        hash,
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

async fn create_verifiers(admin: &Client, ns: &str, names: &[String]) -> BenchResult<()> {
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
async fn verifier_ready(admin: &Client, ns: &str, name: &str) -> BenchResult<String> {
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
fn output_sizes(
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
async fn create_token(api: &Api<ApiToken>, token: &ApiToken) -> BenchResult<ApiToken> {
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
async fn create_tokens(
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

fn timeout_for(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(60 * n as u64)
}

fn bench_cpu() -> f64 {
    crate::operator::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn cpu_delta(
    after: &BTreeMap<&'static str, f64>,
    before: &BTreeMap<&'static str, f64>,
) -> BTreeMap<&'static str, f64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

async fn ready_operator(bench: &Bench, ns: &str) -> BenchResult<(Operator, Duration)> {
    let mut operator = Operator::start(&bench.operator, ns)?;
    let ready = operator.wait_ready(Duration::from_secs(120)).await?;
    Ok((operator, ready))
}

impl Bench {
    async fn cleanup(&self, ns: &str) -> BenchResult<()> {
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

    /// N tokens created at once into an empty namespace watched by a fresh operator (with
    /// `verifier`, all naming one verifier of that namespace); then, if `restart`, the operator
    /// restarted over the N ready tokens.
    pub async fn bulk(
        &self,
        n: usize,
        restart: bool,
        verifier: bool,
    ) -> BenchResult<(Bulk, Option<Restart>)> {
        let phase = if verifier { "vbulk" } else { "bulk" };
        let ns = self.cluster.namespace(&format!("{phase}{n}")).await?;
        let result = self.bulk_in(&ns, n, restart, verifier).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn bulk_in(
        &self,
        ns: &str,
        n: usize,
        restart: bool,
        verifier: bool,
    ) -> BenchResult<(Bulk, Option<Restart>)> {
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        let mut tracker = Tracker::tokens(tokens.clone()).await?;
        let verifiers = verifier_names(usize::from(verifier));
        let outputs = output_names(&verifiers);
        create_verifiers(&self.cluster.admin, ns, &verifiers).await?;
        let mut output_tracker =
            Tracker::outputs(Api::namespaced(self.cluster.admin.clone(), ns)).await?;
        let (operator, _) = ready_operator(self, ns).await?;
        let before = self
            .cluster
            .wait_quiet(Duration::from_millis(500), Duration::from_secs(5))
            .await?;
        let cpu_before = operator.usage()?.cpu_seconds;
        let cp_before = self.cluster.control_plane_cpu();
        let bench_before = bench_cpu();

        let versions_before = output_tracker.with(|s| s.versions.clone());
        let started = Instant::now();
        let created_in =
            create_tokens(&tokens, n, "30d", &verifiers, self.concurrency, None).await?;
        tracker
            .wait(&format!("{n} tokens Active"), timeout_for(n), |s| {
                s.active_at.len() >= n
            })
            .await?;
        let active_in = tracker
            .with(|s| s.active_at.values().max().copied())
            .unwrap_or(started + created_in)
            - started;
        // The htpasswd output (ssha, 64 bytes a line) holds 16,384 credentials; the sha256-map
        // (574 bytes a credential) fills at 1,826, so only the htpasswd output is waited for.
        let in_outputs_in = match outputs.first() {
            Some(htpasswd) => {
                output_tracker
                    .wait(
                        &format!("{n} credentials in {htpasswd}"),
                        timeout_for(n),
                        |s| s.holding(htpasswd) >= n,
                    )
                    .await?;
                let last = output_tracker.with(|s| {
                    s.appeared_at
                        .iter()
                        .filter(|((output, _), _)| output == htpasswd)
                        .map(|(_, at)| *at)
                        .max()
                });
                last.map(|at| at - started)
            }
            None => None,
        };
        let cp_after = self.cluster.control_plane_cpu();
        let bench_after = bench_cpu();
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(2), Duration::from_secs(60))
            .await?;
        let usage = operator.usage()?;
        let counters = operator.metrics().await?;
        let verifier_ready = match verifiers.first() {
            Some(name) => Some(verifier_ready(&self.cluster.admin, ns, name).await?),
            None => None,
        };
        let bulk = Bulk {
            in_outputs_in,
            outputs: output_sizes(&output_tracker, &outputs, &versions_before),
            verifier_ready,
            wasted_mints: metric_sum(&counters, "tokenmint_wasted_mints_total") as u64,
            secret_reads: metric_sum(&counters, "tokenmint_secret_reads_total") as u64,
            n,
            created_in,
            active_in,
            requests: after.since(&before),
            usage: Usage {
                peak_rss_kib: usage.peak_rss_kib,
                cpu_seconds: usage.cpu_seconds - cpu_before,
            },
            control_plane_cpu: cpu_delta(&cp_after, &cp_before),
            bench_cpu: bench_after - bench_before,
        };
        operator.stop().await?;
        let restart = if restart {
            Some(self.restart(ns, n).await?)
        } else {
            None
        };
        Ok((bulk, restart))
    }

    async fn versions(&self, ns: &str) -> BenchResult<HashMap<String, String>> {
        let mut out = HashMap::new();
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        for t in tokens.list_metadata(&ListParams::default()).await? {
            out.insert(
                format!("apitoken/{}", t.name_any()),
                t.resource_version().unwrap_or_default(),
            );
        }
        let secrets: Api<Secret> = Api::namespaced(self.cluster.admin.clone(), ns);
        let lp = ListParams::default().labels(&managed_selector());
        for s in secrets.list_metadata(&lp).await? {
            out.insert(
                format!("secret/{}", s.name_any()),
                s.resource_version().unwrap_or_default(),
            );
        }
        Ok(out)
    }

    /// Restarts the operator over `n` ready tokens in `ns` (the operator is stopped on entry).
    async fn restart(&self, ns: &str, n: usize) -> BenchResult<Restart> {
        let versions_before = self.versions(ns).await?;
        let before = self.cluster.requests().await?;
        let mut operator = Operator::start(&self.operator, ns)?;
        let ready_in = operator.wait_ready(Duration::from_secs(120)).await?;
        let deadline = Instant::now() + timeout_for(n);
        let reobserved_in = loop {
            let text = operator.metrics().await?;
            if metric_sum(&text, "tokenmint_tokens") as usize >= n {
                break operator.started.elapsed();
            }
            if Instant::now() > deadline {
                return Err(format!("restarted operator did not re-observe {n} tokens").into());
            }
            // Each scrape makes the operator render one series per token (2 MB at 10,000):
            // poll gently so the measurement does not inflate its memory. Resolution: 200 ms.
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(2), Duration::from_secs(60))
            .await?;
        let usage = operator.usage()?;
        operator.stop().await?;
        let versions_after = self.versions(ns).await?;
        let changed_objects = versions_after
            .iter()
            .filter(|(k, v)| versions_before.get(*k) != Some(v))
            .count()
            + versions_before
                .keys()
                .filter(|k| !versions_after.contains_key(*k))
                .count();
        Ok(Restart {
            ready_in,
            reobserved_in,
            requests: after.since(&before),
            changed_objects,
            usage,
        })
    }

    /// The minimal client of the ceilings: the operator's identity, and a Recorder reporting as
    /// the operator does.
    async fn minimal_client(&self) -> BenchResult<(Client, Recorder)> {
        let client = self.cluster.operator_client().await?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance: None,
            },
        );
        Ok((client, recorder))
    }

    /// Creates tokens `0..n` with `period` and, pipelined behind the creates, issues each with
    /// the minimal client (`minimal_issue`), `ceiling_concurrency` in flight.
    async fn issue_minimally(
        &self,
        tokens: &Api<ApiToken>,
        n: usize,
        period: &str,
        (client, recorder, rules): (&Client, &Recorder, &plan::Rules),
        issued: Option<jiff::Timestamp>,
    ) -> BenchResult<()> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let create = create_tokens(tokens, n, period, &[], self.concurrency, Some(tx));
        let write = rx
            .map(|token| minimal_issue(client, recorder, rules, issued, token))
            .buffer_unordered(self.ceiling_concurrency)
            .try_collect::<()>();
        let (created, written) = tokio::join!(create, write);
        created?;
        written?;
        Ok(())
    }

    /// The operator's writes for `n` tokens (Secret create, status apply, Event) made directly by a
    /// minimal client as the operator's identity, pipelined behind the same bulk creates.
    pub async fn ceiling(&self, n: usize) -> BenchResult<Ceiling> {
        let ns = self.cluster.namespace(&format!("ceiling{n}")).await?;
        let result = self.ceiling_in(&ns, n).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn ceiling_in(&self, ns: &str, n: usize) -> BenchResult<Ceiling> {
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        let mut tracker = Tracker::tokens(tokens.clone()).await?;
        let (client, recorder) = self.minimal_client().await?;
        let before = self.cluster.requests().await?;
        let cp_before = self.cluster.control_plane_cpu();
        let bench_before = bench_cpu();

        let started = Instant::now();
        let rules = throwaway_rules();
        self.issue_minimally(&tokens, n, "30d", (&client, &recorder, &rules), None)
            .await?;
        tracker
            .wait(&format!("{n} tokens Active"), timeout_for(n), |s| {
                s.active_at.len() >= n
            })
            .await?;
        let active_in = tracker
            .with(|s| s.active_at.values().max().copied())
            .unwrap_or(started)
            - started;
        let cp_after = self.cluster.control_plane_cpu();
        let bench_after = bench_cpu();
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(1), Duration::from_secs(30))
            .await?;
        Ok(Ceiling {
            n,
            active_in,
            requests: after.since(&before),
            control_plane_cpu: cpu_delta(&cp_after, &cp_before),
            bench_cpu: bench_after - bench_before,
        })
    }

    /// Creates `samples` tokens one by one on an idle operator; create → Active seen on a watch.
    pub async fn latency(&self, samples: usize) -> BenchResult<Latency> {
        let ns = self.cluster.namespace("latency").await?;
        let result = self.latency_in(&ns, samples).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn latency_in(&self, ns: &str, samples: usize) -> BenchResult<Latency> {
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        let mut tracker = Tracker::tokens(tokens.clone()).await?;
        let (operator, _) = ready_operator(self, ns).await?;
        let mut result = Latency {
            samples: Vec::with_capacity(samples),
            create_rtt: Vec::with_capacity(samples),
        };
        for i in 0..samples {
            let name = token_name(i);
            let started = Instant::now();
            create_token(&tokens, &token_manifest(&name, "30d", &[])).await?;
            result.create_rtt.push(started.elapsed());
            tracker
                .wait(&format!("{name} Active"), Duration::from_secs(30), |s| {
                    s.active_at.contains_key(&name)
                })
                .await?;
            let at = tracker.with(|s| s.active_at[&name]);
            result.samples.push(at - started);
            // Let the trailing reconciles (status and Secret watch events) finish: idle operator.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        operator.stop().await?;
        Ok(result)
    }

    /// Through one verifier on an idle operator, `samples` tokens one by one: create, rotate
    /// (`tokenmint.dev/rotate`), revoke; each change → seen on a watch of both outputs.
    pub async fn verifier_latency(&self, samples: usize) -> BenchResult<VerifierLatency> {
        let ns = self.cluster.namespace("vlatency").await?;
        let result = self.verifier_latency_in(&ns, samples).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn verifier_latency_in(&self, ns: &str, samples: usize) -> BenchResult<VerifierLatency> {
        const WAIT: Duration = Duration::from_secs(30);
        let admin = &self.cluster.admin;
        let tokens: Api<ApiToken> = Api::namespaced(admin.clone(), ns);
        let verifiers = verifier_names(1);
        let outputs = output_names(&verifiers);
        create_verifiers(admin, ns, &verifiers).await?;
        let mut token_tracker = Tracker::tokens(tokens.clone()).await?;
        let mut secret_tracker = Tracker::secrets(Api::namespaced(admin.clone(), ns)).await?;
        let mut output_tracker = Tracker::outputs(Api::namespaced(admin.clone(), ns)).await?;
        let (operator, _) = ready_operator(self, ns).await?;
        let params = PatchParams {
            field_manager: Some(BENCH_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let mut result = VerifierLatency {
            issue: Vec::with_capacity(samples),
            rotation: Vec::with_capacity(samples),
            rotation_secret: Vec::with_capacity(samples),
            revocation: Vec::with_capacity(samples),
        };
        // Let the trailing reconciles (status and Secret watch events) finish: idle operator.
        let idle = || tokio::time::sleep(Duration::from_millis(100));
        for i in 0..samples {
            let name = token_name(i);
            let started = Instant::now();
            create_token(&tokens, &token_manifest(&name, "30d", &verifiers)).await?;
            token_tracker
                .wait(&format!("{name} Active"), WAIT, |s| {
                    s.active_at.contains_key(&name) && s.access_keys.contains_key(&name)
                })
                .await?;
            let issued = token_tracker.with(|s| s.access_keys[&name].clone());
            let at = wait_in_outputs(&mut output_tracker, &outputs, &issued, true).await?;
            result.issue.push(at - started);
            idle().await;

            let started = Instant::now();
            let rotate = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "bench"}}});
            tokens.patch(&name, &params, &Patch::Merge(&rotate)).await?;
            secret_tracker
                .wait(&format!("{name} rotated in its Secret"), WAIT, |s| {
                    s.rotations.get(&name).is_some_and(|r| *r >= 1)
                })
                .await?;
            let (promoted, rotated) = secret_tracker.with(|s| {
                (
                    s.rotations_at[&(name.clone(), 1)].0,
                    s.access_keys[&name].clone(),
                )
            });
            result.rotation_secret.push(promoted - started);
            let at = wait_in_outputs(&mut output_tracker, &outputs, &rotated, true).await?;
            result.rotation.push(at - started);
            idle().await;

            let started = Instant::now();
            let revoke = json!({"spec": {"revoked": true}});
            tokens.patch(&name, &params, &Patch::Merge(&revoke)).await?;
            let at = wait_in_outputs(&mut output_tracker, &outputs, &rotated, false).await?;
            result.revocation.push(at - started);
            idle().await;
        }
        operator.stop().await?;
        Ok(result)
    }

    /// `n` tokens whose credentials all fall due at one instant, with the operator running; then
    /// (if `overdue`) the same tokens all overdue when the operator starts. With `verifiers`, every
    /// token names that many verifiers of its namespace, and their outputs' writes are counted.
    pub async fn storm(&self, n: usize, overdue: bool, verifiers: usize) -> BenchResult<Storm> {
        let phase = if verifiers > 0 { "vstorm" } else { "storm" };
        let ns = self.cluster.namespace(&format!("{phase}{n}")).await?;
        let result = self.storm_in(&ns, n, overdue, verifiers).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn storm_in(
        &self,
        ns: &str,
        n: usize,
        overdue: bool,
        verifiers: usize,
    ) -> BenchResult<Storm> {
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.cluster.admin.clone(), ns);
        let mut token_tracker = Tracker::tokens(tokens.clone()).await?;
        let mut secret_tracker = Tracker::secrets(secrets.clone()).await?;
        let verifier_names = verifier_names(verifiers);
        let outputs = output_names(&verifier_names);
        create_verifiers(&self.cluster.admin, ns, &verifier_names).await?;
        let mut output_tracker = Tracker::outputs(secrets.clone()).await?;
        let (operator, _) = ready_operator(self, ns).await?;
        let period = storm_period();
        create_tokens(&tokens, n, &period, &verifier_names, self.concurrency, None).await?;
        token_tracker
            .wait("storm tokens Active", timeout_for(n), |s| {
                s.active_at.len() >= n
            })
            .await?;
        output_tracker
            .wait("storm credentials in every output", timeout_for(n), |s| {
                outputs.iter().all(|o| s.holding(o) >= n)
            })
            .await?;
        self.cluster
            .wait_quiet(Duration::from_secs(1), Duration::from_secs(30))
            .await?;

        // Back-date every credential to the same issue second, so all fall due at `due`.
        let (setup, due, issued) = storm_due(n)?;
        let names: Vec<String> = (0..n).map(token_name).collect();
        set_issued_at(&secrets, &names, issued, self.concurrency).await?;
        token_tracker
            .wait("statuses to show the common due time", setup, |s| {
                names
                    .iter()
                    .all(|name| s.next_rotation.get(name) == Some(&due))
            })
            .await
            .map_err(|e| format!("storm setup too slow: {e}"))?;
        let before = self
            .cluster
            .wait_quiet(Duration::from_secs(1), setup)
            .await?;
        let due_wall = sleep_until_just_before(due, "storm").await?;
        let cp_before = self.cluster.control_plane_cpu();
        let operator_before = operator.usage()?.cpu_seconds;
        let versions_before = output_tracker.with(|s| s.versions.clone());

        let timeout = Duration::from_secs(STORM_PERIOD_SECS as u64 - 10) + setup;
        secret_tracker
            .wait("rotated Secrets", timeout, |s| s.rotated(1) >= n)
            .await?;
        token_tracker
            .wait("rotated statuses", timeout, |s| s.rotated(1) >= n)
            .await?;
        let secret_late = late_after(&secret_tracker, &names, due_wall);
        let status_late = late_after(&token_tracker, &names, due_wall);
        let control_plane_cpu = cpu_delta(&self.cluster.control_plane_cpu(), &cp_before);
        let operator_cpu = operator.usage()?.cpu_seconds - operator_before;
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(2), Duration::from_secs(60))
            .await?;
        let outputs = output_sizes(&output_tracker, &outputs, &versions_before);
        operator.stop().await?;

        let overdue_restart = if overdue {
            Some(
                self.overdue_restart(ns, &names, &mut token_tracker, &mut secret_tracker)
                    .await?,
            )
        } else {
            None
        };
        Ok(Storm {
            n,
            verifiers,
            outputs,
            secret_late,
            status_late,
            requests: after.since(&before),
            control_plane_cpu,
            operator_cpu,
            overdue_restart,
        })
    }

    /// The storm's writes made by the minimal client, with no operator: `n` credentials issued so
    /// that all fall due at the same second; at that second the client plans each rotation with
    /// tokenmint's planner (from Secrets and tokens listed beforehand, as the operator's caches
    /// hold them) and makes the operator's writes: Secret apply, status apply, Event.
    pub async fn storm_ceiling(&self, n: usize) -> BenchResult<StormCeiling> {
        let ns = self.cluster.namespace(&format!("stormceiling{n}")).await?;
        let result = self.storm_ceiling_in(&ns, n).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn storm_ceiling_in(&self, ns: &str, n: usize) -> BenchResult<StormCeiling> {
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.cluster.admin.clone(), ns);
        let mut token_tracker = Tracker::tokens(tokens.clone()).await?;
        let mut secret_tracker = Tracker::secrets(secrets.clone()).await?;
        let (client, recorder) = self.minimal_client().await?;
        let rules = throwaway_rules();
        let (setup, due, issued) = storm_due(n)?;
        let period = storm_period();
        let minimal = (&client, &recorder, &rules);
        self.issue_minimally(&tokens, n, &period, minimal, Some(issued))
            .await?;
        token_tracker
            .wait("ceiling storm tokens Active", setup, |s| {
                s.active_at.len() >= n
            })
            .await?;
        // What the operator's caches would hold at the due second.
        let listed_secrets: HashMap<String, Secret> = secrets
            .list(&ListParams::default().labels(&managed_selector()))
            .await?
            .items
            .into_iter()
            .map(|s| (s.name_any(), s))
            .collect();
        let listed_tokens = tokens.list(&ListParams::default()).await?.items;
        let before = self
            .cluster
            .wait_quiet(Duration::from_secs(1), setup)
            .await?;
        let due_wall = sleep_until_just_before(due, "ceiling storm").await?;
        let cp_before = self.cluster.control_plane_cpu();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = jiff::Timestamp::from_second(due)?;
        stream::iter(&listed_tokens)
            .map(|token| {
                let secret = listed_secrets.get(token.secret_name());
                minimal_write(&client, &recorder, &rules, now, token, secret)
            })
            .buffer_unordered(self.ceiling_concurrency)
            .try_collect::<()>()
            .await?;
        secret_tracker
            .wait("ceiling storm Secrets rotated", setup, |s| {
                s.rotated(1) >= n
            })
            .await?;
        let control_plane_cpu = cpu_delta(&self.cluster.control_plane_cpu(), &cp_before);
        let names: Vec<String> = (0..n).map(token_name).collect();
        let secret_late = late_after(&secret_tracker, &names, due_wall);
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(1), Duration::from_secs(30))
            .await?;
        Ok(StormCeiling {
            n,
            secret_late,
            requests: after.since(&before),
            control_plane_cpu,
        })
    }

    /// With the operator stopped, makes every credential overdue, then starts it.
    async fn overdue_restart(
        &self,
        ns: &str,
        names: &[String],
        token_tracker: &mut Tracker,
        secret_tracker: &mut Tracker,
    ) -> BenchResult<OverdueRestart> {
        let n = names.len();
        let secrets: Api<Secret> = Api::namespaced(self.cluster.admin.clone(), ns);
        let issued = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 300)?;
        set_issued_at(&secrets, names, issued, self.concurrency).await?;
        let before = self
            .cluster
            .wait_quiet(Duration::from_millis(500), Duration::from_secs(10))
            .await?;
        let mut operator = Operator::start(&self.operator, ns)?;
        let spawned = operator.started;
        let ready_in = operator.wait_ready(Duration::from_secs(120)).await?;
        secret_tracker
            .wait("overdue Secrets rotated", timeout_for(n), |s| {
                s.rotated(2) >= n
            })
            .await?;
        token_tracker
            .wait("overdue statuses rotated", timeout_for(n), |s| {
                s.rotated(2) >= n
            })
            .await?;
        let last = |tracker: &Tracker| {
            tracker.with(|s| {
                names
                    .iter()
                    .filter_map(|name| s.rotations_at.get(&(name.clone(), 2)))
                    .map(|(at, _)| at.saturating_duration_since(spawned))
                    .max()
                    .unwrap_or_default()
            })
        };
        let last_secret_in = last(secret_tracker);
        let last_status_in = last(token_tracker);
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(2), Duration::from_secs(60))
            .await?;
        operator.stop().await?;
        Ok(OverdueRestart {
            ready_in,
            last_secret_in,
            last_status_in,
            requests: after.since(&before),
        })
    }
}

/// A storm's rotation period: every credential is issued this long before the due second.
const STORM_PERIOD_SECS: i64 = 120;

/// The storm tokens' `spec.rotation.period`.
fn storm_period() -> String {
    format!("{}m", STORM_PERIOD_SECS / 60)
}

/// How long a storm of `n` may take to set up, the due second (Unix) that leaves, and the issue
/// instant that makes every credential fall due at it.
fn storm_due(n: usize) -> BenchResult<(Duration, i64, jiff::Timestamp)> {
    let setup = Duration::from_secs(20) + Duration::from_millis(20 * n as u64);
    let due = jiff::Timestamp::now().as_second() + setup.as_secs() as i64;
    Ok((
        setup,
        due,
        jiff::Timestamp::from_second(due - STORM_PERIOD_SECS)?,
    ))
}

/// Sleeps until 100 ms before the Unix second `due` (CPU is counted from there, so the idle wait
/// does not dilute it) and returns that second as wall time; an error if it has already passed.
async fn sleep_until_just_before(due: i64, what: &str) -> BenchResult<SystemTime> {
    let due_wall = SystemTime::UNIX_EPOCH + Duration::from_secs(due as u64);
    let Ok(wait) = due_wall.duration_since(SystemTime::now()) else {
        return Err(format!("{what} setup did not finish before the due time").into());
    };
    tokio::time::sleep(wait.saturating_sub(Duration::from_millis(100))).await;
    Ok(due_wall)
}

/// When `tracker` first saw each of `names` rotated once, after `due_wall`, sorted.
fn late_after(tracker: &Tracker, names: &[String], due_wall: SystemTime) -> Vec<Duration> {
    let mut late: Vec<Duration> = tracker.with(|s| {
        names
            .iter()
            .filter_map(|name| s.rotations_at.get(&(name.clone(), 1)))
            .map(|(_, wall)| wall.duration_since(due_wall).unwrap_or_default())
            .collect()
    });
    late.sort();
    late
}

/// Waits until every one of `outputs` holds (`present`) or has let go of `access_key`; returns
/// when the last of them was seen so.
async fn wait_in_outputs(
    tracker: &mut Tracker,
    outputs: &[String],
    access_key: &str,
    present: bool,
) -> BenchResult<Instant> {
    let seen = |s: &crate::track::Seen| {
        if present {
            s.in_all(outputs, access_key)
        } else {
            s.gone_from_all(outputs, access_key)
        }
    };
    let what = if present { "in" } else { "gone from" };
    tracker
        .wait(
            &format!("a credential {what} the outputs"),
            Duration::from_secs(30),
            |s| seen(s).is_some(),
        )
        .await?;
    Ok(tracker.with(seen).unwrap_or_else(Instant::now))
}

/// Rewrites each Secret's `issued-at` annotation (the credential state the operator keeps) and
/// re-seals it with the operator's key, which the bench, as cluster admin, reads: a time machine
/// for the storm. (Without the seal the operator would rightly take the edit as tampering.)
async fn set_issued_at(
    secrets: &Api<Secret>,
    names: &[String],
    issued: jiff::Timestamp,
    concurrency: usize,
) -> BenchResult<()> {
    let admin = secrets.clone().into_client();
    let key = tokenmint::runtime::keystore::load_or_create(
        admin,
        "default",
        tokenmint::core::seal::DEFAULT_KEY_SECRET,
    )
    .await?;
    let params = PatchParams {
        field_manager: Some(BENCH_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    stream::iter(names)
        .map(|name| {
            let (params, key) = (&params, &key);
            async move {
                let mut secret = secrets.get(name).await?;
                let uid = secret
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true))
                    .map(|o| o.uid.clone())
                    .unwrap_or_default();
                secret
                    .metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(ISSUED_AT_ANNOTATION.to_owned(), secret::rfc3339(issued));
                secret::reseal(&mut secret, &uid, key);
                let notes = secret.metadata.annotations.clone();
                let patch = json!({"metadata": {
                    "resourceVersion": secret.metadata.resource_version,
                    "annotations": notes,
                }});
                secrets
                    .patch(name, params, &Patch::Merge(&patch))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// What the operator writes for a new token, without a controller: create the Secret, apply
/// the status, record the Event. The objects come from the operator's own pure planner, so
/// they are byte-for-byte the size of the real ones.
///
/// `issued`: the instant the credential is minted at (the storm's ceiling issues in the past);
/// the current second when `None`.
async fn minimal_issue(
    client: &Client,
    recorder: &Recorder,
    rules: &plan::Rules,
    issued: Option<jiff::Timestamp>,
    token: ApiToken,
) -> BenchResult<()> {
    let now = match issued {
        Some(at) => at,
        None => jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?,
    };
    minimal_write(client, recorder, rules, now, &token, None).await
}

/// A rules set with a throwaway key: a seal is the same size whatever the key.
fn throwaway_rules() -> plan::Rules {
    plan::Rules {
        key: tokenmint::core::seal::SealKey::generate(&mut os_rng()),
        policy: tokenmint::core::token::validate::Policy::default(),
    }
}

/// Plans `token` over its `secret` at `now` with tokenmint's planner and makes the writes the
/// operator would make, in its order: the Secret (a create, or an apply pinned to the observed
/// resourceVersion), the status, the Event.
async fn minimal_write(
    client: &Client,
    recorder: &Recorder,
    rules: &plan::Rules,
    now: jiff::Timestamp,
    token: &ApiToken,
    secret: Option<&Secret>,
) -> BenchResult<()> {
    let ns = token.namespace().unwrap_or_default();
    let observed = secret::observe(token, secret, &rules.key);
    let plan = plan::plan(
        token,
        &observed,
        &plan::Servers::NONE,
        rules,
        now,
        &mut os_rng(),
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    if matches!(plan.write, SecretWrite::Nothing) {
        return Err(format!("planner wrote nothing for {}", token.name_any()).into());
    }
    // The operator's own executor, following nothing: a cache is not part of the minimum.
    let key = ObjectRef::new(token.secret_name()).within(&ns);
    if write_secret(&secrets, &(), &key, &plan.write).await? != Written::Done {
        return Err(format!("the Secret of {} changed under the bench", token.name_any()).into());
    }
    let patch = json!({
        "apiVersion": ApiToken::api_version(&()),
        "kind": ApiToken::kind(&()),
        "status": plan.status,
    });
    Api::<ApiToken>::namespaced(client.clone(), &ns)
        .patch_status(
            &token.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    if let Some(transition) = plan.event {
        let event = Event {
            type_: EventType::Normal,
            reason: transition.reason.as_str().to_owned(),
            note: Some(transition.note),
            action: transition.reason.as_str().to_owned(),
            secondary: None,
        };
        recorder.publish(&event, &token.object_ref(&())).await?;
    }
    Ok(())
}
