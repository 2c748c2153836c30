//! The token controller: watches ApiTokens and their Secrets, and for each token gathers what the
//! caches hold (reading the API server only where a cache cannot know), plans in
//! [`crate::core::token::plan`], writes the Secret ([`crate::controller::write`]), then status and
//! the Event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::{ApiToken, ApiTokenStatus, MANAGER, Phase};
use crate::controller::consumers::{self, Consumers};
use crate::controller::error::Error;
use crate::controller::usage;
use crate::controller::verifier::{self as verifiers, Lookup};
use crate::controller::write::{Written, write_secret};
use crate::core::credential::{Credential, os_rng};
use crate::core::schedule;
use crate::core::token::plan::{self, Plan, Reason, Rules, Servers, Wake};
use crate::core::token::secret::{self, TOKEN_LABEL};
use crate::runtime::cache::{Claims, Kept, SecretCache, TokenCache};
use crate::runtime::clock::now_seconds;
use crate::runtime::dropped::Dropped;
use crate::runtime::events::Events;
use crate::runtime::keys::{key_from, meta_key};
use crate::runtime::metrics::{Metrics, TokenView};
use crate::runtime::parking::Parking;
use crate::runtime::queue::{self, Request};
use crate::runtime::sync::Synced;
use crate::runtime::wakeups::Wakeups;
use crate::runtime::watch::{WatchBackoff, not_gone, watch_errors};
use crate::runtime::watched::{Cached, TokenObject};

/// Settings for [`run`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    /// How many tokens may be reconciled at once.
    pub concurrency: u16,
    /// Name reported on Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// The seal key and the installation's policy.
    pub rules: Rules,
    /// List through a watch (`sendInitialEvents`), one object at a time, rather than in pages of
    /// 500 decoded at once: what the first list after a restart holds in memory at its peak.
    pub streaming_lists: bool,
    /// Namespaces whose usage records (written by `tokenmint authz`) are believed.
    pub usage_namespaces: Vec<String>,
    /// Tokens reconciled per second because a later use was recorded.
    pub usage_updates_per_second: u32,
    /// Limits of consumer restarts.
    pub consumers: consumers::Settings,
}

/// How both caches list and watch.
fn watch_config(settings: &Settings) -> watcher::Config {
    let config = watcher::Config::default();
    if settings.streaming_lists {
        config.streaming_lists()
    } else {
        config
    }
}

/// Consecutive failures of one token after which its error shows in status as `Ready=False,
/// reason=Error`. Earlier failures are retried quietly, so a blip does not flip GitOps health.
pub const REPORT_AFTER_FAILURES: u32 = 3;

/// Shared state of the reconciler.
pub struct Context {
    client: Client,
    secrets: Arc<SecretCache>,
    tokens: Arc<TokenCache>,
    events: Events,
    metrics: Arc<Metrics>,
    rules: Rules,
    /// Consecutive failures per token: the backoff, and when an error is reported in status.
    failures: Mutex<HashMap<Arc<str>, u32>>,
    /// Tokens whose namespace is gone or terminating, with the resourceVersion they were seen at and
    /// when to look again: until then no request, not even a relist's, reaches the API server for them.
    parked: Parking,
    /// Requests for tokens not in the cache (yet).
    dropped: Dropped,
    /// True once the Secret cache has its first full list: planning before that would mint
    /// credentials for Secrets that exist but are not listed yet.
    secrets_listed: tokio::sync::watch::Receiver<bool>,
    /// Verifiers and namespaces, for `status.audiences`.
    lookup: Lookup,
    /// When this process first saw every output of a staged credential hold it, by fingerprint: the
    /// publish delay counts from then. Lost on restart, which only delays a promotion.
    published: Mutex<HashMap<String, Timestamp>>,
    /// When each token is next due: its rotation, expiry or promotion.
    wakeups: Arc<Wakeups>,
    /// The recorded last uses of credentials.
    usage: Arc<usage::Book>,
    /// The tokens' consumers and their restarts.
    consumers: Arc<Consumers>,
}

impl Context {
    /// Since when every output has held the staged `credential`, first seen at `now` if not before.
    fn published_since(&self, credential: &Credential, now: Timestamp) -> Timestamp {
        let mut seen = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Promoted or abandoned staged credentials are forgotten within the longest wait.
        let horizon = crate::core::verifier::MAX_PUBLISH_DELAY + plan::PUBLISH_TIMEOUT * 2;
        seen.retain(|_, since| now.duration_since(*since) < horizon);
        *seen.entry(credential.fingerprint()).or_insert(now)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `object` waits for its namespace.
    fn parked(&self, object: &Cached) -> bool {
        self.parked
            .holds(object.key(), object.resource_version(), Instant::now())
    }

    fn park(&self, object: &Cached, delay: Duration) {
        let until = Instant::now() + delay;
        self.parked
            .park(object.key(), object.resource_version(), until);
    }
}

/// Watches ApiTokens and their Secrets and reconciles until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tokens, secrets): (Api<TokenObject>, Api<Secret>) = match &settings.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };

    // Ready once both caches have their first full list. (Counted from the streams: several tasks
    // awaiting `Store::wait_until_ready` at once are not all woken in kube-runtime 5.)
    // Both caches complete: before that a verifier render would leave out every credential it has
    // not seen yet, and its servers would refuse them.
    let (caches_listed, caches_listed_rx) = tokio::sync::watch::channel(false);
    let synced = Arc::new(Synced::new(metrics.clone(), caches_listed));
    let secrets_synced = synced.clone();
    // Every complete (re)list of either kind reconciles every token: requests for tokens that were
    // not yet in the re-listed cache are given up after a few retries ([`Dropped`]), and a Secret
    // deleted while the watch was down sends no event at all.
    let (relisted, relists) = futures::channel::mpsc::unbounded::<()>();
    let secrets_relisted = relisted.clone();
    let (listed, secrets_listed) = tokio::sync::watch::channel(false);
    // Any change to a token or a Secret may change what a verifier renders.
    let (inputs_changed, inputs) = futures::channel::mpsc::unbounded::<()>();
    let secret_changed = inputs_changed.clone();

    let token_cache = Arc::new(TokenCache::tokens());
    let token_writer = token_cache.clone();
    let wakeups = Arc::new(Wakeups::default());
    let forget = wakeups.clone();
    let token_events = watcher(tokens, watch_config(&settings))
        .filter(not_gone)
        .backoff(WatchBackoff::default())
        .modify(TokenObject::keep_what_is_read)
        .inspect_ok(move |event| {
            token_writer.apply(event);
            if let watcher::Event::Delete(token) = event {
                forget.clear(&meta_key(token.meta()));
            }
            let _ = inputs_changed.unbounded_send(());
            synced.observe(Synced::TOKENS, event);
            if matches!(event, watcher::Event::InitDone) {
                let _ = relisted.unbounded_send(());
            }
        })
        .applied_objects();
    let (lookup, verifiers_changed, verifier_events, namespace_events) =
        verifiers::watch(&client, settings.namespace.as_deref()).streams();

    // Both caches drop managedFields (the bulk of each object; nothing here reads them), the token
    // cache everything else no reconcile reads, the Secret cache every Secret no token names.
    let secret_cache = Arc::new(SecretCache::json(claims(&token_cache, &lookup)));
    let secret_writer = secret_cache.clone();
    let secret_events = watcher(
        secrets,
        watch_config(&settings).labels(&secret::managed_selector()),
    )
    .filter(not_gone)
    .backoff(WatchBackoff::default())
    .modify(|s: &mut Secret| s.metadata.managed_fields = None)
    .inspect_ok(move |event| {
        secret_writer.apply(event);
        let _ = secret_changed.unbounded_send(());
        secrets_synced.observe(Synced::SECRETS, event);
        if matches!(event, watcher::Event::InitDone) {
            listed.send_replace(true);
            let _ = secrets_relisted.unbounded_send(());
        }
    })
    .touched_objects();

    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: settings.instance.clone(),
    };
    let (events, event_sender) = Events::new(client.clone(), reporter);
    let (usage, usage_changed) = usage::watch(
        &client,
        &settings.usage_namespaces,
        events.clone(),
        settings.usage_updates_per_second,
    );
    let series = token_cache.clone();
    metrics.set_tokens(Box::new(move || {
        series.state().iter().map(|t| token_view(t)).collect()
    }));
    let (retry, retries) = futures::channel::mpsc::unbounded();
    let (rolled, rollouts) = futures::channel::mpsc::unbounded();
    let consumers = Arc::new(Consumers::new(
        client.clone(),
        settings.consumers.clone(),
        events.clone(),
        metrics.clone(),
        rolled,
    ));
    let (published, publications) = futures::channel::mpsc::unbounded();
    let verifier_shared = verifiers::Shared {
        client: client.clone(),
        tokens: token_cache.clone(),
        secrets: secret_cache.clone(),
        rules: settings.rules.clone(),
        lookup: lookup.clone(),
        published,
    };
    let context = Arc::new(Context {
        client: client.clone(),
        secrets: secret_cache,
        tokens: token_cache.clone(),
        events,
        metrics: metrics.clone(),
        rules: settings.rules.clone(),
        failures: Mutex::default(),
        parked: Parking::default(),
        dropped: Dropped::new(retry, metrics.clone()),
        secrets_listed,
        lookup,
        published: Mutex::default(),
        wakeups: wakeups.clone(),
        usage,
        consumers: consumers.clone(),
    });
    let shutdown = futures::FutureExt::shared(shutdown);
    let shutdown_restarts = shutdown.clone();
    let verifier_controller = verifiers::run(
        verifier_shared,
        caches_listed_rx,
        verifier_events,
        namespace_events,
        inputs,
        shutdown.clone(),
    );

    let present = token_cache.clone();
    let due = wakeups.due(move |key: &str| present.contains(key));
    let named = token_cache.clone();
    let one = move |key: Box<str>| {
        let shared = named.get(&key).map(|cached| cached.key().clone());
        Request::One(shared.unwrap_or_else(|| key.into()))
    };
    let requests = futures::stream::select_all([
        token_events
            .filter_map(watch_errors)
            .map({
                let one = one.clone();
                move |token| one(meta_key(token.meta()))
            })
            .boxed(),
        // Mapped by label rather than ownerReference, so a Secret left by a deleted namesake still
        // wakes the token that is waiting for it to go.
        secret_events
            .filter_map(watch_errors)
            .filter_map({
                let one = one.clone();
                move |secret: Secret| {
                    let name = secret.labels().get(TOKEN_LABEL);
                    let key = name.map(|name| key_from(secret.namespace().as_deref(), name));
                    futures::future::ready(key.map(&one))
                }
            })
            .boxed(),
        relists.map(|()| Request::All).boxed(),
        // A verifier or a namespace changed: which verifiers accept a token may have too.
        verifiers_changed.map(|()| Request::All).boxed(),
        retries.map(Request::One).boxed(),
        // A verifier published a staged credential: it may be promoted now.
        publications.map(one).boxed(),
        // A rotation, expiry or promotion is due.
        due.map(Request::One).boxed(),
        // A credential was used later than its token's status says.
        usage_changed.boxed(),
        // A consumer's restart moved on.
        rollouts.boxed(),
    ]);
    let all = token_cache.clone();
    let token_controller = queue::drive(
        requests,
        move || all.keys(),
        settings.concurrency,
        move |key| reconcile(key, context.clone()),
        shutdown,
    );
    // The Event sender ends once the controller (and with it every queued Event's sender) is gone,
    // after sending what is still queued; the process's shutdown deadline bounds that.
    let restarts = consumers.drive(shutdown_restarts);
    futures::join!(
        token_controller,
        verifier_controller,
        event_sender,
        restarts
    );
    // A follower (or a stopped leader) exports no per-token series.
    metrics.set_tokens(Box::new(Vec::new));
}

/// The Secrets whose data the cache keeps: a token's own Secret and the outputs a verifier
/// declares. Any other Secret that claims one of them as its controller is someone else's, kept as
/// its identity ([`SecretCache`]).
///
/// A token's Secret is the one named as the token (the default `secretName`: one Secret per token
/// whatever else anyone writes, and known as such before the token is, so the two caches list at
/// once), or the one a known token's `secretName` gives. Verifier outputs need the verifier: one
/// seen before it is kept trimmed until the verifier's first render reads it again.
fn claims(tokens: &Arc<TokenCache>, lookup: &Lookup) -> Claims {
    let tokens = tokens.clone();
    let verifiers = lookup.verifiers.clone();
    Arc::new(move |secret: &Secret, controller: &OwnerReference| {
        let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        if controller.kind == ApiToken::kind(&()) {
            controller.name == name || {
                let token = tokens.get(&key_from(Some(namespace), &controller.name));
                token.is_some_and(|t| t.secret_name() == Some(name))
            }
        } else {
            let key = ObjectRef::new(&controller.name).within(namespace);
            let verifier = verifiers.get(&key);
            verifier.is_some_and(|v| v.spec.outputs.iter().any(|o| o.secret_name == name))
        }
    })
}

/// The series one token shows on `/metrics`, from what the cache keeps without decoding it.
fn token_view(object: &Cached) -> TokenView {
    let summary = object.summary();
    TokenView {
        namespace: object.namespace().to_owned(),
        name: object.name().to_owned(),
        role: summary.role.to_string(),
        phase: summary.phase.unwrap_or(Phase::Pending),
        next_rotation: summary.next_rotation,
        expiry: summary.expiry,
        last_used: summary.last_used,
    }
}

/// Reconciles the token `key`, if it is in the cache.
async fn reconcile(key: Arc<str>, ctx: Arc<Context>) {
    let Some(object) = ctx.tokens.get(&key) else {
        ctx.dropped.retry(key);
        return;
    };
    ctx.dropped.settled(&key);
    if ctx.parked(&object) {
        return;
    }
    let mut listed = ctx.secrets_listed.clone();
    // Err only when the sender is gone, that is when the controller is shutting down.
    let _ = listed.wait_for(|listed| *listed).await;
    let started = Instant::now();
    let token = object.token();
    let result = match (&token, object.undecodable()) {
        (Some(token), _) => reconcile_token(token, &ctx).await,
        (None, Some(u)) => report_undecodable(&u.metadata, u.status.as_ref(), &u.field, &ctx).await,
        (None, None) => Err(Error::CachedCopy),
    };
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    let key = object.key();
    match &result {
        Ok(wake) => {
            ctx.failures().remove(key);
            match wake {
                Wake::OnChange => ctx.wakeups.clear(key),
                Wake::After(delay) => ctx.wakeups.set_after(key, *delay),
                Wake::At(at) => ctx.wakeups.set(key, at.as_millisecond()),
            }
        }
        Err(error) => {
            let failures = {
                let mut all = ctx.failures();
                let failures = all.entry(key.clone()).or_insert(0);
                *failures += 1;
                *failures
            };
            if error.namespace_gone() {
                // Nothing to report to: the status write would fail too. Wait, growing, and let
                // no relist wake the token before then.
                let delay = schedule::backoff(failures, rand::Rng::random(&mut os_rng()));
                ctx.metrics.error(error.kind());
                tracing::debug!(namespace = object.namespace(), name = object.name(), failures,
                    retry_in = ?delay, "the token's namespace is gone or terminating; waiting");
                ctx.park(&object, delay);
                ctx.wakeups.set_after(object.key(), delay);
                return;
            }
            if let (Some(token), true) = (&token, failures >= REPORT_AFTER_FAILURES)
                && !matches!(error, Error::Contended { .. })
            {
                report_error(token, &ctx, error).await;
            }
            retry_after(&object, error, failures, &ctx);
        }
    }
}

/// An ApiToken that does not decode: `Ready=False, reason=InvalidSpec` naming the field, and
/// `Stalled`, with the rest of its status kept. No Secret is touched.
async fn report_undecodable(
    metadata: &ObjectMeta,
    last: Option<&ApiTokenStatus>,
    field: &str,
    ctx: &Context,
) -> Result<Wake, Error> {
    let last = last.cloned().unwrap_or_default();
    let message = format!(
        "{field}: cannot be read (out of range or of the wrong type); nothing is issued or rotated until it is fixed"
    );
    let now = now_seconds();
    let condition = |type_, ok| {
        let reason = Reason::InvalidSpec;
        plan::condition(
            type_,
            metadata.generation,
            &last,
            ok,
            reason,
            message.clone(),
            now,
        )
    };
    let status = ApiTokenStatus {
        phase: Some(Phase::Failed),
        next_rotation_at: None,
        observed_generation: metadata.generation,
        conditions: vec![condition("Ready", false), condition("Stalled", true)],
        ..last.clone()
    };
    if status != last {
        tracing::warn!(namespace = metadata.namespace.as_deref(), name = metadata.name.as_deref(), %field,
            "ApiToken cannot be decoded; reported in its status");
        write_status(ctx, metadata, &status).await?;
    }
    Ok(Wake::OnChange)
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
    if let Err(e) = write_status(ctx, &token.metadata, &status).await {
        tracing::debug!(namespace = %ns, name = %token.name_any(), error = %e, "could not report the error in status");
    }
}

/// Applies `status` to the token `object` (its metadata) and puts the API server's answer into the
/// token cache.
async fn write_status(
    ctx: &Context,
    object: &ObjectMeta,
    status: &ApiTokenStatus,
) -> Result<(), Error> {
    let ns = object.namespace.clone().ok_or(Error::NoNamespace)?;
    let name = object.name.clone().unwrap_or_default();
    let api: Api<TokenObject> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": ApiToken::api_version(&()),
        "kind": ApiToken::kind(&()),
        "status": status,
    });
    let mut stored = api
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::WriteStatus)?;
    stored.keep_what_is_read();
    ctx.tokens.advance(
        &ObjectRef::new(&name).within(&ns),
        object.resource_version.as_deref(),
        watcher::Event::Apply(stored),
    );
    Ok(())
}

/// Counts and logs a failed reconcile, and wakes the token again after a backoff that grows with
/// its consecutive `failures`.
fn retry_after(object: &Cached, error: &Error, failures: u32, ctx: &Context) {
    ctx.metrics.error(error.kind());
    let delay = schedule::backoff(failures, rand::Rng::random(&mut os_rng()));
    tracing::warn!(namespace = object.namespace(), name = object.name(), %error,
        failures, retry_in = ?delay, "reconcile failed");
    ctx.wakeups.set_after(object.key(), delay);
}

fn read_error(name: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::ReadSecret {
        name: name.to_owned(),
        source,
    }
}

async fn reconcile_token(token: &ApiToken, ctx: &Context) -> Result<Wake, Error> {
    let ns = token.namespace().ok_or(Error::NoNamespace)?;
    let secret_name = token.secret_name().to_owned();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ObjectRef::new(&secret_name).within(&ns);
    let mut current: Option<Secret> = match ctx.secrets.get(&key) {
        Some(Kept::Whole(secret)) => Some(secret),
        // Not known to be this token's when its event came, or over its budget in the cache.
        Some(Kept::Trimmed(trimmed)) => {
            ctx.metrics.secret_read();
            ctx.secrets
                .read_again(&secrets, &key, &trimmed)
                .await
                .map_err(read_error(&secret_name))?
        }
        None => None,
    };
    // A Secret of another owner is not watched unless it carries our label, so the cache cannot say it
    // is gone: look before planning a create that would mint a credential only to be refused.
    let conflicted = token
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == "Ready" && c.reason == Reason::SecretConflict.as_str());
    if current.is_none() && conflicted {
        ctx.metrics.secret_read();
        current = secrets
            .get_opt(&secret_name)
            .await
            .map_err(read_error(&secret_name))?;
    }

    // First from the cache; if a conditional write finds the cache stale, once more from a fresh read.
    for attempt in 0..2 {
        let now = now_seconds();
        let observed = secret::observe(token, current.as_ref(), &ctx.rules.key);
        let accepting = verifiers::accepting(token, &ctx.lookup, &ctx.secrets);
        let published = |c: &Credential| {
            let held = accepting.as_ref().is_some_and(|a| a.published(c));
            held.then(|| ctx.published_since(c, now))
        };
        let consumers_moving = crate::core::consumer::moving(
            token.status.as_ref().map_or(&[][..], |s| &s.consumers[..]),
        ) || ctx
            .consumers
            .restarting(&key_from(Some(&ns), &token.name_any()));
        let servers = Servers {
            publish_delay: accepting.as_ref().map(|a| a.publish_delay),
            published: &published,
            consumers_moving,
            usage_granularity: usage_granularity(token, &ctx.usage),
        };
        let plan = plan::plan(token, &observed, &servers, &ctx.rules, now, &mut os_rng());
        match write_secret(&secrets, &*ctx.secrets, &key, &plan.write).await? {
            Written::Done => return finish(token, ctx, &ns, plan).await,
            Written::Stale => {
                if plan.mints {
                    ctx.metrics.wasted_mint();
                }
                if attempt > 0 {
                    break;
                }
                tracing::debug!(%ns, name = %token.name_any(), "Secret cache stale; re-reading");
                ctx.metrics.secret_read();
                current = secrets
                    .get_opt(&secret_name)
                    .await
                    .map_err(read_error(&secret_name))?;
            }
        }
    }
    Err(Error::Contended { name: secret_name })
}

/// The verifiers (`namespace/name`) that accept `token`, as `status` reports them.
fn accepting_verifiers<'a>(
    token: &'a ApiToken,
    status: &'a ApiTokenStatus,
) -> impl Iterator<Item = String> + 'a {
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let audiences = token.spec.audiences.iter().flatten();
    audiences
        .zip(&status.audiences)
        .filter(|(_, reported)| reported.accepted)
        .filter_map(move |(audience, _)| audience.resolve(namespace).ok())
        .map(|verifier| verifier.to_string())
}

/// The coarsest granularity of the authz that report `token`'s use, as their records say; looked
/// up only for a token with an inactivity policy, the one reader.
fn usage_granularity(token: &ApiToken, book: &usage::Book) -> Option<Duration> {
    token.spec.inactivity.as_ref()?;
    let status = token.status.as_ref()?;
    accepting_verifiers(token, status)
        .filter_map(|verifier| book.granularity(&verifier))
        .max()
}

/// Whether an authz that reports use serves a verifier that accepts `token`.
fn usage_tracked(token: &ApiToken, status: &ApiTokenStatus, book: &usage::Book) -> bool {
    accepting_verifiers(token, status).any(|verifier| book.tracks(&verifier))
}

/// After the Secret write: status (only if it changed), the Event, metrics, and when to come back.
async fn finish(token: &ApiToken, ctx: &Context, ns: &str, plan: Plan) -> Result<Wake, Error> {
    let name = token.name_any();
    let mut plan = plan;
    plan.status.audiences = verifiers::audiences_of(token, &ctx.lookup);
    let last = token.status.clone().unwrap_or_default();
    let key = key_from(Some(ns), &name);
    crate::core::usage::fold(&mut plan.status, &last, &ctx.usage.uses_of(&key));
    plan.status.usage_tracked = usage_tracked(token, &plan.status, &ctx.usage);
    plan.status.consumers = match (
        &token.spec.consumers,
        plan.status.phase,
        &plan.status.fingerprint,
    ) {
        (None, ..) => Vec::new(),
        (Some(_), Some(Phase::Active), Some(fingerprint)) => {
            ctx.consumers.sync(token, fingerprint).await
        }
        (Some(_), ..) => consumers::kept(token),
    };
    // A consumer out of reach (no RBAC yet) is looked at again now and then, not in a loop.
    let forbidden = crate::core::consumer::state::FORBIDDEN;
    if plan.status.consumers.iter().any(|c| c.state == forbidden) {
        plan.wake = plan::earlier(plan.wake, consumers::FORBIDDEN_RECHECK, now_seconds());
    }
    let observed = serde_json::to_value(last).ok();
    if serde_json::to_value(&plan.status).ok() != observed {
        write_status(ctx, &token.metadata, &plan.status).await?;
    }

    if let Some(transition) = &plan.event {
        match transition.reason {
            Reason::Rotated => ctx.metrics.rotated(),
            Reason::Revoked | Reason::Expired => ctx.metrics.revoked(),
            Reason::Unused if !transition.warning => ctx.metrics.revoked(),
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
        ctx.events.record(event, token.object_ref(&())).await;
    }

    Ok(plan.wake)
}
