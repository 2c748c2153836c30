//! `kubectl apitoken rotate`: Tinybird's "refresh". Asks the operator for a new credential in place.

use std::time::Duration;

use jiff::Timestamp;
use tokenmint::api::{ApiToken, Phase, RETIRE_ANNOTATION, ROTATE_ANNOTATION};

use crate::cluster::{self, Target};
use crate::error::Error;

/// Flags of `rotate`.
#[derive(clap::Args, Clone, Debug)]
pub struct RotateArgs {
    /// Name of the ApiToken.
    pub name: String,
    /// Wait until the operator has rotated the credential, then print the new fingerprint.
    #[arg(long)]
    pub wait: bool,
    /// Retire the replaced credential at once instead of keeping it for `rotation.overlap` (it
    /// leaked): sets tokenmint.dev/retire-previous with the same request.
    #[arg(long)]
    pub retire_previous: bool,
    /// How long --wait waits, e.g. 60s, 5m. A token a verifier accepts becomes current only after
    /// the verifier's publishDelay (90s unless set), hence the default.
    #[arg(long, default_value = "3m", value_parser = crate::parse_timeout)]
    pub timeout: Duration,
}

pub async fn run(target: &Target, args: &RotateArgs) -> Result<(), Error> {
    let name = args.name.as_str();
    let token = target.get_token(name).await?;
    if let Some(state) = final_state(&token) {
        return Err(Error::State(format!(
            "apitoken {} is {state}: it has no credential to rotate; create a new ApiToken instead",
            target.qualified(name)
        )));
    }
    // A fresh value each time, so every request is one the operator has not handled yet.
    let request = Timestamp::now().to_string();
    let mut annotations = serde_json::Map::new();
    annotations.insert(ROTATE_ANNOTATION.to_owned(), request.clone().into());
    if args.retire_previous {
        annotations.insert(RETIRE_ANNOTATION.to_owned(), request.clone().into());
    }
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    target.merge_patch_token(name, &patch).await?;
    let retiring = if args.retire_previous {
        format!(", {RETIRE_ANNOTATION}={request}")
    } else {
        String::new()
    };
    println!(
        "apitoken.tokenmint.dev/{name} rotation requested ({ROTATE_ANNOTATION}={request}{retiring})"
    );
    if !args.wait {
        return Ok(());
    }
    let status = cluster::wait_for_token(target, name, args.timeout, "the rotation", |t| {
        if let Some(state) = final_state(t) {
            return Err(Error::State(format!(
                "apitoken {} became {state} before the rotation was carried out",
                target.qualified(name)
            )));
        }
        let retired = |s: &tokenmint::api::ApiTokenStatus| {
            !args.retire_previous || s.last_retire_request.as_deref() == Some(request.as_str())
        };
        Ok(t.status
            .as_ref()
            .filter(|s| s.last_rotate_request.as_deref() == Some(request.as_str()) && retired(s))
            .cloned())
    })
    .await?;
    println!(
        "apitoken.tokenmint.dev/{name} rotated: fingerprint {} (rotations: {})",
        status.fingerprint.as_deref().unwrap_or("?"),
        status.rotations.unwrap_or_default()
    );
    Ok(())
}

/// `revoked` or `expired` when the token can no longer hold a credential.
pub fn final_state(token: &ApiToken) -> Option<&'static str> {
    let phase = token.status.as_ref().and_then(|s| s.phase);
    if token.spec.revoked == Some(true) || phase == Some(Phase::Revoked) {
        Some("revoked")
    } else if phase == Some(Phase::Expired) {
        Some("expired")
    } else {
        None
    }
}
