//! `kubectl apitoken create`: builds an ApiToken from flags, checks it, then applies it or prints it.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use tokenmint::api::{ApiToken, ApiTokenSpec, Phase, Rotation};
use tokenmint::core::schedule::Period;
use tokenmint::core::scope;
use tokenmint::core::token::validate::{Policy, validate};

use crate::cluster::{self, ConnectArgs, FIELD_MANAGER, Target};
use crate::error::Error;

/// Flags of `create`.
#[derive(clap::Args, Clone, Debug)]
pub struct CreateArgs {
    /// Name of the ApiToken (and, by default, of its Secret).
    pub name: String,
    /// Role granted to the token, e.g. `reader`.
    #[arg(long)]
    pub role: String,
    /// A scope in Tinybird's syntax TYPE[:resource[:filter]], e.g. `DATASOURCES:READ:events:tenant_id = 42`. Repeatable.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Free text shown in `kubectl apitoken list`.
    #[arg(long)]
    pub description: Option<String>,
    /// Rotate on this schedule: `<integer><unit>` pairs, units w d h m s (e.g. 30d, 12h, 1h30m).
    #[arg(long, value_name = "PERIOD")]
    pub rotate_every: Option<String>,
    /// An ApiTokenVerifier this token is for, `<name>` or `<namespace>/<name>` (repeatable, at most 16).
    #[arg(long = "audience", value_name = "VERIFIER")]
    pub audiences: Vec<String>,
    /// Keep the replaced credential valid this long after each rotation (needs --rotate-every).
    #[arg(long, value_name = "DURATION", requires = "rotate_every")]
    pub overlap: Option<String>,
    /// RFC 3339 instant at which the token stops being valid, e.g. 2027-06-30T00:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
    /// Name of the Secret that receives the credential (default: the token's name). Immutable.
    #[arg(long, value_name = "NAME")]
    pub secret_name: Option<String>,
    /// Print the manifest instead of applying it (for a GitOps repository); needs no cluster.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<ManifestOutput>,
    /// Take over fields another field manager owns (server-side apply conflicts).
    #[arg(long, conflicts_with = "output")]
    pub force_conflicts: bool,
    /// Wait until the operator has issued the credential, then print its access key and fingerprint.
    #[arg(long, conflicts_with = "output")]
    pub wait: bool,
    /// How long --wait waits, e.g. 60s, 2m.
    #[arg(long, default_value = "60s", value_parser = crate::parse_timeout)]
    pub timeout: Duration,
}

/// Formats `create -o` can print.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestOutput {
    Yaml,
    Json,
}

pub async fn run(args: &CreateArgs, connect: &ConnectArgs) -> Result<(), Error> {
    if let Some(format) = args.output {
        // The manifest names a namespace only when one was asked for: GitOps tools usually set it.
        let token = manifest(args, connect.namespace.as_deref(), Timestamp::now())?;
        print!("{}", render(&token, format)?);
        return Ok(());
    }
    let mut token = manifest(args, None, Timestamp::now())?;
    let target = cluster::connect(connect).await?;
    token.metadata.namespace = Some(target.namespace.clone());
    apply(&target, &token, args).await
}

async fn apply(target: &Target, token: &ApiToken, args: &CreateArgs) -> Result<(), Error> {
    let name = args.name.as_str();
    let before = target
        .tokens()
        .get_opt(name)
        .await
        .map_err(|e| target.token_op("get", name).error(e))?;
    if let Some(state) = before.as_ref().and_then(crate::rotate::final_state) {
        return Err(Error::State(format!(
            "apitoken {} already exists and is {state}: it cannot be issued again; \
             create the token under another name (or delete the old record first)",
            target.qualified(name)
        )));
    }
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = args.force_conflicts;
    let after = target
        .tokens()
        .patch(name, &params, &Patch::Apply(token))
        .await
        .map_err(|e| target.token_op("apply", name).error(e))?;
    let verb = match &before {
        None => "created",
        Some(b) if b.metadata.resource_version == after.metadata.resource_version => "unchanged",
        Some(_) => "configured",
    };
    println!("apitoken.tokenmint.dev/{name} {verb}");
    if !args.wait {
        return Ok(());
    }
    let generation = after.metadata.generation;
    let issued = cluster::wait_for_token(target, name, args.timeout, "the credential", |t| {
        let Some(status) = &t.status else {
            return Ok(None);
        };
        if status.observed_generation < generation {
            return Ok(None);
        }
        match status.phase {
            Some(Phase::Active) => Ok(Some(status.clone())),
            Some(phase @ (Phase::Failed | Phase::Revoked | Phase::Expired)) => {
                Err(Error::State(format!(
                    "apitoken {} is {}{}",
                    target.qualified(name),
                    phase.as_str(),
                    cluster::ready_message(t)
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                )))
            }
            _ => Ok(None),
        }
    })
    .await?;
    println!(
        "issued: access key {}, fingerprint {}, in Secret {}",
        issued.access_key.as_deref().unwrap_or("?"),
        issued.fingerprint.as_deref().unwrap_or("?"),
        issued.secret_name.as_deref().unwrap_or(token.secret_name()),
    );
    Ok(())
}

/// The ApiToken the flags describe, checked as the operator will check it. Pure but for `now`,
/// which only rejects an `--expires-at` already in the past.
pub fn manifest(
    args: &CreateArgs,
    namespace: Option<&str>,
    now: Timestamp,
) -> Result<ApiToken, Error> {
    let invalid = |flag: &str, value: &str, reason: &dyn std::fmt::Display| {
        Error::Invalid(format!("invalid {flag} {value:?}: {reason}"))
    };
    if !is_dns1123_subdomain(&args.name) {
        return Err(invalid("NAME", &args.name, &DNS1123));
    }
    if let Some(secret) = &args.secret_name
        && !is_dns1123_subdomain(secret)
    {
        return Err(invalid("--secret-name", secret, &DNS1123));
    }
    let scopes = args
        .scopes
        .iter()
        .map(|s| scope::parse(s).map_err(|e| Error::Invalid(format!("invalid --scope: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(period) = &args.rotate_every {
        Period::parse(period).map_err(|e| invalid("--rotate-every", period, &e))?;
    }
    let expires_at = args
        .expires_at
        .as_deref()
        .map(|text| {
            let at: Timestamp = text.parse().map_err(|_| {
                invalid(
                    "--expires-at",
                    text,
                    &"must be an RFC 3339 time such as 2027-06-30T00:00:00Z",
                )
            })?;
            if at <= now {
                return Err(invalid(
                    "--expires-at",
                    text,
                    &"is in the past: the token would be expired at once",
                ));
            }
            Ok(Time(at))
        })
        .transpose()?;
    let spec = ApiTokenSpec {
        role: args.role.clone(),
        description: args.description.clone().filter(|d| !d.is_empty()),
        scopes: (!scopes.is_empty()).then_some(scopes),
        rotation: args.rotate_every.clone().map(|period| Rotation {
            period,
            overlap: args.overlap.clone(),
        }),
        audiences: (!args.audiences.is_empty()).then(|| {
            args.audiences
                .iter()
                .map(|a| tokenmint::api::verifier::AudienceRef(a.clone()))
                .collect()
        }),
        expires_at,
        revoked: None,
        secret_name: args.secret_name.clone(),
        secret_template: None,
        format: None,
        consumers: None,
        inactivity: None,
    };
    // The installation's policy is the operator's to apply; the plugin checks only the contract.
    let policy = Policy {
        allow_replication_annotations: true,
    };
    validate(&spec, policy).map_err(|e| Error::Invalid(format!("invalid ApiToken: {e}")))?;
    let mut token = ApiToken::new(&args.name, spec);
    token.metadata.namespace = namespace.map(str::to_owned);
    Ok(token)
}

const DNS1123: &str = "must be a DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' and '.', \
                       starting and ending with a letter or digit";

fn is_dns1123_subdomain(name: &str) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label)
}

/// The manifest as YAML or JSON, without status (a manifest describes only what is wanted).
pub fn render(token: &ApiToken, format: ManifestOutput) -> Result<String, Error> {
    let mut value = serde_json::to_value(token)
        .map_err(|e| Error::Io(format!("encoding the manifest: {e}")))?;
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
    }
    match format {
        ManifestOutput::Yaml => {
            serde_yaml::to_string(&value).map_err(|e| Error::Io(format!("encoding YAML: {e}")))
        }
        ManifestOutput::Json => serde_json::to_string_pretty(&value)
            .map(|s| s + "\n")
            .map_err(|e| Error::Io(format!("encoding JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> CreateArgs {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            create: CreateArgs,
        }
        let argv = ["create", "superset-reader", "--role", "reader"]
            .iter()
            .chain(extra);
        Wrapper::try_parse_from(argv).unwrap().create
    }

    fn now() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    fn yaml(extra: &[&str], namespace: Option<&str>) -> Result<String, Error> {
        render(
            &manifest(&args(extra), namespace, now())?,
            ManifestOutput::Yaml,
        )
    }

    #[test]
    fn minimal_manifest_is_what_a_gitops_repository_needs() {
        assert_eq!(
            yaml(&[], None).unwrap(),
            "apiVersion: tokenmint.dev/v1alpha1\n\
             kind: ApiToken\n\
             metadata:\n  name: superset-reader\n\
             spec:\n  role: reader\n"
        );
    }

    #[test]
    fn full_manifest_carries_every_flag() {
        let text = yaml(
            &[
                "--scope",
                "DATASOURCES:READ:events:tenant_id = 42",
                "--scope",
                "PIPES:READ:top_pages",
                "--scope",
                "ADMIN",
                "--description",
                "Superset dashboards",
                "--rotate-every",
                "30d",
                "--expires-at",
                "2027-06-30T00:00:00Z",
                "--secret-name",
                "superset-reader-token",
            ],
            Some("analytics"),
        )
        .unwrap();
        let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(value["metadata"]["namespace"], "analytics");
        let spec = &value["spec"];
        assert_eq!(spec["role"], "reader");
        assert_eq!(spec["description"], "Superset dashboards");
        assert_eq!(spec["scopes"][0]["type"], "DATASOURCES:READ");
        assert_eq!(spec["scopes"][0]["resource"], "events");
        assert_eq!(spec["scopes"][0]["filter"], "tenant_id = 42");
        assert_eq!(spec["scopes"][1]["type"], "PIPES:READ");
        assert_eq!(spec["scopes"][1]["resource"], "top_pages");
        assert_eq!(spec["scopes"][2]["type"], "ADMIN");
        assert!(spec["scopes"][2].get("resource").is_none());
        assert_eq!(spec["rotation"]["period"], "30d");
        assert_eq!(spec["expiresAt"], "2027-06-30T00:00:00Z");
        assert_eq!(spec["secretName"], "superset-reader-token");
        assert!(value.get("status").is_none());
    }

    #[test]
    fn json_manifest_parses_back_into_an_apitoken() {
        let token = manifest(&args(&["--scope", "TOKENS"]), None, now()).unwrap();
        let text = render(&token, ManifestOutput::Json).unwrap();
        let back: ApiToken = serde_json::from_str(&text).unwrap();
        assert_eq!(back.spec, token.spec);
    }

    #[test]
    fn invalid_flags_are_rejected_naming_the_flag() {
        let cases: [(&[&str], &str); 7] = [
            (&["--scope", "admin"], "--scope"),
            (&["--scope", "PIPES:READ:bad resource"], "--scope"),
            (&["--rotate-every", "30s"], "--rotate-every"),
            (&["--rotate-every", "monthly"], "--rotate-every"),
            (&["--expires-at", "tomorrow"], "--expires-at"),
            (&["--expires-at", "2020-01-01T00:00:00Z"], "in the past"),
            (&["--secret-name", "Not_A_Name"], "--secret-name"),
        ];
        for (extra, needle) in cases {
            let err = manifest(&args(extra), None, now()).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
        let mut bad_role = args(&[]);
        bad_role.role = "Reader".into();
        assert!(
            manifest(&bad_role, None, now())
                .unwrap_err()
                .to_string()
                .contains("spec.role")
        );
        let mut bad_name = args(&[]);
        bad_name.name = "Superset".into();
        assert!(
            manifest(&bad_name, None, now())
                .unwrap_err()
                .to_string()
                .contains("NAME")
        );
    }

    #[test]
    fn duplicate_scopes_are_caught_before_the_cluster() {
        let err = manifest(
            &args(&["--scope", "PIPES:READ:top", "--scope", "PIPES:READ:top"]),
            None,
            now(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("spec.scopes[1]"), "{err}");
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "superset-reader", "a.b-c.d1", &"a".repeat(253)] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", ".a", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }
}
