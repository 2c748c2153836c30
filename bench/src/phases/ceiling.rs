//! The API server's ceiling for the same writes: a minimal client making exactly the operator's
//! writes, with tokenmint's own planner and Secret-write executor.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokenmint::api::{ApiToken, MANAGER};
use tokenmint::controller::write::{Written, write_secret};
use tokenmint::core::credential::os_rng;
use tokenmint::core::token::plan::{self, SecretWrite};
use tokenmint::core::token::secret;

use crate::BenchResult;
use crate::track::Tracker;

use super::*;

impl Bench {
    /// The minimal client of the ceilings: the operator's identity, and a Recorder reporting as
    /// the operator does.
    pub(super) async fn minimal_client(&self) -> BenchResult<(Client, Recorder)> {
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
    pub(super) async fn issue_minimally(
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

    pub(super) async fn ceiling_in(&self, ns: &str, n: usize) -> BenchResult<Ceiling> {
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
}

/// What the operator writes for a new token, without a controller: create the Secret, apply
/// the status, record the Event. The objects come from the operator's own pure planner, so
/// they are byte-for-byte the size of the real ones.
///
/// `issued`: the instant the credential is minted at (the storm's ceiling issues in the past);
/// the current second when `None`.
pub(super) async fn minimal_issue(
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
pub(super) fn throwaway_rules() -> plan::Rules {
    plan::Rules {
        key: tokenmint::core::seal::SealKey::generate(&mut os_rng()),
        policy: tokenmint::core::token::validate::Policy::default(),
    }
}

/// Plans `token` over its `secret` at `now` with tokenmint's planner and makes the writes the
/// operator would make, in its order: the Secret (a create, or an apply pinned to the observed
/// resourceVersion), the status, the Event.
pub(super) async fn minimal_write(
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
