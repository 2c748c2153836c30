//! What to do for one ApiToken: a pure function of (token, observed Secret, now, randomness).
//!
//! Every credential-changing write in a [`Plan`] is conditional on the Secret being exactly as observed
//! (create only if absent, update or delete only at the observed resourceVersion), so planning from a
//! stale cache can waste a request but can never mint a credential twice.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ApiToken, ApiTokenStatus, NextCredential, Phase, PreviousCredential};
use crate::core::credential::{Credential, mint_credential};
use crate::core::schedule::{self, Period};
use crate::core::seal::SealKey;
use crate::core::token::secret::{self, Held, Next, Observed, Previous, Redacted, Seal};
use crate::core::token::validate::{self, Policy, ValidSpec};

/// What the operator brings to every decision besides the token, its Secret, the time and randomness:
/// the seal key and the installation's policy.
#[derive(Clone, Debug)]
pub struct Rules {
    pub key: SealKey,
    pub policy: Policy,
}

/// What the verifiers that accept a token need before a new credential becomes current. A rotation
/// of such a token stages the new credential in the token's Secret (so verifiers may publish it),
/// and promotes it to the current keys only once every output holds it and its servers have had
/// `publish_delay` since then to see it: a client that switches the moment its Secret changes is
/// let in.
pub struct Servers<'a> {
    /// The longest `publishDelay` of the verifiers that accept the token; `None` when none does,
    /// and a rotation is then immediate.
    pub publish_delay: Option<SignedDuration>,
    /// Since when every output of every verifier that accepts the token holds `credential` (as
    /// first seen); `None` while one does not.
    pub published: &'a (dyn Fn(&Credential) -> Option<Timestamp> + Sync),
}

impl Servers<'_> {
    /// No verifier accepts the token.
    pub const NONE: Servers<'static> = Servers {
        publish_delay: None,
        published: &|_| None,
    };

    /// When the staged `next` may become current, if its servers have it: `publish_delay` after
    /// it was published, and never before its own instant.
    fn ready_at(&self, next: &Next) -> Option<Timestamp> {
        match self.publish_delay {
            None => Some(next.promote_at),
            Some(delay) => {
                (self.published)(&next.credential).map(|since| next.promote_at.max(since + delay))
            }
        }
    }
}

/// How far ahead of the publish delay a scheduled rotation is staged: the time verifiers get to
/// publish it, so that it is still promoted on time.
pub const STAGE_LEAD: SignedDuration = SignedDuration::from_secs(10);

/// How long a staged credential waits past its promotion instant for a verifier that does not
/// publish it (one that is down, or whose output is full) before it is promoted anyway: a stuck
/// server must not hold every token's rotation back for ever.
pub const PUBLISH_TIMEOUT: SignedDuration = SignedDuration::from_secs(30);

/// How long to wait before looking again at a Secret owned by someone else (such Secrets are not watched).
pub const CONFLICT_RETRY: Duration = Duration::from_secs(30);

/// Everything one reconcile should do.
#[derive(Debug)]
pub struct Plan {
    /// The one write to the Secret, if any.
    pub write: SecretWrite,
    /// The status the token should have afterwards.
    pub status: ApiTokenStatus,
    /// The Event to record, only on transitions.
    pub event: Option<Transition>,
    /// When to look at the token again without a change.
    pub wake: Wake,
    /// Whether `write` carries a newly minted credential (a refused write then wasted a mint).
    pub mints: bool,
}

/// A write to the token's Secret, each with a precondition. `Debug` shows keys, never values.
pub enum SecretWrite {
    Nothing,
    /// Create; fails if a Secret of that name appeared meanwhile.
    Create(Box<Secret>),
    /// Apply; fails unless the Secret is still at `resource_version`. `removed` names template keys
    /// we put on the Secret that the template no longer has; they are removed first.
    Update {
        resource_version: String,
        secret: Box<Secret>,
        removed: secret::Removed,
    },
    /// Delete; fails unless the Secret is still the one observed. With `wipe`, the credential keys
    /// are emptied first (under the same precondition), because something else's finalizer would keep
    /// the Secret readable while it is Terminating.
    Delete {
        uid: String,
        resource_version: String,
        wipe: bool,
    },
}

impl std::fmt::Debug for SecretWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretWrite::Nothing => f.write_str("Nothing"),
            SecretWrite::Create(secret) => {
                f.debug_tuple("Create").field(&Redacted(secret)).finish()
            }
            SecretWrite::Update {
                resource_version,
                secret,
                removed,
            } => f
                .debug_struct("Update")
                .field("resource_version", resource_version)
                .field("secret", &Redacted(secret))
                .field("removed", removed)
                .finish(),
            SecretWrite::Delete {
                uid,
                resource_version,
                wipe,
            } => f
                .debug_struct("Delete")
                .field("uid", uid)
                .field("resource_version", resource_version)
                .field("wipe", wipe)
                .finish(),
        }
    }
}

/// When to reconcile again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// At this instant (next rotation or expiry).
    At(Timestamp),
    /// After this delay (a condition outside our watches).
    After(Duration),
    /// Only when the token or its Secret changes.
    OnChange,
}

/// An Event on the ApiToken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
}

/// Reasons used for the `Ready` condition and for Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Issued,
    Rotated,
    Revoked,
    Expired,
    SecretConflict,
    InvalidSpec,
    Error,
}

impl Reason {
    /// The reason as written in conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Issued => "Issued",
            Reason::Rotated => "Rotated",
            Reason::Revoked => "Revoked",
            Reason::Expired => "Expired",
            Reason::SecretConflict => "SecretConflict",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Error => "Error",
        }
    }
}

/// Why a new credential is minted.
enum Mint {
    First,
    SecretDeleted,
    Reissue,
    Tampered(String),
    Manual,
    Scheduled(Period),
}

/// Decides what to do for `token`, given its Secret as observed (its seal checked with `rules.key`),
/// the time and randomness.
pub fn plan(
    token: &ApiToken,
    observed: &Observed<'_>,
    servers: &Servers<'_>,
    rules: &Rules,
    now: Timestamp,
    rng: &mut impl rand::RngCore,
) -> Plan {
    let key = &rules.key;
    let last = token.status.clone().unwrap_or_default();
    let expires_at = token.spec.expires_at.as_ref().map(|t| t.0);

    if let Some(phase) = terminal_phase(token, now) {
        return end(token, observed, &last, phase, now);
    }
    let wake_for_expiry = expires_at.map_or(Wake::OnChange, Wake::At);

    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let audiences = token.spec.audiences.as_deref().unwrap_or_default();
    let checked = validate::validate(&token.spec, rules.policy).and_then(|spec| {
        crate::core::verifier::trust::validate_audiences(audiences, namespace).map(|_| spec)
    });
    let spec = match checked {
        Ok(spec) => spec,
        Err(e) => {
            return failed(
                token,
                &last,
                Reason::InvalidSpec,
                e.to_string(),
                now,
                wake_for_expiry,
            );
        }
    };

    let minting = Minting {
        token,
        spec: &spec,
        last: &last,
        key,
        servers,
        now,
    };
    match observed {
        Observed::Foreign => failed(
            token,
            &last,
            Reason::SecretConflict,
            format!(
                "Secret {} exists and is not controlled by this ApiToken; it is left untouched",
                token.secret_name()
            ),
            now,
            Wake::After(CONFLICT_RETRY),
        ),
        Observed::Missing => {
            let why = match (&last.fingerprint, last.phase) {
                (None, _) => Mint::First,
                (Some(_), Some(Phase::Expired | Phase::Revoked)) => Mint::Reissue,
                (Some(_), _) => Mint::SecretDeleted,
            };
            let rotations = match why {
                Mint::First => 0,
                _ => last.rotations.unwrap_or(0) + 1,
            };
            minting.mint(None, rotations, why, rng)
        }
        Observed::Owned {
            secret,
            held: Err(tampered),
            ..
        } => {
            let rotations = last.rotations.unwrap_or(0) + 1;
            let why = Mint::Tampered(tampered.to_string());
            minting.mint(Some(secret), rotations, why, rng)
        }
        Observed::Owned {
            secret,
            held: Ok(held),
            seal,
        } => {
            let distrusted = match seal {
                Seal::Valid => replayed(&last, held),
                Seal::Unverified => unvouched(&last, held),
            };
            if let Some(reason) = distrusted {
                let why = Mint::Tampered(reason.to_owned());
                let rotations = last.rotations.unwrap_or(0).max(held.rotations) + 1;
                return minting.mint(Some(secret), rotations, why, rng);
            }
            let manual = token.rotate_request().is_some()
                && token.rotate_request() != held.rotate_request.as_deref();
            // A retire-previous request not yet handled: the previous credential leaked.
            let retire = token.retire_request().is_some()
                && token.retire_request() != held.retire_request.as_deref();
            let why = |due: bool| match spec.period {
                Some(period) if due && !manual => Mint::Scheduled(period),
                _ => Mint::Manual,
            };
            // The replaced credential stays valid for the overlap, unless retiring was asked too.
            let previous = spec.overlap.filter(|_| !retire).map(|overlap| Previous {
                credential: held.credential.clone(),
                retires_at: now + overlap.as_duration(),
            });
            let due_at = |at: Timestamp| {
                spec.period
                    .is_some_and(|p| schedule::rotation_due(held.issued_at, p, at))
            };
            if let Some(next) = &held.next {
                // A leak (rotate and retire together): the staged credential, never exposed but in
                // this Secret, replaces the current one now. No verifier accepts the token any more:
                // a pending request is carried out now, as without verifiers.
                let at_once = manual && (retire || servers.publish_delay.is_none());
                let promote = at_once
                    || servers.ready_at(next).is_some_and(|at| now >= at)
                    || now >= next.promote_at + PUBLISH_TIMEOUT;
                if promote {
                    let credential = next.credential.clone();
                    let why = why(due_at(now));
                    return minting.rotate(secret, held, credential, previous, why);
                }
                let hurried = servers
                    .publish_delay
                    .filter(|_| manual)
                    .map(|d| now + d)
                    .filter(|at| *at < next.promote_at);
                if let Some(promote_at) = hurried {
                    // A manual request while a scheduled rotation is staged: promote sooner.
                    let mut held = held.clone();
                    held.next = Some(Next {
                        credential: next.credential.clone(),
                        promote_at,
                    });
                    return minting.keep(secret, &held, retire);
                }
                return minting.keep(secret, held, retire);
            }
            match servers.publish_delay {
                Some(delay)
                    if !(manual && retire) && (manual || due_at(now + delay + STAGE_LEAD)) =>
                {
                    // Stage: the new credential goes into the Secret beside the current one; the
                    // verifiers publish it, and it is promoted at its instant.
                    let scheduled = spec
                        .period
                        .map(|p| schedule::next_rotation_at(held.issued_at, p));
                    let promote_at = match scheduled {
                        Some(at) if !manual => at.max(now + delay),
                        _ => now + delay,
                    };
                    let mut staged = held.clone();
                    staged.next = Some(Next {
                        credential: mint_credential(&spec.format, rng),
                        promote_at,
                    });
                    let mut plan = minting.keep(secret, &staged, retire);
                    plan.mints = true;
                    plan
                }
                _ if manual || due_at(now) => {
                    let credential = mint_credential(&spec.format, rng);
                    minting.rotate(secret, held, credential, previous, why(due_at(now)))
                }
                _ => minting.keep(secret, held, retire),
            }
        }
    }
}

/// Revoked (final) or Expired, if either applies at `now`.
fn terminal_phase(token: &ApiToken, now: Timestamp) -> Option<Phase> {
    if token.spec.revoked == Some(true) {
        Some(Phase::Revoked)
    } else if schedule::expired(token.spec.expires_at.as_ref().map(|t| t.0), now) {
        Some(Phase::Expired)
    } else {
        None
    }
}

/// A consistent Secret whose credential is older than, or different from, the one status recorded:
/// an old copy put back. The caller's conditional write turns a merely stale cache into a retry.
fn replayed(last: &ApiTokenStatus, held: &Held) -> Option<&'static str> {
    let recorded = last.rotations?;
    if recorded > held.rotations {
        return Some("the Secret holds an older credential than the one issued");
    }
    let fingerprint = last.fingerprint.as_deref()?;
    (recorded == held.rotations && fingerprint != held.fingerprint())
        .then_some("the Secret holds a credential that was not issued by tokenmint")
}

/// A Secret no current seal vouches for (sealed before the seal existed, or under a key since lost or
/// replaced) is believed only when every sealed fact agrees with what status recorded: status is written
/// only by the operator, so someone who can edit the Secret but not the status cannot plant a credential
/// (current, previous or staged), move `issued-at` or `retires-at`, or mark a request as handled this way.
/// A staged or previous credential is a credential that verifiers publish, so it must be exactly the one
/// status records, not merely consistent with itself.
pub fn unvouched(last: &ApiTokenStatus, held: &Held) -> Option<&'static str> {
    let current = last.fingerprint.as_deref() == Some(held.fingerprint().as_str())
        && last.issued_at.as_ref().map(|t| t.0) == Some(held.issued_at)
        && last.rotations.unwrap_or(0) == held.rotations
        && last.last_rotate_request == held.rotate_request
        && last.last_retire_request == held.retire_request;
    if !current {
        return Some(
            "it is not sealed by tokenmint's current key and does not match the token's recorded status",
        );
    }
    let previous = recorded_exactly(
        last.previous
            .as_ref()
            .map(|p| (&*p.access_key, &*p.fingerprint, p.retires_at.0)),
        held.previous
            .as_ref()
            .map(|p| (&p.credential, p.retires_at)),
    );
    if !previous {
        return Some(
            "it is not sealed by tokenmint's current key and holds a previous credential the token's status does not record",
        );
    }
    let next = recorded_exactly(
        last.next
            .as_ref()
            .map(|n| (&*n.access_key, &*n.fingerprint, n.promote_at.0)),
        held.next.as_ref().map(|n| (&n.credential, n.promote_at)),
    );
    (!next).then_some(
        "it is not sealed by tokenmint's current key and holds a staged credential the token's status does not record",
    )
}

/// Whether status recorded exactly the credential held (access key, fingerprint and its instant:
/// when a previous one retires, when a staged one is promoted), or neither has one.
fn recorded_exactly(
    recorded: Option<(&str, &str, Timestamp)>,
    held: Option<(&Credential, Timestamp)>,
) -> bool {
    match (recorded, held) {
        (None, None) => true,
        (Some((access_key, fingerprint, at)), Some((credential, held_at))) => {
            access_key == credential.access_key
                && fingerprint == credential.fingerprint()
                && at == held_at
        }
        _ => false,
    }
}

/// A rotation whose status write failed after its Secret write succeeded is reported when status
/// catches up, so its Event and counter are not lost to the retry.
fn unreported_rotation(last: &ApiTokenStatus, held: &Held) -> Option<Transition> {
    let recorded = last.rotations?;
    let behind = last.fingerprint.is_some()
        && last.fingerprint.as_deref() != Some(held.fingerprint().as_str())
        && recorded < held.rotations;
    behind.then(|| Transition {
        warning: false,
        reason: Reason::Rotated,
        note: format!(
            "credential replaced (rotation {}); recorded after a retry",
            held.rotations
        ),
    })
}

fn update(secret: &Secret, desired: Secret) -> SecretWrite {
    SecretWrite::Update {
        resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
        removed: secret::removed_template_keys(secret, &desired),
        secret: Box::new(desired),
    }
}

#[allow(clippy::too_many_arguments)]
/// What every mint of one reconcile shares.
struct Minting<'a> {
    token: &'a ApiToken,
    spec: &'a ValidSpec,
    last: &'a ApiTokenStatus,
    key: &'a SealKey,
    servers: &'a Servers<'a>,
    now: Timestamp,
}

impl Minting<'_> {
    /// A new credential (replacing the one in `existing`, if any) as rotation number `rotations`,
    /// with no previous credential: a first issue, or a re-issue of a credential taken as compromised.
    fn mint(
        &self,
        existing: Option<&Secret>,
        rotations: u64,
        why: Mint,
        rng: &mut impl rand::RngCore,
    ) -> Plan {
        // A request present when a credential is minted is handled by it (the credential is new).
        let retire_request = self.token.retire_request().map(str::to_owned);
        let credential = mint_credential(&self.spec.format, rng);
        let mut plan = self.replace(existing, rotations, credential, None, retire_request, why);
        plan.mints = true;
        plan
    }

    /// A scheduled or manual rotation of `held` to `credential` (just minted, or staged before),
    /// keeping `previous` valid for the overlap.
    fn rotate(
        &self,
        existing: &Secret,
        held: &Held,
        credential: Credential,
        previous: Option<Previous>,
        why: Mint,
    ) -> Plan {
        let retire_request = self
            .token
            .retire_request()
            .map(str::to_owned)
            .or(held.retire_request.clone());
        let rotations = held.rotations + 1;
        let staged = held.next.as_ref().map(|n| &n.credential) == Some(&credential);
        let mut plan = self.replace(
            Some(existing),
            rotations,
            credential,
            previous,
            retire_request,
            why,
        );
        plan.mints = !staged;
        plan
    }

    /// No rotation: `held` stays current. The previous credential retires at its instant, or at
    /// once when `retire` (an unhandled retire-previous request) says so; a Secret sealed under
    /// another key whose bookkeeping status vouches for is re-sealed.
    fn keep(&self, existing: &Secret, held: &Held, retire: bool) -> Plan {
        let (token, spec, last, now) = (self.token, self.spec, self.last, self.now);
        let mut held = held.clone();
        if retire {
            held.retire_request = token.retire_request().map(str::to_owned);
        }
        if retire || held.previous.as_ref().is_some_and(|p| now >= p.retires_at) {
            held.previous = None;
        }
        let desired = secret::desired(token, spec, &held, self.key);
        let write = if secret::in_sync(existing, &desired) {
            SecretWrite::Nothing
        } else {
            update(existing, desired)
        };
        let status = active_status(token, spec, &held, last, now);
        Plan {
            write,
            wake: wake_active(&status, &held, self.servers),
            status,
            event: unreported_rotation(last, &held),
            mints: false,
        }
    }

    fn replace(
        &self,
        existing: Option<&Secret>,
        rotations: u64,
        credential: Credential,
        previous: Option<Previous>,
        retire_request: Option<String>,
        why: Mint,
    ) -> Plan {
        let Minting {
            token,
            spec,
            last,
            key,
            servers,
            now,
        } = *self;
        let held = Held {
            credential,
            issued_at: now,
            rotations,
            rotate_request: token.rotate_request().map(str::to_owned),
            retire_request,
            previous,
            next: None,
        };
        let desired = secret::desired(token, spec, &held, key);
        let write = match existing {
            Some(secret) => update(secret, desired),
            None => SecretWrite::Create(Box::new(desired)),
        };
        let name = token.secret_name();
        let (warning, reason, note) = match why {
            Mint::First => (
                false,
                Reason::Issued,
                format!("issued a credential into Secret {name}"),
            ),
            Mint::Reissue => (
                false,
                Reason::Rotated,
                format!("expiry moved into the future; issued a new credential into Secret {name}"),
            ),
            Mint::SecretDeleted => (
                true,
                Reason::Rotated,
                format!(
                    "Secret {name} was deleted; treated as compromised and minted a new credential"
                ),
            ),
            Mint::Tampered(detail) => (
                true,
                Reason::Rotated,
                format!(
                    "Secret {name} was altered ({detail}); treated as compromised and minted a new credential"
                ),
            ),
            Mint::Manual => (
                false,
                Reason::Rotated,
                format!("rotated on request ({})", crate::api::ROTATE_ANNOTATION),
            ),
            Mint::Scheduled(period) => (
                false,
                Reason::Rotated,
                format!("scheduled rotation (every {period})"),
            ),
        };
        let status = active_status(token, spec, &held, last, now);
        Plan {
            write,
            wake: wake_active(&status, &held, servers),
            status,
            event: Some(Transition {
                warning,
                reason,
                note,
            }),
            mints: false,
        }
    }
}

/// The next instant something changes for an Active token: its rotation (or the staging before
/// it), a staged credential's promotion (or its publish timeout), the previous credential's
/// retirement, expiry.
fn wake_active(status: &ApiTokenStatus, held: &Held, servers: &Servers<'_>) -> Wake {
    let at = |t: &Option<Time>| t.as_ref().map(|t| t.0);
    let retires = status.previous.as_ref().map(|p| p.retires_at.0);
    let staging = match &held.next {
        // Its promotion once published; else the timeout (a publication wakes the token earlier).
        Some(next) => Some(
            servers
                .ready_at(next)
                .unwrap_or(next.promote_at + PUBLISH_TIMEOUT),
        ),
        None => servers
            .publish_delay
            .zip(at(&status.next_rotation_at))
            .map(|(delay, rotation)| rotation - delay - STAGE_LEAD),
    };
    schedule::next_wakeup([
        at(&status.next_rotation_at),
        at(&status.expires_at),
        retires,
        staging,
    ])
    .map_or(Wake::OnChange, Wake::At)
}

/// Status of a token whose credential `held` is in its Secret.
fn active_status(
    token: &ApiToken,
    spec: &ValidSpec,
    held: &Held,
    last: &ApiTokenStatus,
    now: Timestamp,
) -> ApiTokenStatus {
    let reason = if held.rotations == 0 {
        Reason::Issued
    } else {
        Reason::Rotated
    };
    let mut message = format!(
        "credential {} is in Secret {}",
        held.fingerprint(),
        token.secret_name()
    );
    if let Some(next) = &held.next {
        message.push_str(&format!(
            "; the next credential is staged for verifiers and becomes current at {} once they publish it",
            secret::rfc3339(next.promote_at)
        ));
    }
    ApiTokenStatus {
        phase: Some(Phase::Active),
        access_key: Some(held.credential.access_key.clone()),
        fingerprint: Some(held.fingerprint()),
        secret_name: Some(token.secret_name().to_owned()),
        issued_at: Some(Time(held.issued_at)),
        next_rotation_at: spec
            .period
            .map(|p| Time(schedule::next_rotation_at(held.issued_at, p))),
        expires_at: token.spec.expires_at.clone(),
        revoked_at: None,
        rotations: Some(held.rotations),
        last_rotate_request: held.rotate_request.clone(),
        previous: held.previous.as_ref().map(|p| PreviousCredential {
            access_key: p.credential.access_key.clone(),
            fingerprint: p.credential.fingerprint(),
            retires_at: Time(p.retires_at),
        }),
        next: held.next.as_ref().map(|n| NextCredential {
            access_key: n.credential.access_key.clone(),
            fingerprint: n.credential.fingerprint(),
            promote_at: Time(n.promote_at),
        }),
        last_retire_request: held.retire_request.clone(),
        // Which verifiers accept the token is the controller's to fill in: it sees the verifiers.
        audiences: last.audiences.clone(),
        observed_generation: token.metadata.generation,
        conditions: vec![ready(token, last, true, reason, message, now)],
    }
}

/// Revoked or Expired: the Secret goes (if ours), the token stays as the record.
fn end(
    token: &ApiToken,
    observed: &Observed<'_>,
    last: &ApiTokenStatus,
    phase: Phase,
    now: Timestamp,
) -> Plan {
    let reason = if phase == Phase::Revoked {
        Reason::Revoked
    } else {
        Reason::Expired
    };
    let name = token.secret_name();
    let (write, held) = match observed {
        // Already going and already empty: its deletion event brings us back.
        Observed::Owned { secret, .. }
            if secret.metadata.deletion_timestamp.is_some()
                && !secret::holds_credential(secret) =>
        {
            (SecretWrite::Nothing, None)
        }
        Observed::Owned { secret, held, .. } => (
            SecretWrite::Delete {
                uid: secret.metadata.uid.clone().unwrap_or_default(),
                resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
                wipe: secret.metadata.deletion_timestamp.is_some()
                    || secret
                        .metadata
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| !f.is_empty()),
            },
            held.as_ref().ok(),
        ),
        _ => (SecretWrite::Nothing, None),
    };
    let newly = last.phase != Some(phase);
    let what = if phase == Phase::Revoked {
        "revoked"
    } else {
        "expired"
    };
    let message = format!("token {what}; its credential was removed with Secret {name}");
    let status = ApiTokenStatus {
        phase: Some(phase),
        access_key: held
            .map(|h| h.credential.access_key.clone())
            .or(last.access_key.clone()),
        fingerprint: held.map(Held::fingerprint).or(last.fingerprint.clone()),
        secret_name: Some(name.to_owned()),
        issued_at: held.map(|h| Time(h.issued_at)).or(last.issued_at.clone()),
        next_rotation_at: None,
        expires_at: token.spec.expires_at.clone(),
        revoked_at: last
            .revoked_at
            .clone()
            .filter(|_| !newly)
            .or(Some(Time(now))),
        rotations: held.map(|h| h.rotations).or(last.rotations),
        last_rotate_request: held
            .and_then(|h| h.rotate_request.clone())
            .or(last.last_rotate_request.clone()),
        // Revocation and expiry remove the previous and the staged credential with the current one.
        previous: None,
        next: None,
        last_retire_request: held
            .and_then(|h| h.retire_request.clone())
            .or(last.last_retire_request.clone()),
        audiences: last.audiences.clone(),
        observed_generation: token.metadata.generation,
        conditions: vec![ready(token, last, false, reason, message.clone(), now)],
    };
    Plan {
        write,
        status,
        event: newly.then_some(Transition {
            warning: false,
            reason,
            note: message,
        }),
        wake: Wake::OnChange,
        mints: false,
    }
}

/// Cannot issue: invalid spec or a foreign Secret. Nothing is written to any Secret.
fn failed(
    token: &ApiToken,
    last: &ApiTokenStatus,
    reason: Reason,
    message: String,
    now: Timestamp,
    wake: Wake,
) -> Plan {
    let already = last
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.reason == reason.as_str() && c.message == message);
    let status = ApiTokenStatus {
        phase: Some(Phase::Failed),
        secret_name: Some(token.secret_name().to_owned()),
        expires_at: token.spec.expires_at.clone(),
        next_rotation_at: None,
        observed_generation: token.metadata.generation,
        conditions: vec![
            ready(token, last, false, reason, message.clone(), now),
            stalled(token, last, reason, message.clone(), now),
        ],
        ..last.clone()
    };
    Plan {
        write: SecretWrite::Nothing,
        status,
        event: (!already).then_some(Transition {
            warning: true,
            reason,
            note: message,
        }),
        wake,
        mints: false,
    }
}

/// The `Ready` condition; its transition time moves only when its status flips.
pub fn ready(
    token: &ApiToken,
    last: &ApiTokenStatus,
    ok: bool,
    reason: Reason,
    message: String,
    now: Timestamp,
) -> Condition {
    condition(
        "Ready",
        token.metadata.generation,
        last,
        ok,
        reason,
        message,
        now,
    )
}

/// `Stalled=True`: the token waits on a human (a spec to fix, a Secret name to free), so kstatus and
/// GitOps tools report it as failed instead of progressing forever. Absent otherwise.
pub fn stalled(
    token: &ApiToken,
    last: &ApiTokenStatus,
    reason: Reason,
    message: String,
    now: Timestamp,
) -> Condition {
    condition(
        "Stalled",
        token.metadata.generation,
        last,
        true,
        reason,
        message,
        now,
    )
}

/// A condition of `type_` for an object at `generation`; its transition time moves only when its
/// status flips.
pub fn condition(
    type_: &str,
    generation: Option<i64>,
    last: &ApiTokenStatus,
    ok: bool,
    reason: Reason,
    message: String,
    now: Timestamp,
) -> Condition {
    crate::core::conditions::flipped_condition(
        &last.conditions,
        type_,
        generation,
        ok,
        reason.as_str(),
        message,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiTokenSpec, Rotation};
    use crate::core::token::secret::{self, FINGERPRINT_ANNOTATION, observe};
    use jiff::SignedDuration;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::BTreeMap;

    const T0: i64 = 1_800_000_000;

    fn at(offset_secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset_secs).unwrap()
    }

    /// A fresh seed per call, as every real mint draws new randomness.
    fn rng() -> StdRng {
        static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        StdRng::seed_from_u64(SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    fn token(spec: impl FnOnce(&mut ApiTokenSpec)) -> ApiToken {
        let mut t = ApiToken::new(
            "reader",
            ApiTokenSpec {
                role: "reader".into(),
                rotation: Some(Rotation {
                    period: "1h".into(),
                    overlap: None,
                }),
                ..ApiTokenSpec::default()
            },
        );
        t.metadata.namespace = Some("team".into());
        t.metadata.uid = Some("uid-1".into());
        t.metadata.generation = Some(1);
        spec(&mut t.spec);
        t
    }

    fn annotate(mut t: ApiToken, value: &str) -> ApiToken {
        t.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(crate::api::ROTATE_ANNOTATION.into(), value.into());
        t
    }

    fn rules() -> Rules {
        Rules {
            key: SealKey::from_bytes(&[7; 32]).unwrap(),
            policy: Policy::default(),
        }
    }

    /// Runs the plan and, as the controller would, "applies" its Secret and status.
    fn issue(t: &ApiToken, now: Timestamp) -> (ApiToken, Secret) {
        let p = run(t, None, now);
        let SecretWrite::Create(secret) = p.write else {
            panic!("expected a create, got {:?}", p.write)
        };
        let mut secret = *secret;
        secret.metadata.resource_version = Some("1".into());
        secret.metadata.uid = Some("secret-uid".into());
        let mut t = t.clone();
        t.status = Some(p.status);
        (t, secret)
    }

    fn run(t: &ApiToken, secret: Option<&Secret>, now: Timestamp) -> Plan {
        run_with(t, secret, &rules(), now)
    }

    fn run_with(t: &ApiToken, secret: Option<&Secret>, rules: &Rules, now: Timestamp) -> Plan {
        plan(
            t,
            &observe(t, secret, &rules.key),
            &Servers::NONE,
            rules,
            now,
            &mut rng(),
        )
    }

    fn edit(secret: &Secret, key: &str, value: &str) -> Secret {
        let mut s = secret.clone();
        s.data
            .as_mut()
            .unwrap()
            .insert(key.into(), ByteString(value.as_bytes().to_vec()));
        s
    }

    #[test]
    fn new_token_gets_a_secret_and_active_status() {
        let t = token(|_| {});
        let p = run(&t, None, at(0));
        let SecretWrite::Create(secret) = &p.write else {
            panic!("{:?}", p.write)
        };
        let data = secret.data.as_ref().unwrap();
        for key in [
            "username",
            "password",
            "token",
            "basic",
            "authorization-bearer",
            "authorization-basic",
            "role",
            "scopes",
        ] {
            assert!(data.contains_key(key), "missing {key}");
        }
        assert_eq!(p.status.phase, Some(Phase::Active));
        assert_eq!(p.status.rotations, Some(0));
        assert_eq!(p.status.next_rotation_at, Some(Time(at(3600))));
        assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Issued));
        assert_eq!(p.wake, Wake::At(at(3600)));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
    }

    #[test]
    fn status_never_holds_the_secret_key() {
        let t = token(|_| {});
        let (t, secret) = issue(&t, at(0));
        let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
        let status = serde_json::to_string(&t.status).unwrap();
        assert!(!status.contains(&password));
    }

    #[test]
    fn steady_state_writes_nothing() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let p = run(&t, Some(&secret), at(10));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(Some(&p.status), t.status.as_ref());
        assert_eq!(p.event, None);
    }

    #[test]
    fn lost_status_is_rebuilt_from_the_secret_without_a_new_credential() {
        let (issued, secret) = issue(&token(|_| {}), at(0));
        let mut t = issued.clone();
        t.status = None;
        let p = run(&t, Some(&secret), at(10));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(
            p.status.fingerprint,
            issued.status.as_ref().unwrap().fingerprint
        );
        assert_eq!(p.status.issued_at, Some(Time(at(0))));
        assert_eq!(p.event, None);
    }

    #[test]
    fn scheduled_rotation_happens_at_the_instant_not_before() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let before = run(&t, Some(&secret), at(3599));
        assert!(matches!(before.write, SecretWrite::Nothing));
        assert_eq!(before.wake, Wake::At(at(3600)));

        let due = run(&t, Some(&secret), at(3600));
        let SecretWrite::Update {
            resource_version, ..
        } = &due.write
        else {
            panic!("{:?}", due.write)
        };
        assert_eq!(resource_version, "1");
        assert_eq!(due.status.rotations, Some(1));
        assert_eq!(due.status.issued_at, Some(Time(at(3600))));
        assert_eq!(due.status.next_rotation_at, Some(Time(at(7200))));
        assert_ne!(
            due.status.fingerprint,
            t.status.as_ref().unwrap().fingerprint
        );
        assert_eq!(
            due.event.as_ref().map(|e| (e.reason, e.warning)),
            Some((Reason::Rotated, false))
        );
    }

    #[test]
    fn overdue_rotation_after_an_outage_happens_once() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let late = at(5 * 3600 + 17);
        let p = run(&t, Some(&secret), late);
        assert_eq!(p.status.rotations, Some(1));
        assert_eq!(
            p.status.next_rotation_at,
            Some(Time(late + SignedDuration::from_hours(1)))
        );
    }

    #[test]
    fn token_without_rotation_never_rotates() {
        let (t, secret) = issue(&token(|s| s.rotation = None), at(0));
        let p = run(&t, Some(&secret), at(100 * 86_400));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(p.status.next_rotation_at, None);
        assert_eq!(p.wake, Wake::OnChange);
    }

    #[test]
    fn manual_rotation_happens_once_per_new_value() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let t = annotate(t, "2026-11-23T10:00:00Z");
        let p = run(&t, Some(&secret), at(5));
        let SecretWrite::Update {
            secret: rotated, ..
        } = &p.write
        else {
            panic!("{:?}", p.write)
        };
        assert_eq!(
            p.status.last_rotate_request.as_deref(),
            Some("2026-11-23T10:00:00Z")
        );
        assert_eq!(p.status.rotations, Some(1));

        // The same value seen again, even with status lost, does not rotate again.
        let mut again = t.clone();
        again.status = None;
        let mut rotated = (**rotated).clone();
        rotated.metadata.resource_version = Some("2".into());
        rotated.metadata.uid = Some("secret-uid".into());
        let p2 = run(&again, Some(&rotated), at(6));
        assert!(matches!(p2.write, SecretWrite::Nothing));
        assert_eq!(p2.status.rotations, Some(1));
    }

    #[test]
    fn rotate_annotation_present_at_creation_is_handled_by_the_first_issue() {
        let t = annotate(token(|_| {}), "first");
        let (t, secret) = issue(&t, at(0));
        assert_eq!(
            t.status.as_ref().unwrap().last_rotate_request.as_deref(),
            Some("first")
        );
        assert!(matches!(
            run(&t, Some(&secret), at(1)).write,
            SecretWrite::Nothing
        ));
    }

    #[test]
    fn revoked_token_loses_its_secret_and_keeps_the_record() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let mut revoked = t.clone();
        revoked.spec.revoked = Some(true);
        let p = run(&revoked, Some(&secret), at(30));
        let SecretWrite::Delete {
            uid,
            resource_version,
            wipe: false,
        } = &p.write
        else {
            panic!("{:?}", p.write)
        };
        assert_eq!(
            (uid.as_str(), resource_version.as_str()),
            ("secret-uid", "1")
        );
        assert_eq!(p.status.phase, Some(Phase::Revoked));
        assert_eq!(p.status.revoked_at, Some(Time(at(30))));
        assert_eq!(p.status.next_rotation_at, None);
        assert_eq!(p.status.access_key, t.status.as_ref().unwrap().access_key);
        assert_eq!(p.status.conditions[0].status, "False");
        assert_eq!(p.status.conditions[0].reason, "Revoked");
        assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Revoked));

        // Once carried out, nothing more happens and no second Event is recorded.
        let mut after = revoked.clone();
        after.status = Some(p.status.clone());
        let p2 = run(&after, None, at(60));
        assert!(matches!(p2.write, SecretWrite::Nothing));
        assert_eq!(p2.event, None);
        assert_eq!(p2.status.revoked_at, Some(Time(at(30))));
    }

    #[test]
    fn expiry_removes_the_secret_at_the_instant() {
        let expires = at(1800);
        let (t, secret) = issue(&token(|s| s.expires_at = Some(Time(expires))), at(0));
        assert_eq!(run(&t, Some(&secret), at(0)).wake, Wake::At(expires));
        let p = run(&t, Some(&secret), expires);
        assert!(matches!(p.write, SecretWrite::Delete { .. }));
        assert_eq!(p.status.phase, Some(Phase::Expired));
        assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Expired));
    }

    #[test]
    fn past_expiry_on_create_expires_at_once_without_minting() {
        let t = token(|s| s.expires_at = Some(Time(at(-1))));
        let p = run(&t, None, at(0));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(p.status.phase, Some(Phase::Expired));
        assert_eq!(p.status.access_key, None);
    }

    #[test]
    fn deleted_secret_is_replaced_and_counted_as_a_rotation_with_a_warning() {
        let (t, _) = issue(&token(|_| {}), at(0));
        let p = run(&t, None, at(100));
        assert!(matches!(p.write, SecretWrite::Create(_)));
        assert_eq!(p.status.rotations, Some(1));
        assert_eq!(
            p.event.as_ref().map(|e| (e.reason, e.warning)),
            Some((Reason::Rotated, true))
        );
    }

    #[test]
    fn edited_credential_key_is_treated_as_compromised() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        for key in [
            "password",
            "username",
            "token",
            "basic",
            "authorization-bearer",
            "authorization-basic",
        ] {
            let p = run(&t, Some(&edit(&secret, key, "tampered")), at(100));
            assert!(matches!(p.write, SecretWrite::Update { .. }), "{key}");
            assert_eq!(p.status.rotations, Some(1), "{key}");
            assert_ne!(
                p.status.fingerprint,
                t.status.as_ref().unwrap().fingerprint,
                "{key}"
            );
            let event = p.event.unwrap();
            assert!(
                event.warning && !event.note.contains("tampered"),
                "{key}: {}",
                event.note
            );
        }
    }

    #[test]
    fn consistent_but_foreign_credential_is_treated_as_compromised() {
        // Someone rewrote every form and the fingerprint annotation consistently.
        let (t, secret) = issue(&token(|_| {}), at(0));
        let other = issue(&token(|s| s.role = "writer".into()), at(0)).1;
        let mut swapped = other.clone();
        swapped
            .data
            .as_mut()
            .unwrap()
            .insert("role".into(), ByteString(b"reader".to_vec()));
        swapped.metadata.resource_version = secret.metadata.resource_version.clone();
        let mut t2 = t.clone();
        t2.status.as_mut().unwrap().fingerprint = Some("sha256:0000000000000000".into());
        let p = run(&t2, Some(&swapped), at(5));
        assert!(matches!(p.write, SecretWrite::Update { .. }));
        assert!(p.event.unwrap().warning);
        // But a Secret that is newer than the status (status write not seen yet) is trusted.
        let fingerprint =
            swapped.metadata.annotations.as_ref().unwrap()[FINGERPRINT_ANNOTATION].clone();
        let mut stale = t.clone();
        stale.status.as_mut().unwrap().rotations = None;
        let p = run(&stale, Some(&swapped), at(5));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(p.status.fingerprint, Some(fingerprint));
    }

    #[test]
    fn foreign_secret_is_never_touched() {
        let t = token(|_| {});
        let mut foreign = issue(&t, at(0)).1;
        foreign.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "other".into(),
            uid: "other-uid".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        let p = run(&t, Some(&foreign), at(0));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(p.status.phase, Some(Phase::Failed));
        assert_eq!(p.status.conditions[0].reason, "SecretConflict");
        assert_eq!(p.wake, Wake::After(CONFLICT_RETRY));
        assert!(p.event.is_some());
        // No second Event while the conflict persists.
        let mut t2 = t.clone();
        t2.status = Some(p.status);
        assert_eq!(run(&t2, Some(&foreign), at(30)).event, None);
        // A Secret with no owner at all is foreign too.
        let mut bare = foreign.clone();
        bare.metadata = ObjectMeta {
            name: bare.metadata.name.clone(),
            ..ObjectMeta::default()
        };
        assert!(matches!(
            run(&t, Some(&bare), at(0)).write,
            SecretWrite::Nothing
        ));
    }

    #[test]
    fn invalid_spec_changes_no_credential() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let mut bad = t.clone();
        bad.spec.rotation = Some(Rotation {
            period: "10s".into(),
            overlap: None,
        });
        let p = run(&bad, Some(&secret), at(7200));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(p.status.phase, Some(Phase::Failed));
        assert_eq!(p.status.fingerprint, t.status.as_ref().unwrap().fingerprint);
        let ready = &p.status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(ready.message.contains("spec.rotation.period"));
        // And nothing is minted for a new token with an invalid spec.
        let p = run(
            &token(|s| {
                s.rotation = Some(Rotation {
                    period: "10s".into(),
                    overlap: None,
                })
            }),
            None,
            at(0),
        );
        assert!(matches!(p.write, SecretWrite::Nothing));
    }

    #[test]
    fn role_and_scope_changes_update_the_secret_in_place() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let mut changed = t.clone();
        changed.spec.role = "writer".into();
        changed.metadata.generation = Some(2);
        let p = run(&changed, Some(&secret), at(10));
        let SecretWrite::Update {
            secret: updated, ..
        } = &p.write
        else {
            panic!("{:?}", p.write)
        };
        let data = updated.data.as_ref().unwrap();
        assert_eq!(data["role"].0, b"writer");
        assert_eq!(data["password"], secret.data.as_ref().unwrap()["password"]);
        assert_eq!(p.status.fingerprint, t.status.as_ref().unwrap().fingerprint);
        assert_eq!(p.status.observed_generation, Some(2));
        assert_eq!(p.event, None);
    }

    #[test]
    fn ready_transition_time_moves_only_when_readiness_flips() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let rotated = run(&t, Some(&secret), at(3600));
        assert_eq!(
            rotated.status.conditions[0].last_transition_time,
            Time(at(0))
        );
        let mut revoked = t.clone();
        revoked.spec.revoked = Some(true);
        let p = run(&revoked, Some(&secret), at(4000));
        assert_eq!(p.status.conditions[0].last_transition_time, Time(at(4000)));
    }

    fn annotate_secret(secret: &Secret, key: &str, value: Option<&str>) -> Secret {
        let mut s = secret.clone();
        let annotations = s.metadata.annotations.get_or_insert_default();
        match value {
            Some(v) => annotations.insert(key.into(), v.into()),
            None => annotations.remove(key),
        };
        s
    }

    fn password(secret: &Secret) -> Vec<u8> {
        secret.data.as_ref().unwrap()["password"].0.clone()
    }

    fn expect_compromised(p: &Plan, t: &ApiToken, secret: &Secret) {
        let SecretWrite::Update { secret: new, .. } = &p.write else {
            panic!("expected a new credential, got {:?}", p.write)
        };
        assert_ne!(password(new), password(secret));
        assert_eq!(
            p.status.rotations,
            Some(t.status.as_ref().unwrap().rotations.unwrap() + 1)
        );
        let event = p.event.as_ref().unwrap();
        assert!(
            event.warning && event.reason == Reason::Rotated,
            "{event:?}"
        );
        assert!(p.mints);
    }

    /// Every form rewritten consistently and the fingerprint recomputed: what someone with write access
    /// to the Secret can do without the seal key.
    fn plant(secret: &Secret, access_key: &str, secret_key: &str) -> Secret {
        let credential = crate::core::credential::Credential {
            prefix: "tm-".into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        };
        let mut s = secret.clone();
        for (k, v) in [
            ("username", access_key.to_owned()),
            ("password", secret_key.to_owned()),
            ("token", credential.bearer()),
            ("basic", credential.basic()),
            (
                "authorization-bearer",
                format!("Bearer {}", credential.bearer()),
            ),
            (
                "authorization-basic",
                format!("Basic {}", credential.basic()),
            ),
        ] {
            s = edit(&s, k, &v);
        }
        annotate_secret(&s, FINGERPRINT_ANNOTATION, Some(&credential.fingerprint()))
    }

    #[test]
    fn a_planted_credential_with_a_recomputed_fingerprint_is_compromised() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let planted = plant(&secret, "PLANTEDACCESSKEY", "PLANTEDSECRETKEY0123456789");
        // Status lost too, so only the seal stands between the plant and acceptance.
        let mut lost = t.clone();
        lost.status.as_mut().unwrap().fingerprint = None;
        for token in [&t, &lost] {
            let p = run(token, Some(&planted), at(10));
            expect_compromised(&p, &t, &secret);
        }
    }

    #[test]
    fn a_forged_issued_at_or_rotation_count_is_compromised() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let later = annotate_secret(
            &secret,
            secret::ISSUED_AT_ANNOTATION,
            Some("2099-01-01T00:00:00Z"),
        );
        let p = run(&t, Some(&later), at(10));
        expect_compromised(&p, &t, &secret);
        assert_eq!(p.status.next_rotation_at, Some(Time(at(10 + 3600))));

        let counted = annotate_secret(&secret, secret::ROTATIONS_ANNOTATION, Some("1"));
        let p = run(&t, Some(&counted), at(10));
        expect_compromised(&p, &t, &secret);
    }

    #[test]
    fn an_unsealed_secret_from_before_the_seal_is_sealed_without_a_new_credential() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let unsealed = annotate_secret(
            &annotate_secret(&secret, crate::core::seal::SEAL_ANNOTATION, None),
            crate::core::seal::SEAL_KEY_ID_ANNOTATION,
            None,
        );
        let p = run(&t, Some(&unsealed), at(10));
        let SecretWrite::Update { secret: sealed, .. } = &p.write else {
            panic!("expected a re-seal, got {:?}", p.write)
        };
        assert_eq!(password(sealed), password(&secret));
        assert_eq!(sealed.metadata.annotations, secret.metadata.annotations);
        assert_eq!(p.event, None);
        assert!(!p.mints);
        assert_eq!(p.status.fingerprint, t.status.as_ref().unwrap().fingerprint);
    }

    #[test]
    fn a_secret_under_a_lost_key_is_resealed_only_when_status_vouches_for_it() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let new_key = Rules {
            key: SealKey::from_bytes(&[9; 32]).unwrap(),
            policy: Policy::default(),
        };
        let p = run_with(&t, Some(&secret), &new_key, at(10));
        let SecretWrite::Update {
            secret: resealed, ..
        } = &p.write
        else {
            panic!("expected a re-seal, got {:?}", p.write)
        };
        assert_eq!(password(resealed), password(&secret));
        let id = &resealed.metadata.annotations.as_ref().unwrap()
            [crate::core::seal::SEAL_KEY_ID_ANNOTATION];
        assert_eq!(id, new_key.key.id());
        assert_eq!(p.event, None);

        // Without the status to vouch for it (or with a status that disagrees), it is compromised.
        let mut lost = t.clone();
        lost.status = None;
        let p = run_with(&lost, Some(&secret), &new_key, at(10));
        assert!(p.mints && p.event.as_ref().unwrap().warning);
        let forged = annotate_secret(
            &secret,
            secret::ISSUED_AT_ANNOTATION,
            Some("2099-01-01T00:00:00Z"),
        );
        let p = run_with(&t, Some(&forged), &new_key, at(10));
        assert!(p.mints && p.event.as_ref().unwrap().warning);
    }

    #[test]
    fn a_rotation_whose_status_write_failed_still_gets_its_event() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let rotated = run(&t, Some(&secret), at(3600));
        let SecretWrite::Update { secret: new, .. } = rotated.write else {
            panic!()
        };
        let mut new = *new;
        new.metadata.resource_version = Some("2".into());
        new.metadata.uid = secret.metadata.uid.clone();
        // The status still describes the first credential: the status write was lost.
        let p = run(&t, Some(&new), at(3601));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert_eq!(p.status.rotations, Some(1));
        assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Rotated));
        // Once status caught up, no second Event.
        let mut caught_up = t.clone();
        caught_up.status = Some(p.status);
        assert_eq!(run(&caught_up, Some(&new), at(3602)).event, None);
    }

    #[test]
    fn invalid_spec_and_conflict_are_stalled_and_issued_tokens_are_not() {
        let bad = token(|s| {
            s.rotation = Some(Rotation {
                period: "10s".into(),
                overlap: None,
            })
        });
        let p = run(&bad, None, at(0));
        let stalled = p.status.conditions.iter().find(|c| c.type_ == "Stalled");
        assert_eq!(
            stalled.map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("True", "InvalidSpec"))
        );
        let (t, secret) = issue(&token(|_| {}), at(0));
        let p = run(&t, Some(&secret), at(1));
        assert!(p.status.conditions.iter().all(|c| c.type_ != "Stalled"));
    }

    #[test]
    fn revocation_wipes_first_when_a_finalizer_would_keep_the_secret() {
        let (t, secret) = issue(&token(|_| {}), at(0));
        let mut held = secret.clone();
        held.metadata.finalizers = Some(vec!["example.com/backup".into()]);
        let mut revoked = t.clone();
        revoked.spec.revoked = Some(true);
        let p = run(&revoked, Some(&held), at(5));
        assert!(
            matches!(p.write, SecretWrite::Delete { wipe: true, .. }),
            "{:?}",
            p.write
        );
        // Terminating and already empty: nothing left to do but wait for it to go.
        let mut going = held.clone();
        going.metadata.deletion_timestamp = Some(Time(at(5)));
        going.data = Some(BTreeMap::from([(
            "role".into(),
            ByteString(b"reader".to_vec()),
        )]));
        assert!(matches!(
            run(&revoked, Some(&going), at(6)).write,
            SecretWrite::Nothing
        ));
    }

    #[test]
    fn a_label_removed_from_the_template_is_removed_from_the_secret() {
        let templated = token(|s| {
            s.secret_template = Some(crate::api::SecretTemplate {
                labels: Some(BTreeMap::from([("team".into(), "a".into())])),
                annotations: None,
            })
        });
        let (t, secret) = issue(&templated, at(0));
        let mut plain = t.clone();
        plain.spec.secret_template = None;
        let p = run(&plain, Some(&secret), at(5));
        let SecretWrite::Update {
            removed,
            secret: new,
            ..
        } = &p.write
        else {
            panic!("{:?}", p.write)
        };
        assert_eq!(removed.labels, vec!["team".to_owned()]);
        assert!(!new.metadata.labels.as_ref().unwrap().contains_key("team"));
        assert_eq!(password(new), password(&secret));
    }

    #[test]
    fn debug_output_shows_keys_never_values() {
        let t = token(|_| {});
        let p = run(&t, None, at(0));
        let SecretWrite::Create(secret) = &p.write else {
            panic!()
        };
        let password = String::from_utf8(password(secret)).unwrap();
        let shown = format!("{p:?} {:?}", observe(&t, Some(secret), &rules().key));
        assert!(shown.contains("password"), "{shown}");
        assert!(!shown.contains(&password), "{shown}");
    }

    fn overlapping() -> ApiToken {
        token(|s| {
            s.rotation = Some(Rotation {
                period: "1h".into(),
                overlap: Some("10m".into()),
            })
        })
    }

    /// Applies a plan's Secret write and status, as the controller would.
    fn applied(t: &ApiToken, p: Plan, version: &str) -> (ApiToken, Secret) {
        let mut secret = match p.write {
            SecretWrite::Update { secret, .. } | SecretWrite::Create(secret) => *secret,
            other => panic!("expected a Secret write, got {other:?}"),
        };
        secret.metadata.resource_version = Some(version.into());
        secret.metadata.uid = Some("secret-uid".into());
        let mut t = t.clone();
        t.status = Some(p.status);
        (t, secret)
    }

    fn retire_annotate(mut t: ApiToken, value: &str) -> ApiToken {
        t.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(crate::api::RETIRE_ANNOTATION.into(), value.into());
        t
    }

    #[test]
    fn a_rotation_with_overlap_keeps_the_previous_credential_until_it_retires() {
        let (t, secret) = issue(&overlapping(), at(0));
        let old_password = password(&secret);
        let p = run(&t, Some(&secret), at(3600));
        let previous = p.status.previous.clone().expect("status.previous");
        assert_eq!(previous.retires_at, Time(at(3600 + 600)));
        assert_eq!(
            previous.fingerprint,
            t.status.as_ref().unwrap().fingerprint.clone().unwrap()
        );
        assert_eq!(p.wake, Wake::At(at(4200)));
        let (t, rotated) = applied(&t, p, "2");
        let data = rotated.data.as_ref().unwrap();
        assert_eq!(data["previous-password"].0, old_password);
        assert_ne!(password(&rotated), old_password);
        let notes = rotated.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            notes[secret::PREVIOUS_RETIRES_AT_ANNOTATION],
            secret::rfc3339(at(4200))
        );

        // During the overlap: steady, nothing written.
        let during = run(&t, Some(&rotated), at(4199));
        assert!(
            matches!(during.write, SecretWrite::Nothing),
            "{:?}",
            during.write
        );
        assert!(during.status.previous.is_some());
        // At retiresAt: the previous keys go, the current credential stays.
        let due = run(&t, Some(&rotated), at(4200));
        let SecretWrite::Update {
            secret: retired, ..
        } = &due.write
        else {
            panic!("{:?}", due.write)
        };
        let data = retired.data.as_ref().unwrap();
        assert!(!data.contains_key("previous-password") && !data.contains_key("previous-token"));
        assert_eq!(password(retired), password(&rotated));
        assert!(
            !retired
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(secret::PREVIOUS_FINGERPRINT_ANNOTATION)
        );
        assert_eq!(due.status.previous, None);
        assert!(!due.mints);
    }

    /// Plans with verifiers whose publish delay is `delay` seconds and whose outputs have held any
    /// staged credential since `published` (seconds), if set.
    fn run_served(
        t: &ApiToken,
        secret: Option<&Secret>,
        delay: i64,
        published: Option<i64>,
        now: Timestamp,
    ) -> Plan {
        let rules = rules();
        let held = move |_: &Credential| published.map(at);
        let servers = Servers {
            publish_delay: Some(SignedDuration::from_secs(delay)),
            published: &held,
        };
        plan(
            t,
            &observe(t, secret, &rules.key),
            &servers,
            &rules,
            now,
            &mut rng(),
        )
    }

    fn staged(secret: &Secret) -> Option<Next> {
        match secret::observe(&overlapping(), Some(secret), &rules().key) {
            Observed::Owned { held: Ok(h), .. } => h.next,
            other => panic!("{other:?}"),
        }
    }

    /// The Secret without its seal: what a tenant who may edit it can always do.
    fn strip_seal(secret: &Secret) -> Secret {
        let unsealed = annotate_secret(secret, crate::core::seal::SEAL_ANNOTATION, None);
        annotate_secret(&unsealed, crate::core::seal::SEAL_KEY_ID_ANNOTATION, None)
    }

    /// `into` with the data keys and annotations of `from` whose names start with `prefix` (the
    /// `previous-` or `next-` credential), as a tenant copying them in would write them.
    fn transplant(from: &Secret, into: &Secret, prefix: &str) -> Secret {
        let mut s = into.clone();
        let data = s.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in from.data.iter().flatten() {
            if k.starts_with(prefix) {
                data.insert(k.clone(), v.clone());
            }
        }
        let annotations = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in from.metadata.annotations.iter().flatten() {
            if k.starts_with(&format!("tokenmint.dev/{prefix}")) {
                annotations.insert(k.clone(), v.clone());
            }
        }
        s
    }

    /// `secret` with a consistent staged credential that tokenmint never minted.
    fn plant_next(secret: &Secret) -> Secret {
        let credential = crate::core::credential::Credential {
            prefix: "tm-".into(),
            access_key: "PLANTED".into(),
            secret_key: "x".repeat(32),
        };
        let mut s = secret.clone();
        let data = s.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in [
            ("next-username", credential.access_key.clone()),
            ("next-password", credential.secret_key.clone()),
            ("next-token", credential.bearer()),
        ] {
            data.insert(k.into(), ByteString(v.into_bytes()));
        }
        annotate_secret(
            &s,
            secret::NEXT_FINGERPRINT_ANNOTATION,
            Some(&credential.fingerprint()),
        )
    }

    /// A re-issue after tampering carries neither a staged nor a previous credential.
    fn expect_reissued_clean(p: &Plan, t: &ApiToken, secret: &Secret) {
        expect_compromised(p, t, secret);
        let SecretWrite::Update { secret: new, .. } = &p.write else {
            unreachable!()
        };
        // Apply would keep what another field manager planted: the write removes it after.
        let left = secret::leftover_keys(secret, new);
        for (key, _) in secret.data.iter().flatten() {
            if key.starts_with("next-") || key.starts_with("previous-") {
                assert!(left.data.contains(key), "{key} stays: {left:?}");
            }
        }
        for (name, _) in secret.metadata.annotations.iter().flatten() {
            if name.starts_with("tokenmint.dev/next-")
                || name.starts_with("tokenmint.dev/previous-")
            {
                assert!(left.annotations.contains(name), "{name} stays: {left:?}");
            }
        }
        let data = new.data.as_ref().unwrap();
        assert!(
            data.keys()
                .all(|k| !k.starts_with("next-") && !k.starts_with("previous-")),
            "{:?}",
            data.keys()
        );
        assert_eq!((&p.status.previous, &p.status.next), (&None, &None));
    }

    #[test]
    fn under_a_stripped_seal_only_the_staged_and_previous_credentials_status_records_are_believed()
    {
        // A legitimately staged rotation, recorded in status.
        let (t, secret) = issue(&overlapping(), at(0));
        let stage = run_served(&t, Some(&secret), 90, None, at(3500));
        let (staged_t, with_next) = applied(&t, stage, "2");
        let recorded = staged_t.status.as_ref().unwrap().next.clone().unwrap();
        assert_eq!(recorded.promote_at, Time(at(3600)));
        // A legitimate overlap, recorded in status.
        let promote = run_served(&staged_t, Some(&with_next), 90, Some(3501), at(3600));
        let (overlap_t, promoted) = applied(&staged_t, promote, "3");
        assert!(overlap_t.status.as_ref().unwrap().previous.is_some());
        assert_eq!(overlap_t.status.as_ref().unwrap().next, None);

        // What status records survives a stripped seal: re-sealed, nothing minted.
        for (t, secret, now) in [(&staged_t, &with_next, 3550), (&overlap_t, &promoted, 3601)] {
            let p = run_served(t, Some(&strip_seal(secret)), 90, Some(3501), at(now));
            assert!(!p.mints && p.event.is_none(), "{:?}", p.event);
            assert!(
                matches!(p.write, SecretWrite::Update { .. }),
                "{:?}",
                p.write
            );
        }

        // What a tenant plants under a stripped seal is tampering: re-issued, nothing kept.
        let retire_later = annotate_secret(
            &promoted,
            secret::PREVIOUS_RETIRES_AT_ANNOTATION,
            Some("8999-01-01T00:00:00Z"),
        );
        let promote_sooner = annotate_secret(
            &with_next,
            secret::NEXT_PROMOTE_AT_ANNOTATION,
            Some(&secret::rfc3339(at(3501))),
        );
        let handled = annotate_secret(&secret, secret::RETIRE_REQUEST_ANNOTATION, Some("leak-1"));
        let planted: [(&str, &ApiToken, Secret); 6] = [
            (
                "a staged credential status does not record",
                &t,
                transplant(&with_next, &secret, "next-"),
            ),
            (
                "a previous credential status does not record",
                &t,
                transplant(&promoted, &secret, "previous-"),
            ),
            (
                "a previous credential that retires later",
                &overlap_t,
                retire_later,
            ),
            (
                "a staged credential promoted sooner",
                &staged_t,
                promote_sooner,
            ),
            ("a retire request marked handled", &t, handled),
            (
                "another staged credential in place of the recorded one",
                &staged_t,
                plant_next(&with_next),
            ),
        ];
        for (what, t, secret) in planted {
            let unsealed = strip_seal(&secret);
            let p = run_served(t, Some(&unsealed), 90, Some(3501), at(3601));
            assert!(p.mints, "{what}: {:?}", p.write);
            expect_reissued_clean(&p, t, &unsealed);
        }
    }

    #[test]
    fn a_scheduled_rotation_with_verifiers_is_staged_ahead_and_promoted_on_time() {
        let (t, secret) = issue(&overlapping(), at(0));
        // Steady until the staging instant (delay and lead ahead), which is the wake-up.
        let before = run_served(&t, Some(&secret), 90, None, at(100));
        assert!(matches!(before.write, SecretWrite::Nothing));
        assert_eq!(before.wake, Wake::At(at(3600 - 90) - STAGE_LEAD));
        // Then the next credential is minted into the Secret, the current one unchanged.
        let stage = run_served(&t, Some(&secret), 90, None, at(3500));
        assert!(stage.mints && stage.event.is_none());
        assert_eq!(stage.status.rotations, Some(0));
        assert_eq!(
            stage.status.fingerprint,
            t.status.as_ref().unwrap().fingerprint
        );
        assert_eq!(stage.wake, Wake::At(at(3600)));
        let (t, with_next) = applied(&t, stage, "2");
        assert_eq!(password(&with_next), password(&secret));
        let next = staged(&with_next).expect("a staged credential");
        assert_eq!(next.promote_at, at(3600));
        // Published at 3501: a second look writes nothing, mints nothing, and wakes at the instant.
        let again = run_served(&t, Some(&with_next), 90, Some(3501), at(3502));
        assert!(matches!(again.write, SecretWrite::Nothing) && !again.mints);
        assert_eq!(again.wake, Wake::At(at(3600)));
        // At 3600 the staged credential becomes current (no new mint), the old one previous for
        // the overlap.
        let promote = run_served(&t, Some(&with_next), 90, Some(3501), at(3600));
        assert!(!promote.mints);
        assert_eq!(promote.status.rotations, Some(1));
        assert_eq!(
            promote.event.as_ref().map(|e| e.reason),
            Some(Reason::Rotated)
        );
        assert_eq!(promote.status.issued_at, Some(Time(at(3600))));
        let (_, promoted) = applied(&t, promote, "3");
        assert_eq!(password(&promoted), next.credential.secret_key.as_bytes());
        let data = promoted.data.as_ref().unwrap();
        assert_eq!(data["previous-password"].0, password(&secret));
        assert!(!data.contains_key("next-password") && staged(&promoted).is_none());
    }

    #[test]
    fn a_staged_credential_waits_the_delay_after_publication_or_the_timeout() {
        let (t, secret) = issue(&overlapping(), at(0));
        let manual = annotate(t, "r1");
        let stage = run_served(&manual, Some(&secret), 5, None, at(10));
        assert_eq!(stage.status.last_rotate_request, None);
        let (manual, with_next) = applied(&manual, stage, "2");
        assert_eq!(staged(&with_next).unwrap().promote_at, at(15));
        // Due but not published: wait, until the timeout.
        let waiting = run_served(&manual, Some(&with_next), 5, None, at(16));
        assert!(matches!(waiting.write, SecretWrite::Nothing));
        assert_eq!(waiting.wake, Wake::At(at(15) + PUBLISH_TIMEOUT));
        // Published late, at 14: the servers get their delay from then, not from staging.
        let early = run_served(&manual, Some(&with_next), 5, Some(14), at(16));
        assert!(matches!(early.write, SecretWrite::Nothing));
        assert_eq!(early.wake, Wake::At(at(19)));
        // Published at 11, and due: promoted, and the request is handled.
        let done = run_served(&manual, Some(&with_next), 5, Some(11), at(16));
        assert_eq!(done.status.rotations, Some(1));
        assert_eq!(done.status.last_rotate_request.as_deref(), Some("r1"));
        // Never published: promoted at the timeout all the same.
        let late = run_served(&manual, Some(&with_next), 5, None, at(15) + PUBLISH_TIMEOUT);
        assert_eq!(late.status.rotations, Some(1));
    }

    #[test]
    fn a_leak_or_a_lost_verifier_promotes_a_staged_credential_at_once() {
        let (t, secret) = issue(&overlapping(), at(0));
        let (t, with_next) = applied(
            &t,
            run_served(&annotate(t.clone(), "r1"), Some(&secret), 60, None, at(10)),
            "2",
        );
        let next = staged(&with_next).unwrap();
        // Rotate and retire together: the staged credential replaces the current one now, with no
        // overlap.
        let leak = retire_annotate(annotate(t.clone(), "r2"), "leak-1");
        let p = run_served(&leak, Some(&with_next), 60, None, at(11));
        assert_eq!(p.status.rotations, Some(1));
        assert_eq!(p.status.previous, None);
        assert_eq!(
            p.status.access_key.as_deref(),
            Some(next.credential.access_key.as_str())
        );
        // No verifier accepts the token any more: its rotation is immediate, as without verifiers.
        let alone = run(&annotate(t, "r1"), Some(&with_next), at(11));
        assert_eq!(alone.status.rotations, Some(1));
        assert!(!alone.mints);
    }

    #[test]
    fn a_manual_request_hurries_a_scheduled_staging_and_tampering_drops_it() {
        let (t, secret) = issue(&overlapping(), at(0));
        let (t, with_next) = applied(
            &t,
            run_served(&t.clone(), Some(&secret), 600, None, at(2990)),
            "2",
        );
        assert_eq!(staged(&with_next).unwrap().promote_at, at(3600));
        let hurry = run_served(
            &annotate(t.clone(), "r1"),
            Some(&with_next),
            60,
            None,
            at(3100),
        );
        assert!(!hurry.mints);
        let (_, hurried) = applied(&t, hurry, "3");
        assert_eq!(staged(&hurried).unwrap().promote_at, at(3160));
        // A planted next credential breaks the seal: a re-issue with neither previous nor next.
        let planted = edit(&with_next, "next-password", "planted");
        let p = run_served(&t, Some(&planted), 600, Some(2991), at(3001));
        assert!(p.mints && p.status.previous.is_none());
        let (_, reissued) = applied(&t, p, "4");
        assert!(staged(&reissued).is_none());
    }

    #[test]
    fn retire_previous_retires_at_once_and_only_once() {
        let (t, secret) = issue(&overlapping(), at(0));
        let (t, rotated) = applied(&t, run(&t, Some(&secret), at(3600)), "2");
        let asked = retire_annotate(t.clone(), "leak-1");
        let p = run(&asked, Some(&rotated), at(3610));
        assert_eq!(p.status.previous, None);
        assert_eq!(p.status.last_retire_request.as_deref(), Some("leak-1"));
        let (after, retired) = applied(&asked, p, "3");
        assert!(
            !retired
                .data
                .as_ref()
                .unwrap()
                .contains_key("previous-password")
        );
        // The same value again (even with status lost) changes nothing.
        let mut lost = after.clone();
        lost.status = None;
        assert!(matches!(
            run(&lost, Some(&retired), at(3620)).write,
            SecretWrite::Nothing
        ));
    }

    #[test]
    fn rotate_and_retire_together_rotate_without_an_overlap() {
        let (t, secret) = issue(&overlapping(), at(0));
        let both = retire_annotate(annotate(t, "r1"), "leak-1");
        let p = run(&both, Some(&secret), at(5));
        assert_eq!(p.status.rotations, Some(1));
        assert_eq!(p.status.previous, None);
        assert_eq!(p.status.last_retire_request.as_deref(), Some("leak-1"));
        let (_, rotated) = applied(&both, p, "2");
        assert!(
            !rotated
                .data
                .as_ref()
                .unwrap()
                .contains_key("previous-password")
        );
    }

    #[test]
    fn a_reissue_after_tampering_or_deletion_has_no_overlap() {
        let (t, secret) = issue(&overlapping(), at(0));
        let tampered = run(&t, Some(&edit(&secret, "password", "x")), at(5));
        assert!(tampered.mints && tampered.status.previous.is_none());
        let deleted = run(&t, None, at(5));
        assert!(deleted.mints && deleted.status.previous.is_none());
    }

    #[test]
    fn revocation_removes_the_previous_credential_too() {
        let (t, secret) = issue(&overlapping(), at(0));
        let (mut t, rotated) = applied(&t, run(&t, Some(&secret), at(3600)), "2");
        t.spec.revoked = Some(true);
        let p = run(&t, Some(&rotated), at(3601));
        assert!(matches!(p.write, SecretWrite::Delete { .. }));
        assert_eq!(p.status.previous, None);
    }

    #[test]
    fn an_edited_previous_credential_is_tampering() {
        let (t, secret) = issue(&overlapping(), at(0));
        let (t, rotated) = applied(&t, run(&t, Some(&secret), at(3600)), "2");
        let later = annotate_secret(
            &rotated,
            secret::PREVIOUS_RETIRES_AT_ANNOTATION,
            Some("2099-01-01T00:00:00Z"),
        );
        let p = run(&t, Some(&later), at(3601));
        assert!(p.mints && p.event.unwrap().warning);
        assert_eq!(p.status.previous, None);
    }

    #[test]
    fn an_overlap_not_shorter_than_the_period_is_invalid() {
        let t = token(|s| {
            s.rotation = Some(Rotation {
                period: "1h".into(),
                overlap: Some("60m".into()),
            })
        });
        let p = run(&t, None, at(0));
        assert!(matches!(p.write, SecretWrite::Nothing));
        assert!(
            p.status.conditions[0]
                .message
                .contains("spec.rotation.overlap")
        );
    }
}
