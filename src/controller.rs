//! The only module that talks to the API server: watches, the reconcile loop, writes, Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
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
    secrets: Store<Secret>,
    recorder: Recorder,
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
    let (secret_store, secret_writer) = reflector::store();
    let secret_events = watcher(
        secrets,
        watcher::Config::default().labels(&secret::managed_selector()),
    )
    .default_backoff()
    .modify(|s: &mut Secret| s.metadata.managed_fields = None)
    .inspect_ok(move |event| secrets_synced.observe(Synced::SECRETS, event))
    .reflect(secret_writer)
    .touched_objects();

    let (token_store, token_writer) = reflector::store();
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
        .reflect(token_writer)
        .applied_objects();

    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: settings.instance.clone(),
    };
    let context = Arc::new(Context {
        client: client.clone(),
        secrets: secret_store,
        recorder: Recorder::new(client, reporter),
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
        let before = self.listed.fetch_or(kind, std::sync::atomic::Ordering::AcqRel);
        if before != Self::TOKENS | Self::SECRETS && before | kind == Self::TOKENS | Self::SECRETS {
            self.metrics.set_ready(true);
            tracing::info!("caches synced");
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
    if last.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == condition.reason && c.message == condition.message) {
        return;
    }
    let status = ApiTokenStatus {
        phase: last.phase.or(Some(Phase::Pending)),
        conditions: vec![condition],
        ..last
    };
    if let Err(e) = write_status(ctx, &ns, &token.name_any(), &status).await {
        tracing::debug!(namespace = %ns, name = %token.name_any(), error = %e, "could not report the error in status");
    }
}

async fn write_status(ctx: &Context, ns: &str, name: &str, status: &ApiTokenStatus) -> Result<(), Error> {
    let api: Api<ApiToken> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": ApiToken::api_version(&()),
        "kind": ApiToken::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(drop)
        .map_err(Error::WriteStatus)
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
    let cached = ctx.secrets.get(&ObjectRef::new(&secret_name).within(&ns));
    let mut current: Option<Secret> = cached.map(|s| (*s).clone());

    // First from the cache; if a conditional write finds the cache stale, once more from a fresh read.
    for attempt in 0..2 {
        let now = now_seconds();
        let observed = secret::observe(token, current.as_ref());
        let plan = plan::plan(token, &observed, now, &mut os_rng());
        match write_secret(&secrets, &secret_name, &plan.write).await? {
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

async fn write_secret(
    api: &Api<Secret>,
    name: &str,
    write: &SecretWrite,
) -> Result<Written, Error> {
    let write_err = |source| Error::WriteSecret {
        name: name.to_owned(),
        source,
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
                .map(drop)
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
                .map(drop)
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
            match api.delete(name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(source) => Err(Error::DeleteSecret {
                    name: name.to_owned(),
                    source,
                }),
            }
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
        write_status(ctx, ns, &name, &plan.status).await?;
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
        if let Err(e) = ctx.recorder.publish(&event, &token.object_ref(&())).await {
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
