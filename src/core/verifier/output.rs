//! A verifier's outputs, checked: which Secret and data key each writes, and how it renders.

use crate::api::names;
use crate::api::verifier::{DEFAULT_HASH, HtpasswdHash, MAX_OUTPUTS, Output, OutputFormat};
use crate::core::invalid::{InvalidSpec, invalid};
use crate::core::trino;

/// An output, checked: the Secret and data key to write, and how to render into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidOutput {
    pub secret_name: String,
    /// The data key, default applied.
    pub key: String,
    pub rendering: Rendering,
    /// A `trino` output's mapping (and rules key); `None` for other formats.
    pub trino: Option<trino::Mapping>,
}

/// An output's format with what it needs: only htpasswd has a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rendering {
    Htpasswd(HtpasswdHash),
    Sha256Map,
    /// Trino's password file under the output's key, its rules under the mapping's.
    Trino,
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
            (OutputFormat::Trino, None) => Rendering::Trino,
            (_, Some(_)) => {
                return Err(invalid(field("hash"), "applies only to format htpasswd"));
            }
        };
        let trino = match (output.format, &output.trino) {
            (OutputFormat::Trino, Some(mapping)) => {
                Some(trino::Mapping::parse(mapping, key, &field("trino"))?)
            }
            (OutputFormat::Trino, None) => {
                return Err(invalid(field("trino"), "required with format trino"));
            }
            (_, Some(_)) => {
                return Err(invalid(field("trino"), "applies only to format trino"));
            }
            (_, None) => None,
        };
        valid.push(ValidOutput {
            secret_name: output.secret_name.clone(),
            key: key.to_owned(),
            rendering,
            trino,
        });
    }
    Ok(valid)
}
