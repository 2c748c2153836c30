//! `ApiTokenVerifier`: renders, into Secrets of the verifier's namespace, what servers need to check
//! the credentials of the tokens it accepts. The pure core; the controller reads and writes.
//!
//! The pipeline for one verifier, every step but the first and last pure:
//! read (controller: the verifier, tokens naming it, their Secrets and namespaces, its outputs) →
//! [`validate`] the verifier → [`trust::Trust::decide`] per token → collect each accepted, Active,
//! untampered token's credentials ([`render::TokenCredentials::entries`]) → [`render::render`] →
//! write the outputs whose bytes changed, then status (controller).
//!
//! Kubernetes' name rules live in [`crate::api::names`].

pub mod output;
pub mod publishable;
pub mod render;
pub mod status;
pub mod trust;

use crate::api::verifier::{ApiTokenVerifier, ApiTokenVerifierSpec, VerifierRef};
use render::ValidOutput;
use trust::Trust;

use jiff::SignedDuration;

use crate::core::invalid::{InvalidSpec, invalid};
use crate::core::schedule::Period;

/// A verifier whose spec passed every check, in domain types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidVerifier {
    pub trust: Trust,
    /// In spec order, defaults applied.
    pub outputs: Vec<ValidOutput>,
    /// `spec.publishDelay`, default applied.
    pub publish_delay: SignedDuration,
}

/// `spec.publishDelay` when absent: a kubelet rewrites a mounted Secret at its next sync of the pod,
/// 60 to 90 s after the last (`syncFrequency` 1m, jittered by up to half: `pod_workers.go`), plus
/// the sync itself; `tests/node.rs` measures it. Two minutes leave 30 s for a busy kubelet.
pub const DEFAULT_PUBLISH_DELAY: SignedDuration = SignedDuration::from_secs(120);
/// The longest `spec.publishDelay`.
pub const MAX_PUBLISH_DELAY: SignedDuration = SignedDuration::from_secs(3600);

impl ValidVerifier {
    /// The output writing the Secret `secret_name`, if any (to tell an output from a token's Secret).
    pub fn output_named(&self, secret_name: &str) -> Option<&ValidOutput> {
        self.outputs.iter().find(|o| o.secret_name == secret_name)
    }
}

/// Checks a verifier as stored in the API: its name (it becomes a label value) and its spec.
pub fn validate(verifier: &ApiTokenVerifier) -> Result<ValidVerifier, InvalidSpec> {
    let meta = &verifier.metadata;
    let name = meta.name.clone().unwrap_or_default();
    if name.len() > 63 {
        return Err(invalid(
            "metadata.name",
            "at most 63 characters (it becomes the value of the output Secrets' \
             tokenmint.dev/apitokenverifier label)",
        ));
    }
    let namespace = meta.namespace.clone().unwrap_or_default();
    validate_spec(VerifierRef { namespace, name }, &verifier.spec)
}

/// Checks the spec of the verifier `verifier`, for what the schema cannot express (and all it can,
/// as an older CRD may be installed). The error names the field.
pub fn validate_spec(
    verifier: VerifierRef,
    spec: &ApiTokenVerifierSpec,
) -> Result<ValidVerifier, InvalidSpec> {
    let outputs = render::validate_outputs(&spec.outputs)?;
    let trust = Trust::parse(verifier, spec.trust.as_deref())?;
    let publish_delay = match spec.publish_delay.as_deref() {
        None => DEFAULT_PUBLISH_DELAY,
        Some(text) => Period::parse_unbounded(text)
            .map(Period::as_duration)
            .ok()
            .filter(|d| *d <= MAX_PUBLISH_DELAY)
            .ok_or_else(|| {
                invalid(
                    "spec.publishDelay",
                    "a duration such as 90s or 0s (units w d h m s), at most 1h",
                )
            })?,
    };
    Ok(ValidVerifier {
        trust,
        outputs,
        publish_delay,
    })
}

#[cfg(test)]
mod tests {
    use super::render::Rendering;
    use super::*;
    use crate::api::verifier::{HtpasswdHash, Output, OutputFormat};

    fn verifier(name: &str, outputs: Vec<Output>) -> ApiTokenVerifier {
        let mut v = ApiTokenVerifier::new(
            name,
            ApiTokenVerifierSpec {
                trust: None,
                outputs,
                publish_delay: None,
            },
        );
        v.metadata.namespace = Some("data".into());
        v
    }

    fn output(secret_name: &str, format: OutputFormat) -> Output {
        Output {
            secret_name: secret_name.into(),
            format,
            key: None,
            hash: None,
            trino: None,
        }
    }

    #[test]
    fn a_minimal_verifier_trusts_its_namespace_and_renders_bcrypt() {
        let valid = validate(&verifier(
            "pinot",
            vec![output("auth", OutputFormat::Htpasswd)],
        ))
        .unwrap();
        assert_eq!(valid.trust.verifier().to_string(), "data/pinot");
        let out = valid.output_named("auth").unwrap();
        assert_eq!(out.key, "htpasswd");
        assert_eq!(out.rendering, Rendering::Htpasswd(HtpasswdHash::Bcrypt));
        assert!(valid.output_named("other").is_none());
        assert_eq!(valid.publish_delay, DEFAULT_PUBLISH_DELAY);
    }

    #[test]
    fn a_verifier_name_over_63_characters_is_refused() {
        let long = "p".repeat(64);
        let err =
            validate(&verifier(&long, vec![output("a", OutputFormat::Htpasswd)])).unwrap_err();
        assert_eq!(err.field, "metadata.name");
    }

    #[test]
    fn output_mistakes_name_their_field() {
        let with = |f: fn(&mut Output)| {
            let mut o = output("b", OutputFormat::Sha256Map);
            f(&mut o);
            validate(&verifier(
                "pinot",
                vec![output("a", OutputFormat::Htpasswd), o],
            ))
            .unwrap_err()
            .field
        };
        assert_eq!(
            with(|o| o.hash = Some(HtpasswdHash::Ssha)),
            "spec.outputs[1].hash"
        );
        assert_eq!(
            with(|o| o.secret_name = "a".into()),
            "spec.outputs[1].secretName"
        );
        assert_eq!(
            with(|o| o.secret_name = "B".into()),
            "spec.outputs[1].secretName"
        );
        assert_eq!(
            with(|o| o.key = Some("..data".into())),
            "spec.outputs[1].key"
        );
        assert_eq!(with(|o| o.key = Some("a/b".into())), "spec.outputs[1].key");
        let delay = |d: &str| {
            let mut v = verifier("pinot", vec![output("a", OutputFormat::Htpasswd)]);
            v.spec.publish_delay = Some(d.into());
            validate(&v).map(|v| v.publish_delay.as_secs())
        };
        assert_eq!(delay("0s"), Ok(0));
        assert_eq!(delay("1m30s"), Ok(90));
        assert_eq!(delay("2h").unwrap_err().field, "spec.publishDelay");
        assert_eq!(delay("soon").unwrap_err().field, "spec.publishDelay");
        let none = validate(&verifier("pinot", vec![])).unwrap_err();
        assert_eq!(none.field, "spec.outputs");
        let nine = (0..9)
            .map(|i| output(&format!("o{i}"), OutputFormat::Htpasswd))
            .collect();
        assert_eq!(
            validate(&verifier("pinot", nine)).unwrap_err().field,
            "spec.outputs"
        );
    }
}
