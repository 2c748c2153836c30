//! The status (and when to look again) of an Active token, of a revoked or expired one, and of one
//! that cannot be issued; the conditions they carry.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ApiToken, ApiTokenStatus, NextCredential, Phase, PreviousCredential};
use crate::core::schedule::{self};
use crate::core::token::secret::{self, Held, Observed};
use crate::core::token::validate::ValidSpec;

use super::types::*;

/// The next instant something changes for an Active token: its rotation (or the staging before
/// it), a staged credential's promotion (or its publish timeout), the previous credential's
/// retirement, expiry.
pub(super) fn wake_active(status: &ApiTokenStatus, held: &Held, servers: &Servers<'_>) -> Wake {
    let at = |t: &Option<Time>| t.as_ref().map(|t| t.0);
    let retires = status.previous.as_ref().map(|p| p.retires_at.0);
    // While consumers move, the retirement may step ahead: look before the servers must know.
    let hold = retires
        .filter(|_| servers.consumers_moving)
        .map(|at| at - servers.publish_delay.unwrap_or_default() - STAGE_LEAD);
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
        hold,
        staging,
    ])
    .map_or(Wake::OnChange, Wake::At)
}

/// Status of a token whose credential `held` is in its Secret.
pub(super) fn active_status(
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
            // Its last use, while it is the same credential.
            last_used_at: last
                .previous
                .as_ref()
                .filter(|last| last.access_key == p.credential.access_key)
                .and_then(|last| last.last_used_at.clone()),
        }),
        next: held.next.as_ref().map(|n| NextCredential {
            access_key: n.credential.access_key.clone(),
            fingerprint: n.credential.fingerprint(),
            promote_at: Time(n.promote_at),
        }),
        last_retire_request: held.retire_request.clone(),
        // Last use is the controller's to fold in, from the usage records; kept meanwhile.
        last_used_at: last.last_used_at.clone(),
        usage_tracked: last.usage_tracked,
        // The consumers' rollouts are the controller's to fill in, like the audiences.
        consumers: last.consumers.clone(),
        // Which verifiers accept the token is the controller's to fill in: it sees the verifiers.
        audiences: last.audiences.clone(),
        observed_generation: token.metadata.generation,
        conditions: vec![ready(token, last, true, reason, message, now)],
    }
}

/// The type of the inactivity policy's condition.
pub const UNUSED: &str = "Unused";

/// Revoked or Expired: the Secret goes (if ours), the token stays as the record.
///
/// `unused`: revoked by the inactivity policy, and why (reason `Unused`).
pub(super) fn end(
    token: &ApiToken,
    observed: &Observed<'_>,
    last: &ApiTokenStatus,
    phase: Phase,
    unused: Option<String>,
    now: Timestamp,
) -> Plan {
    let reason = match (phase, &unused) {
        (Phase::Revoked, Some(_)) => Reason::Unused,
        (Phase::Revoked, None) => Reason::Revoked,
        _ => Reason::Expired,
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
    let message = match unused {
        Some(_) => format!(
            "token revoked for inactivity (spec.inactivity); its credential was removed with Secret {name}"
        ),
        None => format!("token {what}; its credential was removed with Secret {name}"),
    };
    let mut conditions = vec![ready(token, last, false, reason, message.clone(), now)];
    // Revoked for inactivity: the Unused condition says why, and stays as it is.
    if let Some(why) = unused {
        conditions.push(crate::core::conditions::condition_with(
            &last.conditions,
            UNUSED,
            token.metadata.generation,
            "True",
            Reason::Unused.as_str(),
            why,
            now,
        ));
    }
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
        last_used_at: last.last_used_at.clone(),
        usage_tracked: last.usage_tracked,
        consumers: last.consumers.clone(),
        audiences: last.audiences.clone(),
        observed_generation: token.metadata.generation,
        conditions,
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
pub(super) fn failed(
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
