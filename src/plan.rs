//! What to do for one ApiToken: a pure function of (token, observed Secret, now, randomness).
//!
//! Every credential-changing write in a [`Plan`] is conditional on the Secret being exactly as observed
//! (create only if absent, update or delete only at the observed resourceVersion), so planning from a
//! stale cache can waste a request but can never mint a credential twice.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ApiToken, ApiTokenStatus, Phase};
use crate::schedule::{self, Period};
use crate::secret::{self, Held, Observed};
use crate::token::mint_credential;
use crate::validate::{self, ValidSpec};

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
}

/// A write to the token's Secret, each with a precondition.
#[derive(Debug)]
pub enum SecretWrite {
    Nothing,
    /// Create; fails if a Secret of that name appeared meanwhile.
    Create(Box<Secret>),
    /// Apply; fails unless the Secret is still at `resource_version`.
    Update {
        resource_version: String,
        secret: Box<Secret>,
    },
    /// Delete; fails unless the Secret is still the one observed.
    Delete { uid: String, resource_version: String },
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

/// Decides what to do for `token`, given its Secret as observed and the time.
pub fn plan(token: &ApiToken, observed: &Observed<'_>, now: Timestamp, rng: &mut impl rand::RngCore) -> Plan {
    let last = token.status.clone().unwrap_or_default();
    let expires_at = token.spec.expires_at.as_ref().map(|t| t.0);

    if let Some(phase) = terminal_phase(token, now) {
        return end(token, observed, &last, phase, now);
    }
    let wake_for_expiry = expires_at.map_or(Wake::OnChange, Wake::At);

    let spec = match validate::validate(&token.spec) {
        Ok(spec) => spec,
        Err(e) => {
            return failed(token, &last, Reason::InvalidSpec, e.to_string(), now, wake_for_expiry);
        }
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
            mint(token, &spec, &last, None, rotations, why, now, rng)
        }
        Observed::Owned { secret, held: Err(tampered) } => {
            let rotations = last.rotations.unwrap_or(0) + 1;
            let why = Mint::Tampered(tampered.to_string());
            mint(token, &spec, &last, Some(secret), rotations, why, now, rng)
        }
        Observed::Owned { secret, held: Ok(held) } => {
            if let Some(reason) = replayed(&last, held) {
                let why = Mint::Tampered(reason.to_owned());
                let rotations = last.rotations.unwrap_or(0).max(held.rotations) + 1;
                return mint(token, &spec, &last, Some(secret), rotations, why, now, rng);
            }
            let manual = token.rotate_request().is_some() && token.rotate_request() != held.rotate_request.as_deref();
            let scheduled = spec.period.filter(|p| schedule::rotation_due(held.issued_at, *p, now));
            if manual || scheduled.is_some() {
                let why = match scheduled {
                    Some(period) if !manual => Mint::Scheduled(period),
                    _ => Mint::Manual,
                };
                return mint(token, &spec, &last, Some(secret), held.rotations + 1, why, now, rng);
            }
            let desired = secret::desired(token, &spec, held);
            let write = if secret::in_sync(secret, &desired) {
                SecretWrite::Nothing
            } else {
                update(secret, desired)
            };
            let status = active_status(token, &spec, held, &last, now);
            let wake = wake_active(&status);
            Plan {
                write,
                status,
                event: None,
                wake,
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

fn update(secret: &Secret, desired: Secret) -> SecretWrite {
    SecretWrite::Update {
        resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
        secret: Box::new(desired),
    }
}

#[allow(clippy::too_many_arguments)]
fn mint(
    token: &ApiToken,
    spec: &ValidSpec,
    last: &ApiTokenStatus,
    existing: Option<&Secret>,
    rotations: u64,
    why: Mint,
    now: Timestamp,
    rng: &mut impl rand::RngCore,
) -> Plan {
    let held = Held {
        credential: mint_credential(&spec.format, rng),
        issued_at: now,
        rotations,
        rotate_request: token.rotate_request().map(str::to_owned),
    };
    let desired = secret::desired(token, spec, &held);
    let write = match existing {
        Some(secret) => update(secret, desired),
        None => SecretWrite::Create(Box::new(desired)),
    };
    let name = token.secret_name();
    let (warning, reason, note) = match why {
        Mint::First => (false, Reason::Issued, format!("issued a credential into Secret {name}")),
        Mint::Reissue => (
            false,
            Reason::Rotated,
            format!("expiry moved into the future; issued a new credential into Secret {name}"),
        ),
        Mint::SecretDeleted => (
            true,
            Reason::Rotated,
            format!("Secret {name} was deleted; treated as compromised and minted a new credential"),
        ),
        Mint::Tampered(detail) => (
            true,
            Reason::Rotated,
            format!("Secret {name} was altered ({detail}); treated as compromised and minted a new credential"),
        ),
        Mint::Manual => (
            false,
            Reason::Rotated,
            format!("rotated on request ({})", crate::api::ROTATE_ANNOTATION),
        ),
        Mint::Scheduled(period) => (false, Reason::Rotated, format!("scheduled rotation (every {period})")),
    };
    let status = active_status(token, spec, &held, last, now);
    let wake = wake_active(&status);
    Plan {
        write,
        status,
        event: Some(Transition { warning, reason, note }),
        wake,
    }
}

fn wake_active(status: &ApiTokenStatus) -> Wake {
    let at = |t: &Option<Time>| t.as_ref().map(|t| t.0);
    schedule::next_wakeup([at(&status.next_rotation_at), at(&status.expires_at)]).map_or(Wake::OnChange, Wake::At)
}

/// Status of a token whose credential `held` is in its Secret.
fn active_status(token: &ApiToken, spec: &ValidSpec, held: &Held, last: &ApiTokenStatus, now: Timestamp) -> ApiTokenStatus {
    let reason = if held.rotations == 0 { Reason::Issued } else { Reason::Rotated };
    let message = format!("credential {} is in Secret {}", held.fingerprint(), token.secret_name());
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
        observed_generation: token.metadata.generation,
        conditions: vec![ready(token, last, true, reason, message, now)],
    }
}

/// Revoked or Expired: the Secret goes (if ours), the token stays as the record.
fn end(token: &ApiToken, observed: &Observed<'_>, last: &ApiTokenStatus, phase: Phase, now: Timestamp) -> Plan {
    let reason = if phase == Phase::Revoked { Reason::Revoked } else { Reason::Expired };
    let name = token.secret_name();
    let (write, held) = match observed {
        Observed::Owned { secret, held } => (
            SecretWrite::Delete {
                uid: secret.metadata.uid.clone().unwrap_or_default(),
                resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
            },
            held.as_ref().ok(),
        ),
        _ => (SecretWrite::Nothing, None),
    };
    let newly = last.phase != Some(phase);
    let what = if phase == Phase::Revoked { "revoked" } else { "expired" };
    let message = format!("token {what}; its credential was removed with Secret {name}");
    let status = ApiTokenStatus {
        phase: Some(phase),
        access_key: held.map(|h| h.credential.access_key.clone()).or(last.access_key.clone()),
        fingerprint: held.map(Held::fingerprint).or(last.fingerprint.clone()),
        secret_name: Some(name.to_owned()),
        issued_at: held.map(|h| Time(h.issued_at)).or(last.issued_at.clone()),
        next_rotation_at: None,
        expires_at: token.spec.expires_at.clone(),
        revoked_at: last.revoked_at.clone().filter(|_| !newly).or(Some(Time(now))),
        rotations: held.map(|h| h.rotations).or(last.rotations),
        last_rotate_request: held.and_then(|h| h.rotate_request.clone()).or(last.last_rotate_request.clone()),
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
    }
}

/// Cannot issue: invalid spec or a foreign Secret. Nothing is written to any Secret.
fn failed(token: &ApiToken, last: &ApiTokenStatus, reason: Reason, message: String, now: Timestamp, wake: Wake) -> Plan {
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
        conditions: vec![ready(token, last, false, reason, message.clone(), now)],
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
    }
}

/// The `Ready` condition; its transition time moves only when its status flips.
pub fn ready(token: &ApiToken, last: &ApiTokenStatus, ok: bool, reason: Reason, message: String, now: Timestamp) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = last
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message,
        observed_generation: token.metadata.generation,
        last_transition_time: since,
    }
}
