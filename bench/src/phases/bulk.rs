//! Bulk issue of N tokens with a fresh operator, then a restart over them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tokenmint::api::ApiToken;
use tokenmint::core::token::secret::managed_selector;

use crate::BenchResult;
use crate::operator::{Operator, Usage, metric_sum};
use crate::track::Tracker;

use super::*;

impl Bench {
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

    pub(super) async fn bulk_in(
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

    pub(super) async fn versions(&self, ns: &str) -> BenchResult<HashMap<String, String>> {
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
    pub(super) async fn restart(&self, ns: &str, n: usize) -> BenchResult<Restart> {
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
}
