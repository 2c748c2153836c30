//! The verifiers' I/O room: watches ApiTokenVerifiers (and Namespaces, for trust selectors), renders
//! each verifier's outputs from the token controller's caches, writes the output Secrets whose bytes
//! changed, and reports status.
//!
//! Every credential comes from a token's Secret as observed and sealed by the operator's key: so a
//! credential enters an output only once it is in its token's Secret, and it leaves in the wave in
//! which its Secret loses it (revocation, expiry, deletion, re-issue, retirement).

mod error;
mod lookup;
mod outputs;
mod watches;

pub use error::Error;
pub use lookup::{Accepting, Lookup, accepting, audiences_of};
pub use watches::{COALESCE, Watches, watch};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use sha2::Sha256;

use crate::api::ApiToken;
use crate::api::verifier::{ApiTokenVerifier, VerifierRef};
use crate::core::htpasswd;
use crate::core::token::plan::Rules;
use crate::core::trino;
use crate::core::verifier::publishable;
use crate::core::verifier::render::{
    self, Entry, LineHash, ObservedOutputs, Prepared, TokenCredentials, TokenRef,
};
use crate::core::verifier::status::Outcome;
use crate::core::verifier::trust::Verdict;
use crate::runtime::cache::{Kept, SecretCache, TokenCache};
use crate::runtime::clock::now_seconds;
use crate::runtime::coalesce::{Load, coalesce};
use crate::runtime::keys::key_from;
use crate::runtime::watch::watch_errors;
use lookup::verdict;
use outputs::{controlled_by, write_output, write_status};

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

struct Context {
    shared: Shared,
    /// True once the token and Secret caches have both listed: no render before, or it would leave
    /// out every credential not seen yet.
    caches_listed: tokio::sync::watch::Receiver<bool>,
    /// Password lines by hash and credential (its Bearer hash): bcrypt costs milliseconds, so a line
    /// is made once per credential and process, and stays byte-identical while the credential is
    /// unchanged. Lines of credentials no verifier holds any more are dropped now and then.
    lines: Mutex<Lines>,
    /// What each verifier's last render made of each token, by verifier uid.
    memos: Mutex<HashMap<String, Memo>>,
    /// The renders' work, which sizes the window before the next ([`COALESCE`]).
    load: Load,
}

#[derive(Default)]
struct Lines {
    by_hash: HashMap<LineHash, HashMap<Box<str>, String>>,
    /// How many lines were kept after the last clean-up: the next comes when that has doubled.
    kept: usize,
}

/// What a verifier's last render made of each token that names some verifier, with the versions it
/// was judged at: the next render decodes, judges, reads and prepares (hashes, encodes) only the
/// tokens whose token, Secret or namespace changed since, so a render costs a version comparison per
/// unchanged token, and a bulk of N tokens costs O(N) preparations, not O(N) per render.
#[derive(Default)]
struct Memo {
    /// The verifier's `metadata.generation` (its trust and outputs): another one judges afresh.
    generation: Option<i64>,
    tokens: HashMap<Arc<str>, Judged>,
    /// The output Secrets as last read or written, by name: while the cache holds the same
    /// resourceVersion they are not decoded again (up to 1 MiB each, every render).
    outputs: HashMap<String, Secret>,
}

struct Judged {
    seen: Seen,
    judgement: Judgement,
}

/// What a token's judgement depends on, besides the verifier and the seal key (both fixed per memo).
struct Seen {
    token: Option<Box<str>>,
    secret: Option<String>,
    /// Its namespace's resourceVersion, for the labels trust selectors read.
    namespace: Option<String>,
}

enum Judgement {
    /// It does not name this verifier (or does not decode).
    NotNamed,
    Rejected,
    Accepted {
        token: TokenRef,
        /// A credential is staged for the next rotation: the token controller hears of each write.
        staged: bool,
        /// Its credentials, as its Secret holds them; none while it has no valid one.
        entries: Vec<Prepared>,
    },
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
        memos: Mutex::default(),
        load: Load::default(),
    });
    let changes = coalesce(
        futures::stream::select(inputs, namespaces),
        COALESCE,
        context.load.clone(),
    );
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
    write_status(&ctx.shared.client, &verifier, &last, status).await?;
    Ok(action)
}

async fn render_outputs(
    verifier: &ApiTokenVerifier,
    ctx: &Context,
    now: Timestamp,
) -> Result<(Outcome, Action), Error> {
    let shared = &ctx.shared;
    // The render's own work (scan, judge, render), not the writes' round trips, sizes the window
    // before the next: light renders keep it at its least, so a lone change is not held longer.
    let busy = ctx.load.begin();
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
    let uid = verifier.metadata.uid.clone().unwrap_or_default();
    let generation = verifier.metadata.generation;
    let mut memo = {
        let mut memos = ctx.memos.lock().unwrap_or_else(PoisonError::into_inner);
        memos.remove(&uid).unwrap_or_default()
    };
    if memo.generation != generation {
        memo = Memo::default();
    }
    let mut judged: HashMap<Arc<str>, Judged> = HashMap::with_capacity(memo.tokens.len());
    let mut namespace_versions: HashMap<String, Option<String>> = HashMap::new();
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
        // Only tokens that name some verifier are looked at.
        if !object.names_audiences() {
            continue;
        }
        // Compared in place: an unchanged token (most of them, every render) allocates nothing new.
        if !namespace_versions.contains_key(token_ns) {
            let version = namespace_version(&shared.lookup, token_ns);
            namespace_versions.insert(token_ns.to_owned(), version);
        }
        let namespace = &namespace_versions[token_ns];
        let secret =
            (shared.secrets).resource_version(&ObjectRef::new(secret_name).within(token_ns));
        let token_version = object.resource_version();
        let unchanged = memo.tokens.remove(object.key()).filter(|last| {
            last.seen.token.as_deref() == token_version
                && last.seen.secret == secret
                && last.seen.namespace == *namespace
        });
        let now_judged = match unchanged {
            Some(last) => last,
            None => Judged {
                judgement: judge(ctx, &valid.trust, &object, now).await?,
                seen: Seen {
                    token: token_version.map(Into::into),
                    secret,
                    namespace: namespace.clone(),
                },
            },
        };
        if matches!(now_judged.judgement, Judgement::Rejected) {
            rejected += 1;
        }
        judged.insert(object.key().clone(), now_judged);
    }
    let accepted = || {
        judged.values().filter_map(|j| match &j.judgement {
            Judgement::Accepted {
                token,
                staged,
                entries,
            } => Some((token, *staged, entries)),
            _ => None,
        })
    };
    let entries: Vec<&Prepared> = accepted().flat_map(|(_, _, e)| e).collect();

    // The outputs as they are. A Secret of such a name that this verifier does not control is
    // foreign, and left untouched (one without our label is not in the cache: read it).
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), &ns);
    let mut current: BTreeMap<String, Secret> = BTreeMap::new();
    let mut foreign = Vec::new();
    // An output the cache held trimmed (seen before this verifier was known, after a restart):
    // the token controller could not see what it holds, so it hears of its staged credentials
    // below as if the output had been written.
    let mut reread = false;
    for output in &valid.outputs {
        let key = ObjectRef::new(&output.secret_name).within(&ns);
        let held = memo.outputs.remove(&output.secret_name).filter(|s| {
            s.metadata.resource_version.is_some()
                && s.metadata.resource_version == shared.secrets.resource_version(&key)
        });
        let secret = match held.map(Kept::Whole).or_else(|| shared.secrets.get(&key)) {
            Some(Kept::Trimmed(trimmed)) if controlled_by(&trimmed, &uid) => {
                // Kept trimmed when its event came before this verifier was known: read it once.
                reread = true;
                shared
                    .secrets
                    .read_again(&secrets, &key, &trimmed)
                    .await
                    .map_err(read_error(&output.secret_name))?
            }
            kept => kept.map(|k| match k {
                Kept::Whole(secret) | Kept::Trimmed(secret) => secret,
            }),
        };
        match secret {
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

    let rendered = {
        let mut lines = ctx.lines.lock().unwrap_or_else(PoisonError::into_inner);
        render::render_prepared(
            &valid.outputs,
            &entries,
            &observed,
            now,
            |prepared, hash| {
                let of_hash = lines.by_hash.entry(hash).or_default();
                if let Some(line) = of_hash.get(prepared.bearer_hash()) {
                    return line.clone();
                }
                let entry = &prepared.entry;
                let seed = salt_seed(&shared.rules, entry);
                let line = match hash {
                    LineHash::Htpasswd(hash) => {
                        htpasswd::line(entry.access_key(), entry.secret_key(), hash, &seed)
                    }
                    LineHash::Trino => {
                        trino::password_line(entry.access_key(), entry.secret_key(), &seed)
                    }
                };
                of_hash.insert(prepared.bearer_hash().into(), line.clone());
                line
            },
        )
    };
    drop(busy);
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
    let mut written: HashMap<String, Secret> = HashMap::new();
    for (output, out) in valid.outputs.iter().zip(&rendered.outputs) {
        if foreign.contains(&output.secret_name) {
            continue;
        }
        if let Some(o) = &out.overflow {
            overflow = Some(o.to_string());
        }
        let existing = current.get(&output.secret_name);
        let mut data = vec![(output.key.as_str(), out.data.as_slice())];
        if let Some((key, extra)) = &out.extra {
            data.push((key.as_str(), extra.as_slice()));
        }
        let held = existing.and_then(|s| s.data.as_ref());
        let unchanged = data.iter().all(|(key, bytes)| {
            held.and_then(|d| d.get(*key))
                .is_some_and(|d| d.0 == *bytes)
        });
        if !unchanged {
            let secret = write_output(
                &shared.client,
                &shared.secrets,
                verifier,
                existing,
                &output.secret_name,
                &data,
            )
            .await?;
            written.insert(output.secret_name.clone(), secret);
        }
    }
    if !written.is_empty() || reread {
        for (token, _, _) in accepted().filter(|(_, staged, _)| *staged) {
            let token = key_from(Some(&token.namespace), &token.name);
            let _ = shared.published.unbounded_send(token);
        }
    }
    current.extend(written);
    ctx.keep(
        uid,
        Memo {
            generation,
            tokens: judged,
            outputs: current.into_iter().collect(),
        },
    );

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

impl Context {
    /// Keeps what a render of verifier `uid` judged and saw of its outputs, for its next render; forgets deleted verifiers
    /// and the password lines of credentials no verifier holds any more.
    fn keep(&self, uid: String, memo: Memo) {
        let mut memos = self.memos.lock().unwrap_or_else(PoisonError::into_inner);
        let live: Vec<String> = (self.shared.lookup.verifiers.state().iter())
            .filter_map(|v| v.metadata.uid.clone())
            .collect();
        memos.retain(|uid, _| live.contains(uid));
        memos.insert(uid, memo);
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let count: usize = lines.by_hash.values().map(HashMap::len).sum();
        if count <= 1024 || count <= 2 * lines.kept {
            return;
        }
        let held: std::collections::HashSet<&str> = (memos.values())
            .flat_map(|m| m.tokens.values())
            .filter_map(|j| match &j.judgement {
                Judgement::Accepted { entries, .. } => Some(entries),
                _ => None,
            })
            .flatten()
            .map(Prepared::bearer_hash)
            .collect();
        for of_hash in lines.by_hash.values_mut() {
            of_hash.retain(|bearer, _| held.contains(&**bearer));
        }
        lines.kept = lines.by_hash.values().map(HashMap::len).sum();
    }
}

/// The resourceVersion of `namespace` as the trust selectors see it (`None` when they cannot).
fn namespace_version(lookup: &Lookup, namespace: &str) -> Option<String> {
    let store = lookup.namespaces.as_ref()?;
    store
        .get(&ObjectRef::new(namespace))?
        .metadata
        .resource_version
        .clone()
}

/// What the verifier trusting `trust` makes of a token: whether it names the verifier, the verdict
/// ([`Trust::decide`](crate::core::verifier::trust::Trust::decide) tells both), and the credentials
/// its Secret holds, prepared for rendering.
async fn judge(
    ctx: &Context,
    trust: &crate::core::verifier::trust::Trust,
    object: &crate::runtime::watched::Cached,
    now: Timestamp,
) -> Result<Judgement, Error> {
    let Some(token) = object.token() else {
        return Ok(Judgement::NotNamed);
    };
    match verdict(trust, &token, &ctx.shared.lookup) {
        Verdict::Accepted => {}
        Verdict::Rejected(_) => return Ok(Judgement::Rejected),
        Verdict::NotNamed => return Ok(Judgement::NotNamed),
    }
    let credentials = read_credentials(ctx, &token, now).await?;
    Ok(Judgement::Accepted {
        token: TokenRef {
            namespace: object.namespace().to_owned(),
            name: object.name().to_owned(),
        },
        staged: credentials.as_ref().is_some_and(|c| c.next.is_some()),
        entries: (credentials.iter())
            .flat_map(TokenCredentials::entries)
            .map(Prepared::new)
            .collect(),
    })
}

/// [`publishable::credentials`] of `token`, from its Secret as the cache holds it.
async fn read_credentials(
    ctx: &Context,
    token: &ApiToken,
    now: Timestamp,
) -> Result<Option<TokenCredentials>, Error> {
    let expired = token.spec.expires_at.as_ref().is_some_and(|t| t.0 <= now);
    if token.spec.revoked == Some(true) || expired {
        return Ok(None);
    }
    let Some(ns) = token.metadata.namespace.clone() else {
        return Ok(None);
    };
    let key = ObjectRef::new(token.secret_name()).within(&ns);
    let secret = match ctx.shared.secrets.get(&key) {
        Some(Kept::Whole(secret)) => Some(secret),
        // Over its budget in the cache, or seen before its token was: read it once per version.
        Some(Kept::Trimmed(trimmed)) => {
            let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
            ctx.shared
                .secrets
                .read_again(&api, &key, &trimmed)
                .await
                .map_err(read_error(token.secret_name()))?
        }
        None => None,
    };
    Ok(secret
        .and_then(|secret| publishable::credentials(token, &secret, &ctx.shared.rules.key, now)))
}

/// The error of reading Secret `name`.
fn read_error(name: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::ReadSecret {
        name: name.to_owned(),
        source,
    }
}

fn error_policy(verifier: Arc<ApiTokenVerifier>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = verifier.namespace().as_deref(), name = %verifier.name_any(), %error, "verifier reconcile failed");
    Action::requeue(Duration::from_secs(2))
}
