//! The rotation storm: every token due at one instant, with and without verifiers, the ceiling
//! for it, and a restart after an outage that left every token overdue.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokenmint::api::ApiToken;
use tokenmint::core::token::secret::{self, ISSUED_AT_ANNOTATION, managed_selector};

use crate::BenchResult;
use crate::cluster::BENCH_MANAGER;
use crate::operator::Operator;
use crate::track::Tracker;

use super::ceiling::{minimal_write, throwaway_rules};
use super::*;

impl Bench {
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

    pub(super) async fn storm_in(
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

    pub(super) async fn storm_ceiling_in(&self, ns: &str, n: usize) -> BenchResult<StormCeiling> {
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
    pub(super) async fn overdue_restart(
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
pub(super) const STORM_PERIOD_SECS: i64 = 120;

/// The storm tokens' `spec.rotation.period`.
pub(super) fn storm_period() -> String {
    format!("{}m", STORM_PERIOD_SECS / 60)
}

/// How long a storm of `n` may take to set up, the due second (Unix) that leaves, and the issue
/// instant that makes every credential fall due at it.
pub(super) fn storm_due(n: usize) -> BenchResult<(Duration, i64, jiff::Timestamp)> {
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
pub(super) async fn sleep_until_just_before(due: i64, what: &str) -> BenchResult<SystemTime> {
    let due_wall = SystemTime::UNIX_EPOCH + Duration::from_secs(due as u64);
    let Ok(wait) = due_wall.duration_since(SystemTime::now()) else {
        return Err(format!("{what} setup did not finish before the due time").into());
    };
    tokio::time::sleep(wait.saturating_sub(Duration::from_millis(100))).await;
    Ok(due_wall)
}

/// When `tracker` first saw each of `names` rotated once, after `due_wall`, sorted.
pub(super) fn late_after(
    tracker: &Tracker,
    names: &[String],
    due_wall: SystemTime,
) -> Vec<Duration> {
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

/// Rewrites each Secret's `issued-at` annotation (the credential state the operator keeps) and
/// re-seals it with the operator's key, which the bench, as cluster admin, reads: a time machine
/// for the storm. (Without the seal the operator would rightly take the edit as tampering.)
pub(super) async fn set_issued_at(
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
