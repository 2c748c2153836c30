//! `kubectl apitoken revoke`: sets `spec.revoked: true` after a confirmation. Final.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use tokenmint::api::Phase;

use crate::cluster::{self, Target};
use crate::error::Error;

/// Flags of `revoke`.
#[derive(clap::Args, Clone, Debug)]
pub struct RevokeArgs {
    /// Name of the ApiToken.
    pub name: String,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Wait until the operator has deleted the credential.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 60s, 2m.
    #[arg(long, default_value = "60s", value_parser = crate::parse_timeout)]
    pub timeout: Duration,
}

pub async fn run(target: &Target, args: &RevokeArgs) -> Result<(), Error> {
    let name = args.name.as_str();
    let token = target.get_token(name).await?;
    let qualified = target.qualified(name);
    if token.spec.revoked == Some(true) {
        println!("apitoken.tokenmint.dev/{name} is already revoked");
        eprint!("{}", gitops_note(name));
        return Ok(());
    }
    if !args.yes {
        let access_key = token.status.as_ref().and_then(|s| s.access_key.as_deref());
        confirm(&qualified, access_key)?;
    }
    let patch = serde_json::json!({"spec": {"revoked": true}});
    target.merge_patch_token(name, &patch).await?;
    println!("apitoken.tokenmint.dev/{name} revoked");
    eprint!("{}", gitops_note(name));
    if args.wait {
        cluster::wait_for_token(target, name, args.timeout, "the revocation", |t| {
            Ok(t.status
                .as_ref()
                .filter(|s| s.phase == Some(Phase::Revoked))
                .map(|_| ()))
        })
        .await?;
        println!("apitoken.tokenmint.dev/{name} credential deleted (phase Revoked)");
    }
    Ok(())
}

/// Asks on the terminal; refuses outright when there is none to ask on.
fn confirm(qualified: &str, access_key: Option<&str>) -> Result<(), Error> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Invalid(format!(
            "refusing to revoke apitoken {qualified} without confirmation: stdin is not a terminal; \
             pass --yes to revoke it"
        )));
    }
    let key = access_key
        .map(|k| format!(" (access key {k})"))
        .unwrap_or_default();
    eprint!(
        "Revoke apitoken {qualified}{key}? Its credential stops working at once and this cannot be undone. [y/N] "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::Io(format!("reading the answer: {e}")))?;
    if is_yes(&answer) {
        Ok(())
    } else {
        Err(Error::State(format!(
            "not revoked: apitoken {qualified} is unchanged"
        )))
    }
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// What someone who keeps this ApiToken in Git must do so the repository agrees with the cluster.
pub fn gitops_note(name: &str) -> String {
    format!(
        "\nIf apitoken {name} is managed from a GitOps repository (Argo CD, Flux), set revoked: true in its manifest there:\n\n\
         \x20 spec:\n\
         \x20   revoked: true\n\n\
         Revocation is final: the API server rejects any change back to revoked: false, so a sync of the\n\
         old manifest cannot restore the token; it fails (or shows the token out of sync) until the\n\
         repository says revoked: true. To replace the token, add a new ApiToken with another name.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_confirms() {
        for yes in ["y\n", "Y", " yes \n", "YES"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "revoke"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }

    #[test]
    fn gitops_note_says_what_to_change_and_that_revocation_is_final() {
        let note = gitops_note("superset-reader");
        assert!(note.contains("  spec:\n    revoked: true\n"), "{note}");
        assert!(note.contains("rejects any change back to revoked: false"));
    }
}
