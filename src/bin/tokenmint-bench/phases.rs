//! The measurements: bulk issue (+ restart), the API server ceiling, latency, rotation storm.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokenmint::api::{ApiToken, ApiTokenSpec, MANAGER, Rotation, Scope};
use tokenmint::plan::{self, SecretWrite};
use tokenmint::secret::{self, ISSUED_AT_ANNOTATION, managed_selector};
use tokenmint::token::os_rng;

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

/// Many rotations due at one instant.
#[derive(Clone, Debug)]
pub struct Storm {
    pub n: usize,
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

#[derive(Clone, Debug)]
pub struct OverdueRestart {
    pub ready_in: Duration,
    /// Operator spawn → last new credential seen in its Secret.
    pub last_secret_in: Duration,
    /// Operator spawn → last status showing it.
    pub last_status_in: Duration,
    pub requests: Requests,
}

fn token_manifest(name: &str, period: &str) -> ApiToken {
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
            audiences: None,
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

/// Creates tokens `0..n` with `concurrency` requests in flight, handing each stored token to `sink`.
async fn create_tokens(
    api: &Api<ApiToken>,
    n: usize,
    period: &str,
    concurrency: usize,
    sink: Option<futures::channel::mpsc::UnboundedSender<ApiToken>>,
) -> BenchResult<Duration> {
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let sink = sink.clone();
            async move {
                let created = create_token(api, &token_manifest(&token_name(i), period)).await?;
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

    /// N tokens created at once into an empty namespace watched by a fresh operator; then,
    /// if `restart`, the operator restarted over the N ready tokens.
    pub async fn bulk(&self, n: usize, restart: bool) -> BenchResult<(Bulk, Option<Restart>)> {
        let ns = self.cluster.namespace(&format!("bulk{n}")).await?;
        let result = self.bulk_in(&ns, n, restart).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn bulk_in(
        &self,
        ns: &str,
        n: usize,
        restart: bool,
    ) -> BenchResult<(Bulk, Option<Restart>)> {
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        let mut tracker = Tracker::tokens(tokens.clone()).await?;
        let (operator, _) = ready_operator(self, ns).await?;
        let before = self
            .cluster
            .wait_quiet(Duration::from_millis(500), Duration::from_secs(5))
            .await?;
        let cpu_before = operator.usage()?.cpu_seconds;
        let cp_before = self.cluster.control_plane_cpu();
        let bench_before = bench_cpu();

        let started = Instant::now();
        let created_in = create_tokens(&tokens, n, "30d", self.concurrency, None).await?;
        tracker
            .wait(&format!("{n} tokens Active"), timeout_for(n), |s| {
                s.active_at.len() >= n
            })
            .await?;
        let active_in = tracker
            .with(|s| s.active_at.values().max().copied())
            .unwrap_or(started + created_in)
            - started;
        let cp_after = self.cluster.control_plane_cpu();
        let bench_after = bench_cpu();
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(2), Duration::from_secs(60))
            .await?;
        let usage = operator.usage()?;
        let counters = operator.metrics().await?;
        let bulk = Bulk {
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
        let client = self.cluster.operator_client().await?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance: None,
            },
        );
        let before = self.cluster.requests().await?;
        let cp_before = self.cluster.control_plane_cpu();
        let bench_before = bench_cpu();

        let started = Instant::now();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let create = create_tokens(&tokens, n, "30d", self.concurrency, Some(tx));
        let write = rx
            .map(|token| minimal_issue(&client, &recorder, token))
            .buffer_unordered(self.ceiling_concurrency)
            .try_collect::<()>();
        let (created, written) = tokio::join!(create, write);
        created?;
        written?;
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
            create_token(&tokens, &token_manifest(&name, "30d")).await?;
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

    /// `n` tokens whose credentials all fall due at one instant, with the operator running; then
    /// (if `overdue`) the same tokens all overdue when the operator starts.
    pub async fn storm(&self, n: usize, overdue: bool) -> BenchResult<Storm> {
        let ns = self.cluster.namespace(&format!("storm{n}")).await?;
        let result = self.storm_in(&ns, n, overdue).await;
        self.cleanup(&ns).await?;
        result
    }

    async fn storm_in(&self, ns: &str, n: usize, overdue: bool) -> BenchResult<Storm> {
        const PERIOD_SECS: i64 = 120;
        let tokens: Api<ApiToken> = Api::namespaced(self.cluster.admin.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.cluster.admin.clone(), ns);
        let mut token_tracker = Tracker::tokens(tokens.clone()).await?;
        let mut secret_tracker = Tracker::secrets(secrets.clone()).await?;
        let (operator, _) = ready_operator(self, ns).await?;
        create_tokens(&tokens, n, "2m", self.concurrency, None).await?;
        token_tracker
            .wait("storm tokens Active", timeout_for(n), |s| {
                s.active_at.len() >= n
            })
            .await?;
        self.cluster
            .wait_quiet(Duration::from_secs(1), Duration::from_secs(30))
            .await?;

        // Back-date every credential to the same issue second, so all fall due at `due`.
        let setup = Duration::from_secs(20) + Duration::from_millis(20 * n as u64);
        let due = jiff::Timestamp::now().as_second() + setup.as_secs() as i64;
        let issued = jiff::Timestamp::from_second(due - PERIOD_SECS)?;
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
        let due_wall = SystemTime::UNIX_EPOCH + Duration::from_secs(due as u64);
        if SystemTime::now() >= due_wall {
            return Err("storm setup did not finish before the due time".into());
        }
        // CPU is counted from just before the due second, so the idle wait does not dilute it.
        if let Ok(wait) = due_wall.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait.saturating_sub(Duration::from_millis(100))).await;
        }
        let cp_before = self.cluster.control_plane_cpu();
        let operator_before = operator.usage()?.cpu_seconds;

        let timeout = Duration::from_secs(PERIOD_SECS as u64 - 10) + setup;
        secret_tracker
            .wait("rotated Secrets", timeout, |s| s.rotated(1) >= n)
            .await?;
        token_tracker
            .wait("rotated statuses", timeout, |s| s.rotated(1) >= n)
            .await?;
        let late = |tracker: &Tracker| {
            let mut late: Vec<Duration> = tracker.with(|s| {
                names
                    .iter()
                    .filter_map(|name| s.rotations_at.get(&(name.clone(), 1)))
                    .map(|(_, wall)| wall.duration_since(due_wall).unwrap_or_default())
                    .collect()
            });
            late.sort();
            late
        };
        let secret_late = late(&secret_tracker);
        let status_late = late(&token_tracker);
        let control_plane_cpu = cpu_delta(&self.cluster.control_plane_cpu(), &cp_before);
        let operator_cpu = operator.usage()?.cpu_seconds - operator_before;
        let after = self
            .cluster
            .wait_quiet(Duration::from_secs(2), Duration::from_secs(60))
            .await?;
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
            secret_late,
            status_late,
            requests: after.since(&before),
            control_plane_cpu,
            operator_cpu,
            overdue_restart,
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
    let key =
        tokenmint::keystore::load_or_create(admin, "default", tokenmint::seal::DEFAULT_KEY_SECRET)
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
async fn minimal_issue(client: &Client, recorder: &Recorder, token: ApiToken) -> BenchResult<()> {
    let ns = token.namespace().unwrap_or_default();
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?;
    // A throwaway key: the seal is the same size whatever the key.
    let rules = plan::Rules {
        key: tokenmint::seal::SealKey::generate(&mut os_rng()),
        policy: tokenmint::validate::Policy::default(),
    };
    let observed = secret::observe(&token, None, &rules.key);
    let plan = plan::plan(
        &token,
        &observed,
        &plan::Servers::NONE,
        &rules,
        now,
        &mut os_rng(),
    );
    let SecretWrite::Create(secret) = plan.write else {
        return Err(format!("planner did not create a Secret for {}", token.name_any()).into());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let params = PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PostParams::default()
    };
    secrets.create(&params, &secret).await?;
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
