//! The verifiers' I/O room: watches ApiTokenVerifiers (and Namespaces, for trust selectors), renders
//! each verifier's outputs from the token controller's caches, writes the output Secrets whose bytes
//! changed, and reports status.
//!
//! Every credential comes from a token's Secret as observed and sealed by the operator's key: so a
//! credential enters an output only once it is in its token's Secret, and it leaves in the wave in
//! which its Secret loses it (revocation, expiry, deletion, re-issue, retirement).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use sha2::Sha256;

use crate::api::verifier::{
    ApiTokenVerifier, ApiTokenVerifierStatus, AudienceReason, AudienceStatus, HtpasswdHash,
    OUTPUT_SECRET_TYPE, VERIFIER_LABEL, VerifierRef,
};
use crate::api::{ApiToken, MANAGER};
use crate::core::credential::Credential;
use crate::core::htpasswd;
use crate::core::token::plan::Rules;
use crate::core::token::secret::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Observed, Seal};
use crate::core::verifier::render::{
    self, Entry, ObservedOutputs, Rendering, TokenCredentials, TokenRef,
};
use crate::core::verifier::status::Outcome;
use crate::core::verifier::trust::{Candidate, Trust, Verdict};
use crate::runtime::cache::{SecretCache, TokenCache};
use crate::runtime::clock::now_seconds;
use crate::runtime::keys::key_from;
use crate::runtime::watch::{WatchBackoff, not_gone, watch_errors};

/// What can go wrong in one verifier reconcile. Messages name objects, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ApiTokenVerifier has no namespace")]
    NoNamespace,
    #[error("writing output Secret {name}: {source}")]
    WriteOutput { name: String, source: kube::Error },
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
}

/// What the verifiers read of the token controller: its caches and the seal key.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub tokens: Arc<TokenCache>,
    pub secrets: Arc<SecretCache>,
    pub rules: Rules,
    pub lookup: Lookup,
    /// Tokens whose staged credential an output just took: the token controller looks at them
    /// again, to promote it.
    pub published: futures::channel::mpsc::UnboundedSender<Box<str>>,
}

/// The verifier and namespace stores, also read by the token controller for `status.audiences`.
#[derive(Clone)]
pub struct Lookup {
    pub verifiers: Store<ApiTokenVerifier>,
    /// Namespace labels for trust selectors; `None` with `--namespace` (no right to read them).
    pub namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
    /// Trusted tokens each verifier's last render left out, and why (names and reasons, never a
    /// credential): their `status.audiences` item says so.
    pub excluded: Arc<Mutex<HashMap<VerifierRef, BTreeMap<TokenRef, String>>>>,
}

impl Lookup {
    /// Why `verifier`'s last render left `token` out, if it did.
    fn exclusion(&self, verifier: &VerifierRef, token: &TokenRef) -> Option<String> {
        let excluded = self.excluded.lock().unwrap_or_else(PoisonError::into_inner);
        excluded.get(verifier)?.get(token).cloned()
    }

    /// Records what `verifier`'s render left out; returns the tokens whose exclusion began or ended.
    fn set_excluded(
        &self,
        verifier: &VerifierRef,
        now: BTreeMap<TokenRef, String>,
    ) -> Vec<TokenRef> {
        let mut excluded = self.excluded.lock().unwrap_or_else(PoisonError::into_inner);
        let before = excluded.remove(verifier).unwrap_or_default();
        let changed = before
            .iter()
            .filter(|(t, why)| now.get(*t) != Some(*why))
            .chain(now.iter().filter(|(t, why)| before.get(*t) != Some(*why)))
            .map(|(t, _)| t.clone())
            .collect::<BTreeSet<_>>();
        if !now.is_empty() {
            excluded.insert(verifier.clone(), now);
        }
        changed.into_iter().collect()
    }
}

/// How long changes are gathered before a verifier renders again: a storm of rotations is written
/// as a few writes per output, not one per token. A window opened by the first change, not a
/// debounce: a steady stream of changes (a bulk issue, a storm, a busy cluster) must not postpone
/// a revocation for as long as it lasts.
pub const COALESCE: Duration = Duration::from_millis(100);

/// The verifier and namespace watches, started before either controller runs.
pub struct Watches {
    pub lookup: Lookup,
    /// Fires on every verifier or namespace change (tokens then re-evaluate `status.audiences`).
    pub changed: futures::channel::mpsc::UnboundedReceiver<()>,
    verifiers: BoxStream<'static, watcher::Result<ApiTokenVerifier>>,
    namespaces: BoxStream<'static, ()>,
}

/// Starts watching ApiTokenVerifiers (in `namespace`, or all) and, when watching all namespaces,
/// Namespaces' labels (metadata only). With `--namespace` the operator may read no Namespace: trust
/// selectors then match nothing, and only a trust entry without one (the verifier's own namespace,
/// the one watched) trusts.
pub fn watch(client: &Client, namespace: Option<&str>) -> Watches {
    let api: Api<ApiTokenVerifier> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let (changed_tx, changed) = futures::channel::mpsc::unbounded::<()>();
    let on_verifier = changed_tx.clone();
    let verifiers = watcher(api, watcher::Config::default())
        .filter(not_gone)
        .backoff(WatchBackoff::default())
        .modify(|v: &mut ApiTokenVerifier| v.metadata.managed_fields = None)
        .reflect(writer)
        .inspect_ok(move |_| {
            let _ = on_verifier.unbounded_send(());
        })
        .applied_objects()
        .boxed();
    let (namespace_store, namespaces) = match namespace {
        Some(_) => (None, futures::stream::pending().boxed()),
        None => {
            let (ns_store, ns_writer) = reflector::store();
            let events = watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            )
            .filter(not_gone)
            .backoff(WatchBackoff::default())
            .reflect(ns_writer)
            .filter_map(move |event| {
                let _ = changed_tx.unbounded_send(());
                futures::future::ready(event.ok().map(|_| ()))
            })
            .boxed();
            (Some(ns_store), events)
        }
    };
    Watches {
        lookup: Lookup {
            verifiers: store,
            namespaces: namespace_store,
            excluded: Arc::default(),
        },
        changed,
        verifiers,
        namespaces,
    }
}

struct Context {
    shared: Shared,
    /// True once the token and Secret caches have both listed: no render before, or it would leave
    /// out every credential not seen yet.
    caches_listed: tokio::sync::watch::Receiver<bool>,
    /// htpasswd lines by (fingerprint, hash): bcrypt costs milliseconds, so a line is made once per
    /// credential and process, and stays byte-identical while the credential is unchanged.
    lines: Mutex<HashMap<(String, HtpasswdHash), String>>,
    /// What each token Secret was read to hold, with the token's and the Secret's resourceVersions
    /// it was read at: a render re-reads (decodes, checks the seal of) only what changed since, so
    /// a bulk of N tokens costs O(N) reads, not O(N) per render.
    read: Mutex<HashMap<ObjectRef<Secret>, Read>>,
}

/// One token Secret as a render last read it.
struct Read {
    token_version: Option<String>,
    secret_version: String,
    credentials: Option<TokenCredentials>,
}

/// Runs the verifier controller until `shutdown` resolves. `inputs` fires whenever a token or a
/// Secret changed.
pub async fn run(
    shared: Shared,
    caches_listed: tokio::sync::watch::Receiver<bool>,
    verifiers: BoxStream<'static, watcher::Result<ApiTokenVerifier>>,
    namespaces: BoxStream<'static, ()>,
    inputs: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let store = shared.lookup.verifiers.clone();
    let context = Arc::new(Context {
        shared,
        caches_listed,
        lines: Mutex::default(),
        read: Mutex::default(),
    });
    let changes = coalesce(futures::stream::select(inputs, namespaces), COALESCE);
    // The watch already retries with `WatchBackoff`; errors are logged here and not passed on, since
    // the Controller would back its whole trigger stream off again with the runtime's default (up to
    // 30 s, reset only after 120 s): after an API server restart a new verifier waited 7-12 s.
    let verifiers = verifiers
        .filter_map(watch_errors)
        .map(Ok::<_, watcher::Error>);
    Controller::for_stream(verifiers, store)
        .reconcile_all_on(changes)
        .with_config(ControllerConfig::default().concurrency(4))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "verifier reconcile dispatch");
            }
            futures::future::ready(())
        })
        .await;
}

/// Signals for `changes`, at most two per `window`: a change after a quiet window is signalled at
/// once (a lone revocation is rendered without waiting), and the changes that come within the window
/// after a signal make one more signal when it closes. A steady stream of changes is rendered once
/// per window, never postponed for as long as it lasts (kube-runtime's debounce restarts its wait on
/// each change, so changes less than its period apart would hold every render back until they pause).
fn coalesce(
    changes: impl futures::Stream<Item = ()> + Send + 'static,
    window: Duration,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(
        (changes.boxed(), false),
        move |(mut changes, open)| async move {
            if open {
                // A window since the last signal: gather what comes in it.
                let closes = tokio::time::sleep(window);
                tokio::pin!(closes);
                let (mut more, mut ended) = (false, false);
                loop {
                    tokio::select! {
                        () = &mut closes => break,
                        next = changes.next() => match next {
                            Some(()) => more = true,
                            None => { ended = true; break }
                        },
                    }
                }
                if more {
                    return Some(((), (changes, true)));
                }
                if ended {
                    return None;
                }
            }
            changes.next().await?;
            Some(((), (changes, true)))
        },
    )
}

impl Watches {
    /// The verifier event stream and the namespace event stream, for [`run`].
    pub fn streams(
        self,
    ) -> (
        Lookup,
        futures::channel::mpsc::UnboundedReceiver<()>,
        BoxStream<'static, watcher::Result<ApiTokenVerifier>>,
        BoxStream<'static, ()>,
    ) {
        (self.lookup, self.changed, self.verifiers, self.namespaces)
    }
}

/// Whether the verifier trusting `trust` accepts `token`.
fn verdict(trust: &Trust, token: &ApiToken, lookup: &Lookup) -> Verdict {
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let held = lookup
        .namespaces
        .as_ref()
        .and_then(|store| store.get(&ObjectRef::new(namespace)));
    let labels = held
        .as_ref()
        .map(|n| n.metadata.labels.as_ref().unwrap_or(&EMPTY_LABELS));
    trust.decide(&Candidate {
        namespace,
        role: &token.spec.role,
        audiences: token.spec.audiences.as_deref().unwrap_or_default(),
        scopes: token.spec.scopes.as_deref().unwrap_or_default(),
        namespace_labels: labels,
    })
}

static EMPTY_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// `status.audiences` of `token`: one entry per `spec.audiences` item.
pub fn audiences_of(token: &ApiToken, lookup: &Lookup) -> Vec<AudienceStatus> {
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    token
        .spec
        .audiences
        .iter()
        .flatten()
        .map(|audience| {
            let found = audience.resolve(namespace).ok().and_then(|target| {
                let key = ObjectRef::new(&target.name).within(&target.namespace);
                lookup.verifiers.get(&key)
            });
            let (reason, message) = match found.as_deref().map(crate::core::verifier::validate) {
                None => (AudienceReason::VerifierNotFound, None),
                Some(Err(_)) => (AudienceReason::VerifierInvalid, None),
                Some(Ok(valid)) => {
                    let verdict = verdict(&valid.trust, token, lookup);
                    let scopes = token.spec.scopes.as_deref().unwrap_or_default();
                    let me = TokenRef {
                        namespace: namespace.to_owned(),
                        name: token.name_any(),
                    };
                    match lookup.exclusion(valid.trust.verifier(), &me) {
                        Some(why) if verdict == Verdict::Accepted => {
                            (AudienceReason::Excluded, Some(why))
                        }
                        _ => (
                            verdict
                                .audience_reason()
                                .unwrap_or(AudienceReason::VerifierNotFound),
                            verdict.audience_message(scopes),
                        ),
                    }
                }
            };
            AudienceStatus {
                message,
                ..AudienceStatus::new(audience, reason)
            }
        })
        .collect()
}

/// The salt seed of a credential's htpasswd lines: keyed by the seal key, so the public salt says
/// nothing about the secret key, and fixed per credential, so its line never changes.
fn salt_seed(rules: &Rules, entry: &Entry) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(rules.key.bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(b"tokenmint htpasswd salt\0");
    mac.update(entry.credential.fingerprint().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

async fn reconcile(verifier: Arc<ApiTokenVerifier>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Err only when the sender is gone, that is when the operator is shutting down.
    let _ = ctx.caches_listed.clone().wait_for(|listed| *listed).await;
    let now = now_seconds();
    let (outcome, action) = render_outputs(&verifier, &ctx, now).await?;
    let last = verifier.status.clone().unwrap_or_default();
    let status = outcome.status(&last, verifier.metadata.generation, now);
    write_status(&ctx.shared, &verifier, &last, status).await?;
    Ok(action)
}

async fn render_outputs(
    verifier: &ApiTokenVerifier,
    ctx: &Context,
    now: Timestamp,
) -> Result<(Outcome, Action), Error> {
    let shared = &ctx.shared;
    let ns = verifier.namespace().ok_or(Error::NoNamespace)?;
    let valid = match crate::core::verifier::validate(verifier) {
        Ok(valid) => valid,
        Err(invalid) => {
            return Ok((
                Outcome::invalid(invalid.to_string()),
                Action::await_change(),
            ));
        }
    };

    // Tokens that name this verifier, and what its trust says of each.
    let me = VerifierRef {
        namespace: ns.clone(),
        name: verifier.name_any(),
    };
    let mut accepted: Vec<TokenCredentials> = Vec::new();
    let mut rejected = 0u32;
    for object in shared.tokens.state() {
        let Some(secret_name) = object.secret_name() else {
            continue;
        };
        let token_ns = object.namespace();
        if token_ns == ns
            && let Some(i) = valid
                .outputs
                .iter()
                .position(|o| o.secret_name == secret_name)
        {
            let message = format!(
                "spec.outputs[{i}].secretName: {secret_name} is the Secret of ApiToken {}; choose another name",
                object.name()
            );
            return Ok((Outcome::invalid(message), Action::await_change()));
        }
        // Only tokens that name some verifier are decoded.
        if !object.names_audiences() {
            continue;
        }
        let Some(token) = object.token() else {
            continue;
        };
        let named = token
            .spec
            .audiences
            .iter()
            .flatten()
            .any(|a| a.names(token_ns, &me));
        if !named {
            continue;
        }
        match verdict(&valid.trust, &token, &shared.lookup) {
            Verdict::Accepted => accepted.extend(read_credentials(ctx, &token, now)),
            Verdict::Rejected(_) => rejected += 1,
            Verdict::NotNamed => {}
        }
    }
    let entries: Vec<Entry> = accepted
        .iter()
        .flat_map(TokenCredentials::entries)
        .collect();

    // The outputs as they are. A Secret of such a name that this verifier does not control is
    // foreign, and left untouched (one without our label is not in the cache: read it).
    let uid = verifier.metadata.uid.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), &ns);
    let mut current: BTreeMap<String, Secret> = BTreeMap::new();
    let mut foreign = Vec::new();
    for output in &valid.outputs {
        let key = ObjectRef::new(&output.secret_name).within(&ns);
        match shared.secrets.get(&key) {
            Some(secret) if controlled_by(&secret, &uid) => {
                current.insert(output.secret_name.clone(), secret);
            }
            Some(_) => foreign.push(output.secret_name.clone()),
            None => {
                let unlabelled = secrets
                    .get_metadata_opt(&output.secret_name)
                    .await
                    .map_err(|source| Error::WriteOutput {
                        name: output.secret_name.clone(),
                        source,
                    })?;
                if unlabelled.is_some() {
                    foreign.push(output.secret_name.clone());
                }
            }
        }
    }
    let observed: ObservedOutputs<'_> = valid
        .outputs
        .iter()
        .filter_map(|o| {
            let data = current.get(&o.secret_name)?.data.as_ref()?.get(&o.key)?;
            Some((o.secret_name.as_str(), data.0.as_slice()))
        })
        .collect();

    let rendered = render::render(&valid.outputs, &entries, &observed, now, |entry, hash| {
        let key = (entry.credential.fingerprint(), hash);
        let mut lines = ctx.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .entry(key)
            .or_insert_with(|| {
                htpasswd::line(
                    entry.access_key(),
                    entry.secret_key(),
                    hash,
                    &salt_seed(&shared.rules, entry),
                )
            })
            .clone()
    });
    // A token that cannot be rendered is left out alone, and said so (here and in its own
    // status.audiences); the rest are written.
    let left_out: BTreeMap<TokenRef, String> = rendered
        .excluded
        .iter()
        .flat_map(|e| {
            e.tokens()
                .into_iter()
                .map(move |t| (t.clone(), format!("{}: {e}", e.reason())))
        })
        .collect();
    // Tokens, not reasons: an ambiguous pair is two tokens left out for one reason.
    let excluded = u32::try_from(left_out.len()).unwrap_or(u32::MAX);
    for token in shared.lookup.set_excluded(&me, left_out) {
        let _ = shared
            .published
            .unbounded_send(key_from(Some(&token.namespace), &token.name));
    }
    let mut overflow = None;
    let mut wrote = false;
    for (output, out) in valid.outputs.iter().zip(&rendered.outputs) {
        if foreign.contains(&output.secret_name) {
            continue;
        }
        if let Some(o) = &out.overflow {
            overflow = Some(o.to_string());
        }
        let existing = current.get(&output.secret_name);
        let unchanged = existing
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(&output.key))
            .is_some_and(|d| d.0 == out.data);
        if !unchanged {
            let output_ref = OutputRef {
                name: &output.secret_name,
                key: &output.key,
            };
            write_output(shared, verifier, existing, output_ref, &out.data).await?;
            wrote = true;
        }
    }
    if wrote {
        for staged in accepted.iter().filter(|t| t.next.is_some()) {
            let token = key_from(Some(&staged.token.namespace), &staged.token.name);
            let _ = shared.published.unbounded_send(token);
        }
    }

    let outcome = match foreign.first() {
        Some(name) => Outcome::foreign(&rendered, rejected, name),
        None => Outcome::rendered(&rendered, valid.outputs.len(), rejected, excluded, overflow),
    };
    let action = match rendered.next_change {
        Some(at) => {
            let wait = at.duration_since(Timestamp::now());
            Action::requeue(Duration::try_from(wait).unwrap_or(Duration::ZERO))
        }
        None => Action::await_change(),
    };
    Ok((outcome, action))
}

/// [`credentials_of`], from what the last render read when neither the token nor its Secret has
/// changed since.
fn read_credentials(ctx: &Context, token: &ApiToken, now: Timestamp) -> Option<TokenCredentials> {
    let expired = token.spec.expires_at.as_ref().is_some_and(|t| t.0 <= now);
    if token.spec.revoked == Some(true) || expired {
        return None;
    }
    let ns = token.metadata.namespace.clone()?;
    let key = ObjectRef::new(token.secret_name()).within(&ns);
    let secret_version = ctx.shared.secrets.resource_version(&key)?;
    let token_version = token.metadata.resource_version.clone();
    {
        let read = ctx.read.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = read.get(&key)
            && r.token_version == token_version
            && r.secret_version == secret_version
        {
            return r.credentials.clone();
        }
    }
    let credentials = credentials_of(&ctx.shared, token, now);
    let mut read = ctx.read.lock().unwrap_or_else(PoisonError::into_inner);
    // Forget Secrets that are gone, now and then (each read adds at most one entry).
    if read.len() > 64 && read.len().is_power_of_two() {
        read.retain(|k, _| ctx.shared.secrets.resource_version(k).is_some());
    }
    read.insert(
        key,
        Read {
            token_version,
            secret_version,
            credentials: credentials.clone(),
        },
    );
    credentials
}

/// The valid credentials of an Active token: read from its Secret, and only if that Secret is sealed
/// by the current key, or, under no seal or another key's, if every sealed fact equals what the
/// token's status records (a tampered Secret contributes nothing until the token controller has
/// replaced it).
fn credentials_of(shared: &Shared, token: &ApiToken, now: Timestamp) -> Option<TokenCredentials> {
    let expired = token.spec.expires_at.as_ref().is_some_and(|t| t.0 <= now);
    if token.spec.revoked == Some(true) || expired {
        return None;
    }
    let ns = token.metadata.namespace.clone()?;
    let secret = shared
        .secrets
        .get(&ObjectRef::new(token.secret_name()).within(&ns))?;
    let Observed::Owned {
        held: Ok(held),
        seal,
        ..
    } = secret::observe(token, Some(&secret), &shared.rules.key)
    else {
        return None;
    };
    // Under a lost or replaced seal key, what the token's status vouches for is believed, exactly as
    // the planner believes it and re-seals it: a key rotation must not empty every output until
    // each Secret is re-sealed. Anything status does not record stays out.
    let vouched = || {
        let status = token.status.as_ref();
        status.is_some_and(|status| crate::core::token::plan::unvouched(status, &held).is_none())
    };
    if seal == Seal::Unverified && !vouched() {
        return None;
    }
    Some(TokenCredentials {
        token: TokenRef {
            namespace: ns,
            name: token.name_any(),
        },
        role: token.spec.role.clone(),
        scopes: token
            .spec
            .scopes
            .iter()
            .flatten()
            .map(crate::api::Scope::canonical)
            .collect(),
        expires_at: token.spec.expires_at.as_ref().map(|t| t.0),
        current: held.credential,
        previous: held.previous.map(|p| (p.credential, p.retires_at)),
        next: held.next.map(|n| n.credential),
    })
}

/// What the verifiers that accept `token` need before a staged credential of it is promoted:
/// their longest publish delay, and where their outputs are in the cache.
pub struct Accepting<'a> {
    pub publish_delay: SignedDuration,
    secrets: &'a SecretCache,
    /// Each output: its rendering, its Secret and its data key.
    outputs: Vec<(Rendering, ObjectRef<Secret>, String)>,
}

impl Accepting<'_> {
    /// Whether every output holds `credential`. The outputs are read from the cache only here:
    /// they are the largest Secrets the operator holds (up to 1 MiB each, decoded under the cache's
    /// lock), and only a staged credential at its promotion instant needs them, not every reconcile.
    pub fn published(&self, credential: &Credential) -> bool {
        self.outputs.iter().all(|(rendering, secret, key)| {
            self.secrets
                .get(secret)
                .and_then(|s| s.data)
                .and_then(|mut d| d.remove(key))
                .is_some_and(|data| render::holds(*rendering, &data.0, credential))
        })
    }
}

/// The verifiers that accept `token` (it names them and they trust it), or `None` when none does.
pub fn accepting<'a>(
    token: &ApiToken,
    lookup: &Lookup,
    secrets: &'a SecretCache,
) -> Option<Accepting<'a>> {
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let mut found: Option<Accepting> = None;
    for audience in token.spec.audiences.iter().flatten() {
        let Ok(target) = audience.resolve(namespace) else {
            continue;
        };
        let key = ObjectRef::new(&target.name).within(&target.namespace);
        let Some(verifier) = lookup.verifiers.get(&key) else {
            continue;
        };
        let Ok(valid) = crate::core::verifier::validate(&verifier) else {
            continue;
        };
        if verdict(&valid.trust, token, lookup) != Verdict::Accepted {
            continue;
        }
        let accepting = found.get_or_insert(Accepting {
            publish_delay: SignedDuration::ZERO,
            secrets,
            outputs: Vec::new(),
        });
        accepting.publish_delay = accepting.publish_delay.max(valid.publish_delay);
        for output in valid.outputs {
            let secret = ObjectRef::new(&output.secret_name).within(&target.namespace);
            accepting
                .outputs
                .push((output.rendering, secret, output.key));
        }
    }
    found
}

fn controlled_by(secret: &Secret, uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// An output Secret's name and data key.
#[derive(Clone, Copy)]
struct OutputRef<'a> {
    name: &'a str,
    key: &'a str,
}

/// Creates the output Secret (POST, which fails if a Secret of that name appeared meanwhile) or
/// applies its new data pinned to the observed resourceVersion.
async fn write_output(
    shared: &Shared,
    verifier: &ApiTokenVerifier,
    existing: Option<&Secret>,
    output: OutputRef<'_>,
    data: &[u8],
) -> Result<(), Error> {
    let ns = verifier.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Secret> = Api::namespaced(shared.client.clone(), &ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(output.name.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (VERIFIER_LABEL.to_owned(), verifier.name_any()),
            ])),
            owner_references: verifier.controller_owner_ref(&()).map(|o| vec![o]),
            resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        type_: Some(OUTPUT_SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            output.key.to_owned(),
            ByteString(data.to_vec()),
        )])),
        ..Secret::default()
    };
    let err = |source| Error::WriteOutput {
        name: output.name.to_owned(),
        source,
    };
    let mut written = match existing {
        None => {
            let params = PostParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&params, &secret).await.map_err(err)?
        }
        Some(_) => api
            .patch(
                output.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(err)?,
    };
    written.metadata.managed_fields = None;
    let key = ObjectRef::new(output.name).within(&ns);
    let based_on = existing.and_then(|s| s.metadata.resource_version.clone());
    shared
        .secrets
        .advance(&key, based_on.as_deref(), watcher::Event::Apply(written));
    Ok(())
}

/// Applies `status` unless it equals `last` (a steady state writes nothing).
async fn write_status(
    shared: &Shared,
    verifier: &ApiTokenVerifier,
    last: &ApiTokenVerifierStatus,
    status: ApiTokenVerifierStatus,
) -> Result<(), Error> {
    if &status == last {
        return Ok(());
    }
    let ns = verifier.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ApiTokenVerifier> = Api::namespaced(shared.client.clone(), &ns);
    let patch = json!({
        "apiVersion": ApiTokenVerifier::api_version(&()),
        "kind": ApiTokenVerifier::kind(&()),
        "status": status,
    });
    api.patch_status(
        &verifier.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::WriteStatus)?;
    Ok(())
}

fn error_policy(verifier: Arc<ApiTokenVerifier>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = verifier.namespace().as_deref(), name = %verifier.name_any(), %error, "verifier reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_steady_stream_of_changes_still_lets_renders_through() {
        // A change every 10 ms, ten times faster than the window, for as long as the test runs:
        // a debounce would never fire; the window fires about every 100 ms.
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let feeder = tokio::spawn(async move {
            while tx.unbounded_send(()).is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let signals = coalesce(rx, COALESCE).take(3).count();
        let count = tokio::time::timeout(Duration::from_secs(20), signals).await;
        feeder.abort();
        assert_eq!(count, Ok(3), "renders held back while changes kept coming");
    }

    #[tokio::test]
    async fn changes_within_one_window_make_one_signal_at_once_and_one_when_it_closes() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for _ in 0..100 {
            tx.unbounded_send(()).unwrap();
        }
        drop(tx);
        assert_eq!(coalesce(rx, COALESCE).count().await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_signalled_at_once_and_the_next_after_a_quiet_window_too() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        // Polled all the time, as the controller polls it.
        let (seen, mut signals) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(coalesce(rx, COALESCE).for_each(move |()| {
            let _ = seen.send(tokio::time::Instant::now());
            futures::future::ready(())
        }));
        for _ in 0..2 {
            let sent = tokio::time::Instant::now();
            tx.unbounded_send(()).unwrap();
            let signalled = signals.recv().await.unwrap();
            assert_eq!(signalled - sent, Duration::ZERO, "a lone change waited");
            // Nothing more within the window: no second signal for it.
            tokio::time::sleep(COALESCE * 3).await;
            assert!(signals.try_recv().is_err(), "a signal with no change");
        }
    }
}
