//! An inactivity policy (`spec.inactivity`): a Warning for a token nobody uses, then revocation.
//! Pure: the last use, the time and the authz granularity come in as arguments.
//!
//! A token is idle since its last recorded use, or its creation if it was never used. It is judged
//! only while an authz that reports use checks it (`status.usageTracked`): where nobody can see a
//! use, nothing is revoked for the lack of one. Revocation comes only after a Warning recorded in an
//! earlier reconcile, and at least the warning period (`revokeAfter - warnAfter`) after it, so an
//! operator that was down (or a policy added to an old token) never revokes without notice.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::Inactivity;
use crate::core::schedule::Period;

/// The longest default warning period (`warnAfter` left out): a week before `revokeAfter`.
pub const DEFAULT_WARNING: SignedDuration = SignedDuration::from_hours(7 * 24);

/// A policy that can be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub warn_after: SignedDuration,
    pub revoke_after: Option<SignedDuration>,
    /// As written (or, for a default warning, as computed), for messages.
    warn_text: String,
    revoke_text: String,
}

fn duration(field: &str, text: &str) -> Result<SignedDuration, String> {
    let period =
        Period::parse_unbounded(text).map_err(|e| format!("spec.inactivity.{field}: {e}"))?;
    Ok(SignedDuration::from_secs(
        i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
    ))
}

fn show(d: SignedDuration) -> String {
    Period::from_secs(d.as_secs().unsigned_abs()).to_string()
}

/// The policy `spec` says, or why it cannot be applied, naming the field. `granularity`: the
/// coarsest usage granularity of the authz that report this token's use, if known; a policy
/// shorter than twice it could find a token in continuous use idle.
pub fn policy(spec: &Inactivity, granularity: Option<Duration>) -> Result<Policy, String> {
    let revoke_after = spec
        .revoke_after
        .as_deref()
        .map(|text| duration("revokeAfter", text))
        .transpose()?;
    let warn_after = match (&spec.warn_after, revoke_after) {
        (Some(text), _) => duration("warnAfter", text)?,
        (None, Some(revoke)) => revoke - DEFAULT_WARNING.min(revoke / 2),
        (None, None) => return Err("spec.inactivity: set warnAfter, revokeAfter or both".into()),
    };
    let warn_text = spec.warn_after.clone().unwrap_or_else(|| show(warn_after));
    let revoke_text = spec.revoke_after.clone().unwrap_or_default();
    if let Some(revoke) = revoke_after
        && warn_after >= revoke
    {
        return Err(format!(
            "spec.inactivity.warnAfter ({warn_text}) must be shorter than revokeAfter ({revoke_text}): the Warning comes first"
        ));
    }
    if let Some(granularity) = granularity {
        let floor = SignedDuration::try_from(granularity * 2).unwrap_or(SignedDuration::MAX);
        let fields = [
            ("warnAfter", Some(warn_after), &warn_text),
            ("revokeAfter", revoke_after, &revoke_text),
        ];
        for (field, value, text) in fields {
            if value.is_some_and(|v| v < floor) {
                return Err(format!(
                    "spec.inactivity.{field} ({text}) is shorter than twice the usage granularity ({}) of the authz that checks this token: a token in continuous use could look unused",
                    show(SignedDuration::try_from(granularity).unwrap_or_default())
                ));
            }
        }
    }
    Ok(Policy {
        warn_after,
        revoke_after,
        warn_text,
        revoke_text,
    })
}

/// The `Unused` condition's status and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Idle past `warnAfter`.
    Unused,
    /// Used (or created) more recently.
    Used,
    /// The policy cannot be applied as written.
    InvalidPolicy,
    /// No authz that reports use checks the token.
    UsageUnknown,
}

impl Status {
    /// `True`, `False` or `Unknown`.
    pub fn condition_status(self) -> &'static str {
        match self {
            Status::Unused => "True",
            Status::Used => "False",
            Status::InvalidPolicy | Status::UsageUnknown => "Unknown",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Unused => "Unused",
            Status::Used => "Used",
            Status::InvalidPolicy => "InvalidPolicy",
            Status::UsageUnknown => "UsageUnknown",
        }
    }
}

/// What the policy says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub status: Status,
    pub message: String,
    /// The Warning to record: the token just became unused.
    pub warn: bool,
    /// Revoke the token now (a Warning came earlier).
    pub revoke: bool,
    /// When to look again.
    pub wake: Option<Timestamp>,
}

/// The token as it is used.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Whether an authz that reports use checks the token.
    pub tracked: bool,
    pub last_used: Option<Timestamp>,
    pub created: Timestamp,
    /// Since when `Unused` has been `True`, as the last status says.
    pub unused_since: Option<Timestamp>,
}

/// Judges a token by its policy at `now`.
pub fn judge(policy: Result<Policy, String>, usage: Usage, now: Timestamp) -> Judgement {
    let quiet = |status: Status, message: String| Judgement {
        status,
        message,
        warn: false,
        revoke: false,
        wake: None,
    };
    let policy = match policy {
        Ok(policy) => policy,
        Err(why) => {
            return quiet(
                Status::InvalidPolicy,
                format!("{why}; the policy is not applied"),
            );
        }
    };
    if !usage.tracked {
        return quiet(
            Status::UsageUnknown,
            "no tokenmint authz that reports use checks this token (status.usageTracked), so its use cannot be known; the policy waits".into(),
        );
    }
    let (since, what) = match usage.last_used {
        Some(used) if used > usage.created => (used, format!("last used {used}")),
        _ => (
            usage.created,
            format!("never used since its creation at {}", usage.created),
        ),
    };
    let warn_at = since + policy.warn_after;
    if now < warn_at {
        return Judgement {
            status: Status::Used,
            message: format!("{what}; unused from {warn_at} on"),
            warn: false,
            revoke: false,
            wake: Some(warn_at),
        };
    }
    let Some(revoke_after) = policy.revoke_after else {
        return Judgement {
            status: Status::Unused,
            message: format!(
                "{what}: unused for longer than spec.inactivity.warnAfter ({})",
                policy.warn_text
            ),
            warn: usage.unused_since.is_none(),
            revoke: false,
            wake: None,
        };
    };
    // The whole warning period after the Warning, however late it came.
    let warned_at = usage.unused_since.unwrap_or(now);
    let revoke_at = (since + revoke_after).max(warned_at + (revoke_after - policy.warn_after));
    let revoke = usage.unused_since.is_some() && now >= revoke_at;
    Judgement {
        status: Status::Unused,
        message: if revoke {
            format!(
                "{what}: unused for longer than spec.inactivity.revokeAfter ({}); revoked",
                policy.revoke_text
            )
        } else {
            format!(
                "{what}: unused for longer than spec.inactivity.warnAfter ({}); revoked at {revoke_at} unless used before",
                policy.warn_text
            )
        },
        warn: usage.unused_since.is_none(),
        revoke,
        wake: (!revoke).then_some(revoke_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + days * 86_400).unwrap()
    }

    fn spec(warn: Option<&str>, revoke: Option<&str>) -> Inactivity {
        Inactivity {
            warn_after: warn.map(str::to_owned),
            revoke_after: revoke.map(str::to_owned),
        }
    }

    fn usage(last_used: Option<i64>, unused_since: Option<i64>) -> Usage {
        Usage {
            tracked: true,
            last_used: last_used.map(at),
            created: at(0),
            unused_since: unused_since.map(at),
        }
    }

    #[test]
    fn a_policy_defaults_its_warning_to_a_week_before_revocation_and_refuses_what_cannot_work() {
        let p = policy(&spec(None, Some("90d")), None).unwrap();
        assert_eq!(p.warn_after, SignedDuration::from_hours(83 * 24));
        let p = policy(&spec(None, Some("4d")), None).unwrap();
        assert_eq!(
            p.warn_after,
            SignedDuration::from_hours(48),
            "half when shorter than two weeks"
        );
        let err = policy(&spec(Some("90d"), Some("30d")), None).unwrap_err();
        assert!(err.starts_with("spec.inactivity.warnAfter (90d)"), "{err}");
        let err = policy(
            &spec(Some("30m"), Some("90d")),
            Some(Duration::from_secs(3600)),
        )
        .unwrap_err();
        assert!(
            err.starts_with("spec.inactivity.warnAfter (30m) is shorter than twice"),
            "{err}"
        );
        let err = policy(&spec(None, Some("90m")), Some(Duration::from_secs(3600))).unwrap_err();
        assert!(
            err.contains("shorter than twice the usage granularity"),
            "{err}"
        );
        assert!(policy(&spec(Some("2h"), None), Some(Duration::from_secs(3600))).is_ok());
    }

    #[test]
    fn a_used_token_is_left_alone_and_looked_at_again_when_it_would_turn_unused() {
        let p = policy(&spec(Some("30d"), Some("90d")), None);
        let j = judge(p, usage(Some(10), None), at(20));
        assert_eq!(j.status, Status::Used);
        assert!(!j.warn && !j.revoke);
        assert_eq!(j.wake, Some(at(40)));
    }

    #[test]
    fn an_idle_token_is_warned_first_and_revoked_only_a_warning_period_after() {
        let p = || policy(&spec(Some("30d"), Some("90d")), None);
        // Never used: idle since creation. Day 30: the Warning, revocation planned for day 90.
        let j = judge(p(), usage(None, None), at(30));
        assert_eq!(j.status, Status::Unused);
        assert!(j.warn && !j.revoke);
        assert_eq!(j.wake, Some(at(90)));
        // Day 90, warned on day 30: revoked.
        let j = judge(p(), usage(None, Some(30)), at(90));
        assert!(j.revoke && !j.warn);
        // Warned a day late: the full warning period still, so day 91.
        assert!(!judge(p(), usage(None, Some(31)), at(90)).revoke);
        assert!(judge(p(), usage(None, Some(31)), at(91)).revoke);
        // An operator down until day 200 warns first and revokes only 60 days later, not at once.
        let j = judge(p(), usage(None, None), at(200));
        assert!(j.warn && !j.revoke);
        assert_eq!(j.wake, Some(at(260)));
        let j = judge(p(), usage(None, Some(200)), at(259));
        assert!(!j.revoke);
        assert!(judge(p(), usage(None, Some(200)), at(260)).revoke);
        // A use after the Warning: used again, nothing revoked.
        let j = judge(p(), usage(Some(80), Some(31)), at(90));
        assert_eq!(j.status, Status::Used);
        assert!(!j.revoke);
    }

    #[test]
    fn without_a_use_to_see_or_with_a_bad_policy_nothing_is_revoked() {
        let mut blind = usage(None, Some(1));
        blind.tracked = false;
        let j = judge(policy(&spec(Some("1d"), Some("2d")), None), blind, at(400));
        assert_eq!(j.status, Status::UsageUnknown);
        assert!(!j.revoke && !j.warn && j.wake.is_none());
        let bad = policy(&spec(Some("3d"), Some("2d")), None);
        let j = judge(bad, usage(None, Some(1)), at(400));
        assert_eq!(j.status, Status::InvalidPolicy);
        assert!(j.message.contains("spec.inactivity.warnAfter"));
        assert!(!j.revoke);
    }

    #[test]
    fn warn_only_policies_never_revoke() {
        let j = judge(
            policy(&spec(Some("1d"), None), None),
            usage(None, Some(2)),
            at(900),
        );
        assert_eq!(j.status, Status::Unused);
        assert!(!j.revoke && !j.warn);
    }
}
