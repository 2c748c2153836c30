//! What a plan is made of: the rules and servers it is made with, the plan itself (one
//! conditional Secret write, the status, at most one Event, when to look again) and its reasons.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;

use crate::api::ApiTokenStatus;
use crate::core::credential::Credential;
use crate::core::seal::SealKey;
use crate::core::token::secret::{self, Next, Redacted};
use crate::core::token::validate::Policy;

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
    /// A consumer of the token (`spec.consumers`) has not moved to the current credential yet: its
    /// restart is queued, rolling out or stuck. The previous credential's retirement waits, at most
    /// one more overlap.
    pub consumers_moving: bool,
    /// The coarsest usage granularity of the authz that report this token's use, if any: an
    /// inactivity policy shorter than twice it is not applied.
    pub usage_granularity: Option<Duration>,
}

impl Servers<'_> {
    /// No verifier accepts the token.
    pub const NONE: Servers<'static> = Servers {
        publish_delay: None,
        published: &|_| None,
        consumers_moving: false,
        usage_granularity: None,
    };

    /// When the staged `next` may become current, if its servers have it: `publish_delay` after
    /// it was published, and never before its own instant.
    pub(super) fn ready_at(&self, next: &Next) -> Option<Timestamp> {
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

/// How far the previous credential's retirement moves at a time while consumers are still moving;
/// never past one more overlap after its first instant.
pub const CONSUMER_HOLD_STEP: SignedDuration = SignedDuration::from_secs(60);

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

/// The earlier of `wake` and the instant `at`.
pub fn sooner(wake: Wake, at: Timestamp, now: Timestamp) -> Wake {
    match wake {
        Wake::At(t) if t <= at => wake,
        Wake::After(d) if SignedDuration::try_from(d).is_ok_and(|d| now + d <= at) => wake,
        _ => Wake::At(at),
    }
}

/// The earlier of `wake` and `after` from `now`.
pub fn earlier(wake: Wake, after: Duration, now: Timestamp) -> Wake {
    let at = SignedDuration::try_from(after).map_or(Timestamp::MAX, |d| now + d);
    match wake {
        Wake::OnChange => Wake::After(after),
        Wake::At(t) if t > at => Wake::After(after),
        Wake::After(d) if d > after => Wake::After(after),
        other => other,
    }
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
    /// The previous credential retired while a consumer had not moved (an Event only).
    RetiredBeforeConsumers,
    /// Unused past `spec.inactivity.warnAfter` (a Warning Event), or revoked for it (the `Ready`
    /// reason of a token revoked past `revokeAfter`).
    Unused,
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
            Reason::RetiredBeforeConsumers => "RetiredBeforeConsumers",
            Reason::Unused => "Unused",
        }
    }
}
