//! Minting: a first issue, a re-issue, a rotation (immediate or staged), and keeping what is there.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use crate::api::{ApiToken, ApiTokenStatus};
use crate::core::credential::{Credential, mint_credential};
use crate::core::schedule::Period;
use crate::core::seal::SealKey;
use crate::core::token::secret::{self, Held, Previous};
use crate::core::token::validate::ValidSpec;

use super::status::{active_status, wake_active};
use super::types::*;
use super::vouch::unreported_rotation;

/// Why a new credential is minted.
pub(super) enum Mint {
    First,
    SecretDeleted,
    Reissue,
    Tampered(String),
    Manual,
    Scheduled(Period),
}

pub(super) fn update(secret: &Secret, desired: Secret) -> SecretWrite {
    SecretWrite::Update {
        resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
        removed: secret::removed_template_keys(secret, &desired),
        secret: Box::new(desired),
    }
}

#[allow(clippy::too_many_arguments)]
/// What every mint of one reconcile shares.
pub(super) struct Minting<'a> {
    pub(super) token: &'a ApiToken,
    pub(super) spec: &'a ValidSpec,
    pub(super) last: &'a ApiTokenStatus,
    pub(super) key: &'a SealKey,
    pub(super) servers: &'a Servers<'a>,
    pub(super) now: Timestamp,
}

impl Minting<'_> {
    /// A new credential (replacing the one in `existing`, if any) as rotation number `rotations`,
    /// with no previous credential: a first issue, or a re-issue of a credential taken as compromised.
    pub(super) fn mint(
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
    pub(super) fn rotate(
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
    pub(super) fn keep(&self, existing: &Secret, held: &Held, retire: bool) -> Plan {
        let (token, spec, last, now) = (self.token, self.spec, self.last, self.now);
        let mut held = held.clone();
        if retire {
            held.retire_request = token.retire_request().map(str::to_owned);
        }
        let moving = self.servers.consumers_moving;
        if let (Some(previous), Some(overlap), false, true) =
            (&mut held.previous, spec.overlap, retire, moving)
        {
            // Consumers still moving: the retirement steps ahead of the servers' publish delay
            // (so no server refuses the credential meanwhile), at most one more overlap.
            let limit = held.issued_at + overlap.as_duration() + overlap.as_duration();
            let lead = self.servers.publish_delay.unwrap_or_default() + STAGE_LEAD;
            if now + lead >= previous.retires_at && previous.retires_at < limit {
                previous.retires_at = (now + lead + CONSUMER_HOLD_STEP).min(limit);
            }
        }
        let mut event = unreported_rotation(last, &held);
        if retire || held.previous.as_ref().is_some_and(|p| now >= p.retires_at) {
            if moving && !retire && held.previous.is_some() {
                event = Some(Transition {
                    warning: true,
                    reason: Reason::RetiredBeforeConsumers,
                    note: "the previous credential retired at the end of its overlap and one more, before every consumer had restarted with the current one (see status.consumers)".into(),
                });
            }
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
            event,
            mints: false,
        }
    }

    pub(super) fn replace(
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
