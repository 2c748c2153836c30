//! Latency from a change to its effect: one token at a time, and through a verifier's outputs.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokenmint::api::{ApiToken, ROTATE_ANNOTATION};

use crate::BenchResult;
use crate::cluster::BENCH_MANAGER;
use crate::track::Tracker;

use super::*;

impl Bench {
    /// Creates `samples` tokens one by one on an idle operator; create → Active seen on a watch.
    pub async fn latency(&self, samples: usize) -> BenchResult<Latency> {
        let ns = self.cluster.namespace("latency").await?;
        let result = self.latency_in(&ns, samples).await;
        self.cleanup(&ns).await?;
        result
    }

    pub(super) async fn latency_in(&self, ns: &str, samples: usize) -> BenchResult<Latency> {
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

    pub(super) async fn verifier_latency_in(
        &self,
        ns: &str,
        samples: usize,
    ) -> BenchResult<VerifierLatency> {
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
}

/// Waits until every one of `outputs` holds (`present`) or has let go of `access_key`; returns
/// when the last of them was seen so.
pub(super) async fn wait_in_outputs(
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
