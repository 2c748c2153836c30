//! A verifier's outputs, checked: which Secret and data key each writes, and how it renders.

use crate::api::names;
use crate::api::verifier::{DEFAULT_HASH, HtpasswdHash, MAX_OUTPUTS, Output, OutputFormat};
use crate::core::invalid::{InvalidSpec, invalid};

/// An output, checked: the Secret and data key to write, and how to render into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidOutput {
    pub secret_name: String,
    /// The data key, default applied.
    pub key: String,
    pub rendering: Rendering,
}

/// An output's format with what it needs: only htpasswd has a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rendering {
    Htpasswd(HtpasswdHash),
    Sha256Map,
}

/// Checks `spec.outputs` beyond the schema (an older CRD may be installed) and applies defaults.
pub fn validate_outputs(outputs: &[Output]) -> Result<Vec<ValidOutput>, InvalidSpec> {
    if outputs.is_empty() || outputs.len() > MAX_OUTPUTS {
        return Err(invalid(
            "spec.outputs",
            format!("1 to {MAX_OUTPUTS} outputs"),
        ));
    }
    let mut valid: Vec<ValidOutput> = Vec::with_capacity(outputs.len());
    for (i, output) in outputs.iter().enumerate() {
        let field = |f: &str| format!("spec.outputs[{i}].{f}");
        if !names::is_dns_subdomain(&output.secret_name) {
            return Err(invalid(
                field("secretName"),
                "must be a DNS-1123 subdomain (at most 253 characters of [a-z0-9.-])",
            ));
        }
        if let Some(j) = valid
            .iter()
            .position(|v| v.secret_name == output.secret_name)
        {
            return Err(invalid(
                field("secretName"),
                format!("names the same Secret as spec.outputs[{j}]"),
            ));
        }
        let key = output.key();
        if !names::is_data_key(key) {
            return Err(invalid(
                field("key"),
                "must be 1-253 characters of [-._a-zA-Z0-9], not '.' and not starting with '..'",
            ));
        }
        let rendering = match (output.format, output.hash) {
            (OutputFormat::Htpasswd, hash) => Rendering::Htpasswd(hash.unwrap_or(DEFAULT_HASH)),
            (OutputFormat::Sha256Map, None) => Rendering::Sha256Map,
            (OutputFormat::Sha256Map, Some(_)) => {
                return Err(invalid(field("hash"), "applies only to format htpasswd"));
            }
        };
        valid.push(ValidOutput {
            secret_name: output.secret_name.clone(),
            key: key.to_owned(),
            rendering,
        });
    }
    Ok(valid)
}
