//! Status conditions, for tokens and verifiers alike.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition of `type_` given the object's `previous` conditions (of any kind of object): its
/// transition time moves only when its status flips.
pub fn flipped_condition(
    previous: &[Condition],
    type_: &str,
    generation: Option<i64>,
    ok: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    condition_with(previous, type_, generation, status, reason, message, now)
}

/// [`flipped_condition`] with any status: `True`, `False` or `Unknown`.
pub fn condition_with(
    previous: &[Condition],
    type_: &str,
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}
