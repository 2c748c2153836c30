//! What a token's status vouches for: whether the credentials a Secret holds are exactly the ones
//! status records, and whether a rotation happened that status does not show yet.

use jiff::Timestamp;

use crate::api::ApiTokenStatus;
use crate::core::credential::Credential;
use crate::core::token::secret::Held;

use super::types::*;

/// A consistent Secret whose credential is older than, or different from, the one status recorded:
/// an old copy put back. The caller's conditional write turns a merely stale cache into a retry.
pub(super) fn replayed(last: &ApiTokenStatus, held: &Held) -> Option<&'static str> {
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
pub(super) fn recorded_exactly(
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
pub(super) fn unreported_rotation(last: &ApiTokenStatus, held: &Held) -> Option<Transition> {
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
