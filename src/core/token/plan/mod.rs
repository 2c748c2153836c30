//! What to do for one ApiToken: a pure function of (token, observed Secret, now, randomness).
//!
//! Every credential-changing write in a [`Plan`] is conditional on the Secret being exactly as observed
//! (create only if absent, update or delete only at the observed resourceVersion), so planning from a
//! stale cache can waste a request but can never mint a credential twice.

mod mint;
mod status;
mod types;
mod vouch;

pub use status::{condition, ready, stalled};
pub use types::*;
pub use vouch::unvouched;

use mint::{Mint, Minting};
use status::{end, failed};
use vouch::replayed;

use jiff::Timestamp;

use crate::api::{ApiToken, ApiTokenStatus, Phase};
use crate::core::credential::mint_credential;
use crate::core::inactivity;
use crate::core::schedule;
use crate::core::token::secret::{Next, Observed, Previous, Seal};
use crate::core::token::validate;

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
        return end(token, observed, &last, phase, None, now);
    }
    // Revoked by the inactivity policy: for good, like `revoked: true`.
    if let Some(why) = revoked_unused(&last) {
        return end(token, observed, &last, Phase::Revoked, Some(why), now);
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

    let judged = token.spec.inactivity.as_ref().map(|policy| {
        let usage = inactivity::Usage {
            tracked: last.usage_tracked,
            last_used: last.last_used_at.as_ref().map(|t| t.0),
            created: token
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0),
            unused_since: last
                .conditions
                .iter()
                .find(|c| c.type_ == status::UNUSED && c.status == "True")
                .map(|c| c.last_transition_time.0),
        };
        inactivity::judge(
            inactivity::policy(policy, servers.usage_granularity),
            usage,
            now,
        )
    });
    if let Some(judged) = judged.as_ref().filter(|j| j.revoke) {
        return end(
            token,
            observed,
            &last,
            Phase::Revoked,
            Some(judged.message.clone()),
            now,
        );
    }

    let minting = Minting {
        token,
        spec: &spec,
        last: &last,
        key,
        servers,
        now,
    };
    let mut plan = plan_active(&minting, observed, servers, rng);
    if let Some(judged) = judged
        && plan.status.phase == Some(Phase::Active)
    {
        plan.status
            .conditions
            .push(crate::core::conditions::condition_with(
                &last.conditions,
                status::UNUSED,
                token.metadata.generation,
                judged.status.condition_status(),
                judged.status.reason(),
                judged.message.clone(),
                now,
            ));
        if judged.warn {
            plan.event = Some(Transition {
                warning: true,
                reason: Reason::Unused,
                note: judged.message,
            });
        }
        if let Some(at) = judged.wake {
            plan.wake = sooner(plan.wake, at, now);
        }
    }
    plan
}

/// The inactivity policy revoked this token earlier, and why (its `Unused` condition).
fn revoked_unused(last: &ApiTokenStatus) -> Option<String> {
    let ready = last.conditions.iter().find(|c| c.type_ == "Ready")?;
    (last.phase == Some(Phase::Revoked) && ready.reason == Reason::Unused.as_str()).then(|| {
        let unused = last.conditions.iter().find(|c| c.type_ == status::UNUSED);
        unused.map_or_else(String::new, |c| c.message.clone())
    })
}

/// The plan of a token with a valid spec that is neither revoked nor expired.
fn plan_active(
    minting: &Minting<'_>,
    observed: &Observed<'_>,
    servers: &Servers<'_>,
    rng: &mut impl rand::RngCore,
) -> Plan {
    let (token, spec, last, now) = (minting.token, minting.spec, minting.last, minting.now);
    match observed {
        Observed::Foreign => failed(
            token,
            last,
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
                Seal::Valid => replayed(last, held),
                Seal::Unverified => unvouched(last, held),
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

#[cfg(test)]
mod tests;
