//! Which credentials of a token a verifier may publish: a pure function of the token, its Secret
//! as observed, the seal key and the time.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api::ApiToken;
use crate::core::seal::SealKey;
use crate::core::token::plan::unvouched;
use crate::core::token::secret::{self, Observed, Seal};
use crate::core::verifier::render::{TokenCredentials, TokenRef};

/// The valid credentials of an Active token: read from its Secret, and only if that Secret is sealed
/// by the current key, or, under no seal or another key's, if every sealed fact equals what the
/// token's status records (a tampered Secret contributes nothing until the token controller has
/// replaced it).
pub fn credentials(
    token: &ApiToken,
    secret: &Secret,
    key: &SealKey,
    now: Timestamp,
) -> Option<TokenCredentials> {
    let expired = token.spec.expires_at.as_ref().is_some_and(|t| t.0 <= now);
    if token.spec.revoked == Some(true) || expired {
        return None;
    }
    let ns = token.metadata.namespace.clone()?;
    let Observed::Owned {
        held: Ok(held),
        seal,
        ..
    } = secret::observe(token, Some(secret), key)
    else {
        return None;
    };
    // Under a lost or replaced seal key, what the token's status vouches for is believed, exactly as
    // the planner believes it and re-seals it: a key rotation must not empty every output until
    // each Secret is re-sealed. Anything status does not record stays out.
    let vouched = || {
        let status = token.status.as_ref();
        status.is_some_and(|status| unvouched(status, &held).is_none())
    };
    if seal == Seal::Unverified && !vouched() {
        return None;
    }
    Some(TokenCredentials {
        token: TokenRef {
            namespace: ns,
            name: token.name_any(),
        },
        role: token.spec.role.clone(),
        scopes: token
            .spec
            .scopes
            .iter()
            .flatten()
            .map(crate::api::Scope::canonical)
            .collect(),
        expires_at: token.spec.expires_at.as_ref().map(|t| t.0),
        current: held.credential,
        previous: held.previous.map(|p| (p.credential, p.retires_at)),
        next: held.next.map(|n| n.credential),
    })
}
