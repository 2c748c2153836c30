//! Restarts a token's consumers once its rotation is promoted ([`crate::core::consumer`] decides).
//!
//! A due restart waits `window` in a queue per workload, so tokens promoted close together restart
//! a workload once: one merge patch carries every due token's annotation. At most `max` rollouts
//! run at once in the cluster and `per_namespace` in one namespace; each is followed by a watch of
//! that one workload until it completes, is stuck, or runs past `timeout`. What is known of each
//! workload is kept in memory; after an operator restart each is read once more, and the
//! annotations already on it keep any from being restarted twice.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::{ApiToken, Consumer, ConsumerKind, ConsumerStatus};
use crate::core::consumer::{self, Observed, Progress, Workload};
use crate::runtime::events::Events;
use crate::runtime::queue::Request;

/// How often a workload that was missing or out of reach is looked at again, at most.
const RECHECK: Duration = Duration::from_secs(30);
/// How long a token whose consumer tokenmint may not read waits before it looks again (the chart
/// may have been upgraded with `consumers.enabled` meanwhile).
pub const FORBIDDEN_RECHECK: Duration = Duration::from_secs(300);
/// How long a restart that failed for another reason waits before it is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// Limits of the restarts.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a due restart waits for other tokens of the same workload.
    pub window: Duration,
    /// Rollouts at once in the cluster.
    pub max: usize,
    /// Rollouts at once in one namespace.
    pub per_namespace: usize,
    /// How long a rollout may take before it counts as stuck.
    pub timeout: Duration,
}

/// A workload: namespace, kind, name.
type WorkloadKey = (Arc<str>, ConsumerKind, Arc<str>);

#[derive(Default)]
struct State {
    /// What each token saw of each of its workloads (the annotation is the token's own), and with
    /// which of its credentials: a new credential reads the workload again.
    seen: HashMap<(WorkloadKey, Arc<str>), Seen>,
    queued: HashMap<WorkloadKey, Queued>,
    rolling: HashMap<WorkloadKey, Queued>,
    /// When tokenmint last restarted a workload for a token.
    restarted: HashMap<(WorkloadKey, Arc<str>), Time>,
    /// Workloads whose last rollout ran past the timeout, and why: a StatefulSet or DaemonSet
    /// says nothing of it itself.
    stuck: HashMap<WorkloadKey, String>,
    /// Rollouts found under way (started before an operator restart, or by someone else) that a
    /// watch follows, with the tokens to tell when they end.
    following: HashMap<WorkloadKey, std::collections::BTreeSet<Arc<str>>>,
}

struct Seen {
    observed: Observed,
    at: Instant,
    fingerprint: String,
}

impl State {
    /// Every token reads `workload` again.
    fn forget(&mut self, workload: &WorkloadKey) {
        self.seen.retain(|(w, _), _| w != workload);
    }
}

#[derive(Clone)]
struct Queued {
    /// Annotation key → fingerprint.
    annotations: BTreeMap<String, String>,
    /// Token key → the token, for its Events.
    tokens: BTreeMap<Arc<str>, ObjectReference>,
    due: Instant,
}

impl Queued {
    /// Each token with the credential it is restarted for.
    fn fingerprints(&self) -> Vec<(Arc<str>, String)> {
        self.tokens
            .keys()
            .filter_map(|token| {
                let name = token.split_once('/').map_or(&**token, |(_, n)| n);
                let fingerprint = self.annotations.get(&consumer::annotation_key(name))?;
                Some((token.clone(), fingerprint.clone()))
            })
            .collect()
    }
}

/// The consumers of every token, for the token controller.
pub struct Consumers {
    client: Client,
    settings: Settings,
    events: Events,
    metrics: Arc<crate::runtime::metrics::Metrics>,
    state: Arc<Mutex<State>>,
    wake: tokio::sync::Notify,
    /// Tokens to reconcile when a rollout moves.
    requests: futures::channel::mpsc::UnboundedSender<Request>,
}

impl Consumers {
    pub fn new(
        client: Client,
        settings: Settings,
        events: Events,
        metrics: Arc<crate::runtime::metrics::Metrics>,
        requests: futures::channel::mpsc::UnboundedSender<Request>,
    ) -> Consumers {
        Consumers {
            client,
            settings,
            events,
            metrics,
            state: Arc::default(),
            wake: tokio::sync::Notify::new(),
            requests,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state_handle(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    /// The status of each of `token`'s consumers for its current credential `fingerprint`,
    /// queueing the restarts it needs. Reads a workload only when it is not known, or when this
    /// token's credential changed since it last looked.
    pub async fn sync(&self, token: &ApiToken, fingerprint: &str) -> Vec<ConsumerStatus> {
        let namespace: Arc<str> = token.namespace().unwrap_or_default().into();
        let name = token.name_any();
        let token_key: Arc<str> = format!("{namespace}/{name}").into();
        let last = token
            .status
            .as_ref()
            .map(|s| &s.consumers[..])
            .unwrap_or(&[]);
        let mut statuses = Vec::new();
        for consumer in token.spec.consumers.iter().flatten() {
            let workload: WorkloadKey = (
                namespace.clone(),
                consumer.kind,
                consumer.name.as_str().into(),
            );
            let observed = self.observe(&workload, &token_key, fingerprint).await;
            let key = consumer::annotation_key(&name);
            let (restarting, rolling, restarted_at) = {
                let state = self.state();
                let rolling = state.rolling.contains_key(&workload);
                // Queued, not yet written: once written, the workload carries the annotation.
                let queued = state
                    .queued
                    .get(&workload)
                    .into_iter()
                    .any(|q| q.annotations.get(&key).map(String::as_str) == Some(fingerprint));
                let at = state
                    .restarted
                    .get(&(workload.clone(), token_key.clone()))
                    .cloned();
                (queued, rolling, at)
            };
            let previous = last
                .iter()
                .find(|l| l.kind == consumer.kind && l.name == consumer.name);
            let mut decision = consumer::decide(
                consumer,
                &name,
                fingerprint,
                &observed,
                previous,
                restarting,
            );
            if decision.restart {
                self.enqueue(&workload, &key, fingerprint, &token_key, token);
            } else if !restarting && !rolling {
                // A rollout tokenmint is not following itself (one it started before a restart,
                // or someone else's), or a workload not created yet.
                match &observed {
                    Observed::Present(w) if w.progress == Progress::InProgress => {
                        self.follow(&workload, &token_key, Until::Settled);
                    }
                    // Stuck now, perhaps not for ever (an image pushed late, a slow node).
                    Observed::Present(w) if matches!(w.progress, Progress::Stuck(_)) => {
                        self.follow(&workload, &token_key, Until::Complete);
                    }
                    // Named before it was created (GitOps applies in any order): watched by name.
                    Observed::NotFound => self.follow(&workload, &token_key, Until::Created),
                    _ => {}
                }
            }
            if restarted_at.is_some() {
                decision.status.restarted_at = restarted_at;
            }
            statuses.push(decision.status);
        }
        statuses
    }

    /// What is known of `workload`, read again if this token's credential changed since it looked
    /// (or if it was missing or out of reach a while ago).
    async fn observe(
        &self,
        workload: &WorkloadKey,
        token: &Arc<str>,
        fingerprint: &str,
    ) -> Observed {
        let key = (workload.clone(), token.clone());
        let cached = {
            let state = self.state();
            state.seen.get(&key).and_then(|seen| {
                let fresh = match seen.observed {
                    Observed::Present(_) => true,
                    Observed::NotFound | Observed::Forbidden(_) => seen.at.elapsed() < RECHECK,
                };
                (fresh && seen.fingerprint == fingerprint).then(|| seen.observed.clone())
            })
        };
        if let Some(observed) = cached {
            return observed;
        }
        let observed = self.read(workload, token).await;
        let seen = Seen {
            observed: observed.clone(),
            at: Instant::now(),
            fingerprint: fingerprint.to_owned(),
        };
        self.state().seen.insert(key, seen);
        observed
    }

    /// Reads `workload` from the API server. A rollout that ran past the timeout stays stuck until
    /// a read shows it complete.
    async fn read(&self, workload: &WorkloadKey, token: &str) -> Observed {
        let (namespace, kind, name) = workload;
        let token_name = token.split_once('/').map_or(token, |(_, n)| n);
        let key = consumer::annotation_key(token_name);
        let client = &self.client;
        let result = match kind {
            ConsumerKind::Deployment => {
                get::<Deployment>(client, namespace, name, &key, |d| {
                    (
                        d.spec.as_ref().map(|s| &s.template),
                        consumer::deployment_progress(d),
                    )
                })
                .await
            }
            ConsumerKind::StatefulSet => {
                get::<StatefulSet>(client, namespace, name, &key, |s| {
                    (
                        s.spec.as_ref().map(|s| &s.template),
                        consumer::stateful_set_progress(s),
                    )
                })
                .await
            }
            ConsumerKind::DaemonSet => {
                get::<DaemonSet>(client, namespace, name, &key, |d| {
                    (
                        d.spec.as_ref().map(|s| &s.template),
                        consumer::daemon_set_progress(d),
                    )
                })
                .await
            }
        };
        match result {
            Ok(Observed::Present(mut found)) => {
                let mut state = self.state();
                match &found.progress {
                    Progress::Complete => {
                        state.stuck.remove(workload);
                    }
                    Progress::InProgress => {
                        if let Some(why) = state.stuck.get(workload) {
                            found.progress = Progress::Stuck(why.clone());
                        }
                    }
                    Progress::Stuck(_) => {}
                }
                Observed::Present(found)
            }
            Ok(other) => other,
            Err(e) => {
                tracing::warn!(%namespace, kind = kind.as_str(), %name, error = %e, "could not read a consumer");
                // Not known: nothing is restarted on a guess; the next reconcile reads it again.
                Observed::Present(Workload {
                    annotation: None,
                    foreign_owner: None,
                    progress: Progress::InProgress,
                })
            }
        }
    }

    /// Watches a rollout tokenmint did not start (or started before a restart) until it ends, or a
    /// missing workload until it is created; then has `token` (and any other token that asked
    /// meanwhile) reconciled.
    fn follow(&self, workload: &WorkloadKey, token: &Arc<str>, until: Until) {
        let mut state = self.state();
        if let Some(tokens) = state.following.get_mut(workload) {
            tokens.insert(token.clone());
            return;
        }
        state
            .following
            .insert(workload.clone(), [token.clone()].into());
        drop(state);
        let (client, timeout) = (self.client.clone(), self.settings.timeout);
        let (workload, requests) = (workload.clone(), self.requests.clone());
        let me = self.state_handle();
        tokio::spawn(async move {
            let (namespace, kind, name) = &workload;
            let ended = match (kind, until) {
                (ConsumerKind::Deployment, Until::Settled) => {
                    let progress = consumer::deployment_progress;
                    follow::<Deployment>(&client, namespace, name, timeout, progress).await
                }
                (ConsumerKind::StatefulSet, Until::Settled) => {
                    let progress = consumer::stateful_set_progress;
                    follow::<StatefulSet>(&client, namespace, name, timeout, progress).await
                }
                (ConsumerKind::DaemonSet, Until::Settled) => {
                    let progress = consumer::daemon_set_progress;
                    follow::<DaemonSet>(&client, namespace, name, timeout, progress).await
                }
                (ConsumerKind::Deployment, Until::Complete) => {
                    let progress = consumer::deployment_progress;
                    complete::<Deployment>(&client, namespace, name, progress).await
                }
                (ConsumerKind::StatefulSet, Until::Complete) => {
                    let progress = consumer::stateful_set_progress;
                    complete::<StatefulSet>(&client, namespace, name, progress).await
                }
                (ConsumerKind::DaemonSet, Until::Complete) => {
                    let progress = consumer::daemon_set_progress;
                    complete::<DaemonSet>(&client, namespace, name, progress).await
                }
                (ConsumerKind::Deployment, Until::Created) => {
                    created::<Deployment>(&client, namespace, name).await
                }
                (ConsumerKind::StatefulSet, Until::Created) => {
                    created::<StatefulSet>(&client, namespace, name).await
                }
                (ConsumerKind::DaemonSet, Until::Created) => {
                    created::<DaemonSet>(&client, namespace, name).await
                }
            };
            let tokens = {
                let mut state = me.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(Progress::Stuck(why)) = &ended {
                    state.stuck.insert(workload.clone(), why.clone());
                }
                state.forget(&workload);
                state.following.remove(&workload).unwrap_or_default()
            };
            for token in tokens {
                let _ = requests.unbounded_send(Request::One(token));
            }
        });
    }

    fn enqueue(
        &self,
        workload: &WorkloadKey,
        key: &str,
        fingerprint: &str,
        token_key: &Arc<str>,
        token: &ApiToken,
    ) {
        let mut state = self.state();
        let due = Instant::now() + self.settings.window;
        let queued = state
            .queued
            .entry(workload.clone())
            .or_insert_with(|| Queued {
                annotations: BTreeMap::new(),
                tokens: BTreeMap::new(),
                due,
            });
        queued
            .annotations
            .insert(key.to_owned(), fingerprint.to_owned());
        queued
            .tokens
            .insert(token_key.clone(), token.object_ref(&()));
        drop(state);
        self.wake.notify_one();
    }

    /// Whether token `key` has a restart queued or rolling out.
    pub fn restarting(&self, key: &str) -> bool {
        let state = self.state();
        state
            .queued
            .values()
            .chain(state.rolling.values())
            .any(|q| q.tokens.contains_key(key))
    }

    /// Starts due restarts within the limits until `shutdown` resolves.
    pub async fn drive(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let next = {
                let mut state = self.state();
                let now = Instant::now();
                let mut started = Vec::new();
                let mut due: Vec<WorkloadKey> = state
                    .queued
                    .iter()
                    .filter(|(_, q)| q.due <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                due.sort_by_key(|k| state.queued[k].due);
                for workload in due {
                    let in_namespace = state.rolling.keys().filter(|k| k.0 == workload.0).count();
                    if state.rolling.contains_key(&workload)
                        || state.rolling.len() >= self.settings.max
                        || in_namespace >= self.settings.per_namespace
                    {
                        continue;
                    }
                    if let Some(queued) = state.queued.remove(&workload) {
                        state.rolling.insert(workload.clone(), queued.clone());
                        started.push((workload, queued));
                    }
                }
                for (workload, queued) in started {
                    tokio::spawn(self.clone().roll(workload, queued));
                }
                state.queued.values().map(|q| q.due).min()
            };
            let sleep = next.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(50))
            });
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Restarts `workload` with `queued`'s annotations and follows its rollout: its tokens are
    /// reconciled once it is written (status `RollingOut`) and once it ends.
    async fn roll(self: Arc<Self>, workload: WorkloadKey, queued: Queued) {
        let (namespace, kind, name) = &workload;
        let what = format!("{} {name}", kind.as_str());
        let patched = match kind {
            ConsumerKind::Deployment => patch::<Deployment>(&self.client, &workload, &queued).await,
            ConsumerKind::StatefulSet => {
                patch::<StatefulSet>(&self.client, &workload, &queued).await
            }
            ConsumerKind::DaemonSet => patch::<DaemonSet>(&self.client, &workload, &queued).await,
        };
        let restarted = match patched {
            Ok(restarted) => restarted,
            Err(e) => {
                let observed = match &e {
                    kube::Error::Api(s) if s.code == 404 => Some(Observed::NotFound),
                    kube::Error::Api(s) if s.code == 403 => {
                        Some(Observed::Forbidden("patch".into()))
                    }
                    _ => None,
                };
                let mut state = self.state();
                state.rolling.remove(&workload);
                match observed {
                    Some(observed) => {
                        for (token, fingerprint) in queued.fingerprints() {
                            let seen = Seen {
                                observed: observed.clone(),
                                at: Instant::now(),
                                fingerprint,
                            };
                            state.seen.insert((workload.clone(), token), seen);
                        }
                    }
                    None => {
                        tracing::warn!(%namespace, %what, error = %e, "could not restart a consumer; retrying");
                        let mut again = queued.clone();
                        again.due = Instant::now() + RETRY;
                        state.queued.entry(workload.clone()).or_insert(again);
                    }
                }
                drop(state);
                self.wake.notify_one();
                self.tell(&queued);
                return;
            }
        };
        // Written: each token sees its annotation on the workload, rolling out.
        self.metrics.consumer_rollout_started(restarted);
        let now = Time(Timestamp::now());
        {
            let mut state = self.state();
            for (token, fingerprint) in queued.fingerprints() {
                if restarted {
                    state
                        .restarted
                        .insert((workload.clone(), token.clone()), now.clone());
                }
                let observed = Observed::Present(Workload {
                    annotation: Some(fingerprint.clone()),
                    foreign_owner: None,
                    progress: Progress::InProgress,
                });
                let seen = Seen {
                    observed,
                    at: Instant::now(),
                    fingerprint,
                };
                state.seen.insert((workload.clone(), token), seen);
            }
        }
        self.tell(&queued);
        if restarted {
            let fingerprints: Vec<&str> = queued.annotations.values().map(String::as_str).collect();
            let note = format!(
                "restarted {what} for credential {}",
                fingerprints.join(", ")
            );
            tracing::info!(%namespace, %note, "consumer restarted");
            self.events_to(&queued, EventType::Normal, "ConsumerRestarted", &note)
                .await;
        }

        let timeout = self.settings.timeout;
        let ended = match kind {
            ConsumerKind::Deployment => {
                let progress = consumer::deployment_progress;
                follow::<Deployment>(&self.client, namespace, name, timeout, progress).await
            }
            ConsumerKind::StatefulSet => {
                let progress = consumer::stateful_set_progress;
                follow::<StatefulSet>(&self.client, namespace, name, timeout, progress).await
            }
            ConsumerKind::DaemonSet => {
                let progress = consumer::daemon_set_progress;
                follow::<DaemonSet>(&self.client, namespace, name, timeout, progress).await
            }
        };
        self.metrics.consumer_rollout_ended();
        {
            let mut state = self.state();
            state.rolling.remove(&workload);
            if let Some(Progress::Stuck(why)) = &ended {
                state.stuck.insert(workload.clone(), why.clone());
            }
            // Every token reads the workload as it is now.
            state.forget(&workload);
        }
        if let Some(Progress::Stuck(why)) = &ended {
            let note = format!("{what} did not finish its rollout: {why}");
            tracing::warn!(%namespace, %note, "consumer stuck");
            self.events_to(&queued, EventType::Warning, "ConsumerStuck", &note)
                .await;
        }
        self.wake.notify_one();
        self.tell(&queued);
    }

    /// Has `queued`'s tokens reconciled.
    fn tell(&self, queued: &Queued) {
        for token in queued.tokens.keys() {
            let _ = self.requests.unbounded_send(Request::One(token.clone()));
        }
    }

    async fn events_to(&self, queued: &Queued, type_: EventType, reason: &str, note: &str) {
        for reference in queued.tokens.values() {
            self.event(type_, reason, note, reference).await;
        }
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str, reference: &ObjectReference) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note.to_owned()),
            action: "RestartConsumer".to_owned(),
            secondary: None,
        };
        self.events.record(event, reference.clone()).await;
    }
}

/// A workload kind as the API reads, patches and watches it: Deployment, StatefulSet, DaemonSet.
trait Kind:
    Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Send
    + DeserializeOwned
    + 'static
{
}

impl<K> Kind for K where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Send
        + DeserializeOwned
        + 'static
{
}

/// What [`Consumers::follow`] waits for.
#[derive(Clone, Copy)]
enum Until {
    /// The rollout completes or is stuck.
    Settled,
    /// The workload exists.
    Created,
    /// A stuck rollout completes after all.
    Complete,
}

/// Waits until a stuck rollout completes (no bound: it may never); `None` if the workload goes
/// or the watch fails.
async fn complete<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    progress: fn(&K) -> Progress,
) -> Option<Progress>
where
    K: Kind,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let done = move |object: Option<&K>| object.is_none_or(|o| progress(o) == Progress::Complete);
    match kube::runtime::wait::await_condition(api, name, done).await {
        Ok(Some(_)) => Some(Progress::Complete),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(%namespace, %name, error = %e, "could not watch a stuck consumer");
            None
        }
    }
}

/// Waits until the workload exists; `None` if the watch fails (the next reconcile looks again).
async fn created<K>(client: &Client, namespace: &str, name: &str) -> Option<Progress>
where
    K: Kind,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let exists = |object: Option<&K>| object.is_some();
    match kube::runtime::wait::await_condition(api, name, exists).await {
        Ok(_) => Some(Progress::InProgress),
        Err(e) => {
            tracing::warn!(%namespace, %name, error = %e, "could not watch for a consumer to be created");
            None
        }
    }
}

/// Reads one workload as a consumer decision needs it.
async fn get<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    parts: impl Fn(&K) -> (Option<&PodTemplateSpec>, Progress),
) -> Result<Observed, kube::Error>
where
    K: Kind,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(None) => Ok(Observed::NotFound),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(Observed::Forbidden("get".into())),
        Err(e) => Err(e),
        Ok(Some(object)) => {
            let (template, progress) = parts(&object);
            let annotation = template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m: &ObjectMeta| m.annotations.as_ref())
                .and_then(|a| a.get(key))
                .cloned();
            let foreign_owner =
                consumer::foreign_owner(object.meta().managed_fields.as_deref(), key);
            Ok(Observed::Present(Workload {
                annotation,
                foreign_owner,
                progress,
            }))
        }
    }
}

/// Writes `queued`'s annotations on the workload's pod template (a merge patch: other annotations
/// stay); whether that changed the template, i.e. restarted it.
async fn patch<K>(
    client: &Client,
    workload: &WorkloadKey,
    queued: &Queued,
) -> Result<bool, kube::Error>
where
    K: Kind,
{
    let (namespace, _, name) = workload;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(consumer::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": queued.annotations}}}
    });
    let before = api.get(name).await?.meta().generation;
    let patched = api.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(patched.meta().generation != before)
}

/// Watches one workload until its rollout completes or is stuck, at most `timeout` (then stuck);
/// `None` if it is deleted.
async fn follow<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    progress: fn(&K) -> Progress,
) -> Option<Progress>
where
    K: Kind,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let done = move |object: Option<&K>| object.is_none_or(|o| progress(o) != Progress::InProgress);
    let followed = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api, name, done),
    )
    .await;
    match followed {
        Ok(Ok(Some(object))) => Some(progress(&object)),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => Some(Progress::Stuck(format!(
            "its rollout could not be watched: {e}"
        ))),
        Err(_) => Some(Progress::Stuck(format!(
            "its rollout did not finish within {}s",
            timeout.as_secs()
        ))),
    }
}

/// The consumers of `token` named in its spec, for the status of a token that is not Active:
/// nothing is restarted, what status said is kept.
pub fn kept(token: &ApiToken) -> Vec<ConsumerStatus> {
    let last = token
        .status
        .as_ref()
        .map(|s| &s.consumers[..])
        .unwrap_or(&[]);
    let named: Vec<&Consumer> = token.spec.consumers.iter().flatten().collect();
    last.iter()
        .filter(|l| named.iter().any(|c| c.kind == l.kind && c.name == l.name))
        .cloned()
        .collect()
}
