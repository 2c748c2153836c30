//! The only module that talks to the API server: watches, the reconcile loop, writes, Events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::{ApiToken, ApiTokenStatus, MANAGER, Phase};
use crate::metrics::{Metrics, TokenView};
use crate::plan::{self, Plan, Reason, SecretWrite, Wake};
use crate::secret::{self, TOKEN_LABEL};
use crate::token::os_rng;

/// What can go wrong in one reconcile. Messages name the object, never credential material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ApiToken has no namespace")]
    NoNamespace,
    #[error("reading Secret {name}: {source}")]
    ReadSecret { name: String, source: kube::Error },
    #[error("writing Secret {name}: {source}")]
    WriteSecret { name: String, source: kube::Error },
    #[error("deleting Secret {name}: {source}")]
    DeleteSecret { name: String, source: kube::Error },
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("Secret {name} kept changing under us; will retry")]
    Contended { name: String },
}

impl Error {
    /// A fixed label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoNamespace => "no_namespace",
            Error::ReadSecret { .. } => "read_secret",
            Error::WriteSecret { .. } => "write_secret",
            Error::DeleteSecret { .. } => "delete_secret",
            Error::WriteStatus(_) => "write_status",
            Error::Contended { .. } => "contended",
        }
    }
}

/// Settings for [`run`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    /// How many tokens may be reconciled at once.
    pub concurrency: u16,
    /// Name reported on Events (the pod name in a cluster).
    pub instance: Option<String>,
}

/// Shared state of the reconciler.
pub struct Context {
    client: Client,
    secrets: Arc<SecretCache>,
    tokens: Arc<Cache<ApiToken>>,
    reporter: Reporter,
    metrics: Arc<Metrics>,
}

/// Watches ApiTokens and their Secrets and reconciles until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tokens, secrets): (Api<ApiToken>, Api<Secret>) = match &settings.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };

    // Ready once both caches have their first full list. (Counted from the streams: several tasks
    // awaiting `Store::wait_until_ready` at once are not all woken in kube-runtime 5.)
    let synced = Arc::new(Synced::new(metrics.clone()));
    let secrets_synced = synced.clone();

    // Both caches drop managedFields: they are the bulk of each object and nothing here reads them.
    let secret_cache = Arc::new(SecretCache::default());
    let secret_writer = secret_cache.clone();
    let secret_events = watcher(
        secrets,
        watcher::Config::default().labels(&secret::managed_selector()),
    )
    .default_backoff()
    .modify(|s: &mut Secret| s.metadata.managed_fields = None)
    .inspect_ok(move |event| secrets_synced.observe(Synced::SECRETS, event))
    .inspect_ok(move |event| secret_writer.apply(event))
    .touched_objects();

    let token_cache = Arc::new(Cache::new());
    let token_writer = token_cache.clone();
    let forget = metrics.clone();
    let token_events = watcher(tokens, watcher::Config::default())
        .default_backoff()
        .modify(|t: &mut ApiToken| t.metadata.managed_fields = None)
        .inspect_ok(move |event| {
            synced.observe(Synced::TOKENS, event);
            if let watcher::Event::Delete(token) = event {
                forget.forget_token(&token.namespace().unwrap_or_default(), &token.name_any());
            }
        })
        .inspect_ok(move |event| token_writer.apply(event))
        .applied_objects();

    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: settings.instance.clone(),
    };
    let token_store = token_cache.store.clone();
    let context = Arc::new(Context {
        client: client.clone(),
        secrets: secret_cache,
        tokens: token_cache,
        reporter,
        metrics,
    });

    Controller::for_stream(token_events, token_store)
        .watches_stream(secret_events, |secret: Secret| {
            // Map by label rather than ownerReference, so a Secret left by a deleted namesake still
            // wakes the token that is waiting for it to go.
            let name = secret.labels().get(TOKEN_LABEL).cloned();
            let ns = secret.namespace();
            name.zip(ns)
                .map(|(name, ns)| ObjectRef::new(&name).within(&ns))
        })
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile dispatch");
            }
        })
        .await;
}

/// Marks the operator ready once each watched kind has delivered its first complete list.
struct Synced {
    /// One bit per kind that has listed.
    listed: std::sync::atomic::AtomicU8,
    metrics: Arc<Metrics>,
}

impl Synced {
    const TOKENS: u8 = 0b01;
    const SECRETS: u8 = 0b10;

    fn new(metrics: Arc<Metrics>) -> Self {
        Synced {
            listed: std::sync::atomic::AtomicU8::new(0),
            metrics,
        }
    }

    fn observe<K>(&self, kind: u8, event: &watcher::Event<K>) {
        if !matches!(event, watcher::Event::InitDone) {
            return;
        }
        let before = self
            .listed
            .fetch_or(kind, std::sync::atomic::Ordering::AcqRel);
        if before != Self::TOKENS | Self::SECRETS && before | kind == Self::TOKENS | Self::SECRETS {
            self.metrics.set_ready(true);
            tracing::info!("caches synced");
        }
    }
}

/// A watch cache that the reconciler also moves forward with what its own writes returned.
///
/// Between a write and its watch event, a reconcile woken by the other watch (the new Secret's event
/// before the token's status event, or the reverse) would plan from the older copy and repeat the
/// write: a second status apply, or a create that fails and a re-read. Putting the API server's answer
/// into the cache avoids that. It only ever replaces the exact version the write was based on, so
/// anything the watch delivered meanwhile wins, and the cache still converges on the watch.
struct Cache<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    writer: Mutex<Writer<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    fn new() -> Self {
        let writer = Writer::default();
        Cache {
            store: writer.as_reader(),
            writer: Mutex::new(writer),
        }
    }

    /// The watch stream's side: applies one watch event.
    fn apply(&self, event: &watcher::Event<K>) {
        self.lock().apply_watcher_event(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer<K>> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the outcome of our own write to `key`, if the cache still holds `based_on` (the
    /// resourceVersion the write started from; `None` for an object that was absent).
    fn advance(&self, key: &ObjectRef<K>, based_on: Option<&str>, outcome: watcher::Event<K>) {
        let mut writer = self.lock();
        let cached = self.store.get(key);
        let cached_version = cached
            .as_ref()
            .map(|o| o.meta().resource_version.as_deref());
        if cached_version == based_on.map(Some) {
            writer.apply_watcher_event(&outcome);
        }
    }
}

/// The Secret cache, kept as JSON: as Rust structs (maps and many small strings) one of our Secrets
/// takes about 3.9 KiB, serialized about 1.3 KiB; at 10,000 tokens that is 38 MiB against 14 MiB.
/// A reconcile deserializes the one Secret it needs, in microseconds.
///
/// Like [`Cache`], the reconciler moves it forward with what its own writes returned.
#[derive(Default)]
struct SecretCache {
    state: Mutex<SecretCacheState>,
}

#[derive(Default)]
struct SecretCacheState {
    secrets: HashMap<ObjectRef<Secret>, StoredSecret>,
    /// A relist in progress, swapped in when complete (as a reflector does).
    relisting: Option<HashMap<ObjectRef<Secret>, StoredSecret>>,
}

struct StoredSecret {
    resource_version: Option<String>,
    json: Box<[u8]>,
}

impl SecretCache {
    fn key(secret: &Secret) -> ObjectRef<Secret> {
        ObjectRef::new(&secret.name_any()).within(&secret.namespace().unwrap_or_default())
    }

    fn stored(secret: &Secret) -> Option<StoredSecret> {
        let json = serde_json::to_vec(secret).ok()?.into_boxed_slice();
        Some(StoredSecret {
            resource_version: secret.metadata.resource_version.clone(),
            json,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SecretCacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The watch stream's side: applies one watch event.
    fn apply(&self, event: &watcher::Event<Secret>) {
        self.lock().apply(event);
    }

    fn get(&self, key: &ObjectRef<Secret>) -> Option<Secret> {
        let state = self.lock();
        let stored = state.secrets.get(key)?;
        serde_json::from_slice(&stored.json).ok()
    }

    /// Records the outcome of our own write to `key`, if the cache still holds `based_on` (the
    /// resourceVersion the write started from; `None` for a Secret that was absent).
    fn advance(
        &self,
        key: &ObjectRef<Secret>,
        based_on: Option<&str>,
        outcome: watcher::Event<Secret>,
    ) {
        let mut state = self.lock();
        let cached = state
            .secrets
            .get(key)
            .map(|s| s.resource_version.as_deref());
        if cached == based_on.map(Some) {
            state.apply(&outcome);
        }
    }
}

impl SecretCacheState {
    fn apply(&mut self, event: &watcher::Event<Secret>) {
        match event {
            watcher::Event::Apply(secret) => match SecretCache::stored(secret) {
                Some(stored) => {
                    self.secrets.insert(SecretCache::key(secret), stored);
                }
                None => {
                    self.secrets.remove(&SecretCache::key(secret));
                }
            },
            watcher::Event::Delete(secret) => {
                self.secrets.remove(&SecretCache::key(secret));
            }
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(secret) => {
                if let Some(stored) = SecretCache::stored(secret) {
                    self.relisting
                        .get_or_insert_default()
                        .insert(SecretCache::key(secret), stored);
                }
            }
            watcher::Event::InitDone => {
                self.secrets = self.relisting.take().unwrap_or_default();
            }
        }
    }
}

/// Whole seconds: the precision Kubernetes stores timestamps at, so status compares equal after a round trip.
fn now_seconds() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

async fn reconcile(token: Arc<ApiToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_token(&token, &ctx).await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    if let Err(error) = &result
        && !matches!(error, Error::Contended { .. })
    {
        report_error(&token, &ctx, error).await;
    }
    result
}

/// Shows a failing reconcile as `Ready=False, reason=Error` (once per distinct message), keeping the rest of
/// status. Best effort: if this write fails too, the log and the error metric still say what happened.
async fn report_error(token: &ApiToken, ctx: &Context, error: &Error) {
    let Some(ns) = token.namespace() else { return };
    let last = token.status.clone().unwrap_or_default();
    let message = error.to_string();
    let condition = plan::ready(token, &last, false, Reason::Error, message, now_seconds());
    if last.conditions.iter().any(|c| {
        c.type_ == "Ready" && c.reason == condition.reason && c.message == condition.message
    }) {
        return;
    }
    let status = ApiTokenStatus {
        phase: last.phase.or(Some(Phase::Pending)),
        conditions: vec![condition],
        ..last
    };
    if let Err(e) = write_status(ctx, token, &status).await {
        tracing::debug!(namespace = %ns, name = %token.name_any(), error = %e, "could not report the error in status");
    }
}

/// Applies `status` to `token` and puts the API server's answer into the token cache.
async fn write_status(
    ctx: &Context,
    token: &ApiToken,
    status: &ApiTokenStatus,
) -> Result<(), Error> {
    let ns = token.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ApiToken> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": ApiToken::api_version(&()),
        "kind": ApiToken::kind(&()),
        "status": status,
    });
    let mut stored = api
        .patch_status(
            &token.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::WriteStatus)?;
    stored.metadata.managed_fields = None;
    ctx.tokens.advance(
        &ObjectRef::from_obj(token),
        token.resource_version().as_deref(),
        watcher::Event::Apply(stored),
    );
    Ok(())
}

fn error_policy(token: Arc<ApiToken>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.kind());
    tracing::warn!(namespace = token.namespace().as_deref(), name = %token.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile_token(token: &ApiToken, ctx: &Context) -> Result<Action, Error> {
    let ns = token.namespace().ok_or(Error::NoNamespace)?;
    let secret_name = token.secret_name().to_owned();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ObjectRef::new(&secret_name).within(&ns);
    let mut current: Option<Secret> = ctx.secrets.get(&key);

    // First from the cache; if a conditional write finds the cache stale, once more from a fresh read.
    for attempt in 0..2 {
        let now = now_seconds();
        let observed = secret::observe(token, current.as_ref());
        let plan = plan::plan(token, &observed, now, &mut os_rng());
        match write_secret(&secrets, &ctx.secrets, &key, &plan.write).await? {
            Written::Done => return finish(token, ctx, &ns, plan).await,
            Written::Stale if attempt == 0 => {
                tracing::debug!(%ns, name = %token.name_any(), "Secret cache stale; re-reading");
                current =
                    secrets
                        .get_opt(&secret_name)
                        .await
                        .map_err(|source| Error::ReadSecret {
                            name: secret_name.clone(),
                            source,
                        })?;
            }
            Written::Stale => break,
        }
    }
    Err(Error::Contended { name: secret_name })
}

enum Written {
    Done,
    /// The precondition failed: the Secret is not as observed.
    Stale,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Carries out `write` on the Secret `key` and puts the outcome into the Secret cache.
async fn write_secret(
    api: &Api<Secret>,
    cache: &SecretCache,
    key: &ObjectRef<Secret>,
    write: &SecretWrite,
) -> Result<Written, Error> {
    let name = key.name.as_str();
    let write_err = |source| Error::WriteSecret {
        name: name.to_owned(),
        source,
    };
    let stored = |mut secret: Secret| {
        secret.metadata.managed_fields = None;
        watcher::Event::Apply(secret)
    };
    let result = match write {
        SecretWrite::Nothing => return Ok(Written::Done),
        SecretWrite::Create(secret) => {
            let params = PostParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&params, secret)
                .await
                .map(|created| cache.advance(key, None, stored(created)))
                .map_err(write_err)
        }
        SecretWrite::Update {
            resource_version,
            secret,
        } => {
            let mut secret = (**secret).clone();
            secret.metadata.resource_version = Some(resource_version.clone());
            let params = PatchParams::apply(MANAGER).force();
            api.patch(name, &params, &Patch::Apply(&secret))
                .await
                .map(|updated| cache.advance(key, Some(resource_version), stored(updated)))
                .map_err(write_err)
        }
        SecretWrite::Delete {
            uid,
            resource_version,
        } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: Some(resource_version.clone()),
                }),
                ..DeleteParams::default()
            };
            let deleted = match api.delete(name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(source) => Err(Error::DeleteSecret {
                    name: name.to_owned(),
                    source,
                }),
            };
            if deleted.is_ok() {
                let mut gone = Secret::default();
                gone.metadata.name = Some(key.name.clone());
                gone.metadata.namespace = key.namespace.clone();
                cache.advance(key, Some(resource_version), watcher::Event::Delete(gone));
            }
            deleted
        }
    };
    match result {
        Ok(()) => Ok(Written::Done),
        Err(Error::WriteSecret { source, .. } | Error::DeleteSecret { source, .. })
            if is_conflict(&source) =>
        {
            Ok(Written::Stale)
        }
        Err(e) => Err(e),
    }
}

/// After the Secret write: status (only if it changed), the Event, metrics, and when to come back.
async fn finish(token: &ApiToken, ctx: &Context, ns: &str, plan: Plan) -> Result<Action, Error> {
    let name = token.name_any();
    let observed = serde_json::to_value(token.status.clone().unwrap_or_default()).ok();
    if serde_json::to_value(&plan.status).ok() != observed {
        write_status(ctx, token, &plan.status).await?;
    }

    if let Some(transition) = &plan.event {
        match transition.reason {
            Reason::Rotated => ctx.metrics.rotated(),
            Reason::Revoked | Reason::Expired => ctx.metrics.revoked(),
            _ => {}
        }
        tracing::info!(namespace = ns, %name, reason = transition.reason.as_str(), "{}", transition.note);
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.as_str().to_owned(),
            note: Some(transition.note.clone()),
            action: transition.reason.as_str().to_owned(),
            secondary: None,
        };
        // A Recorder per Event: a shared one keeps every Event it sent for six minutes (about 2.7 KiB
        // per token, 26 MiB after issuing 10,000) only to merge repeats, and Events here are transitions.
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        if let Err(e) = recorder.publish(&event, &token.object_ref(&())).await {
            // An Event is a courtesy; the state change already happened.
            tracing::warn!(namespace = ns, %name, error = %e, "could not record Event");
        }
    }

    let seconds = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_second())
    };
    ctx.metrics.observe_token(
        ns,
        &name,
        TokenView {
            role: token.spec.role.clone(),
            phase: plan.status.phase.unwrap_or(Phase::Pending),
            next_rotation: seconds(&plan.status.next_rotation_at),
            expiry: seconds(&plan.status.expires_at),
        },
    );

    Ok(match plan.wake {
        Wake::OnChange => Action::await_change(),
        Wake::After(delay) => Action::requeue(delay),
        Wake::At(at) => {
            let wait = at.duration_since(Timestamp::now());
            Action::requeue(Duration::try_from(wait).unwrap_or(Duration::ZERO))
        }
    })
}
