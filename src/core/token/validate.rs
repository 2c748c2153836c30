//! Turns an `ApiTokenSpec` into a [`ValidSpec`] the planner can trust, or an error naming the field.
//!
//! The CRD schema already rejects most bad input at `kubectl apply`; this re-checks it (an older CRD may be
//! installed) and adds what the schema cannot express, such as rotation period bounds.

use std::collections::{BTreeMap, HashSet};

use crate::api::names::{check_qualified_name, is_label_value};
use crate::api::{ApiTokenSpec, Scope, SecretTemplate};
use crate::core::credential::Format;
use crate::core::invalid::{InvalidSpec, invalid};
use crate::core::schedule::Period;
use crate::core::scope;

/// A spec that passed every check, in domain types.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub role: String,
    /// Canonical scope strings in spec order.
    pub scopes: Vec<String>,
    pub period: Option<Period>,
    /// How long a replaced credential stays valid after a rotation; shorter than `period`.
    pub overlap: Option<Period>,
    pub format: Format,
}

/// What the operator's installation allows beyond the contract's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Let `secretTemplate` carry annotations of cross-namespace replicators (Reflector, kubed,
    /// mittwald replicator). Off by default: they would copy the credential where the token's owner
    /// cannot see or revoke it.
    pub allow_replication_annotations: bool,
}

/// Annotation prefixes of replicators that copy a Secret into other namespaces.
pub const REPLICATOR_PREFIXES: [&str; 3] = [
    "reflector.v1.k8s.emberstack.com/",
    "kubed.appscode.com/",
    "replicator.v1.mittwald.de/",
];

/// The API server's limit on all annotations of one object together.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Checks the whole spec.
pub fn validate(spec: &ApiTokenSpec, policy: Policy) -> Result<ValidSpec, InvalidSpec> {
    if !is_role(&spec.role) {
        return Err(invalid(
            "spec.role",
            "must be 1-63 characters of [a-z0-9._-], starting and ending with [a-z0-9]",
        ));
    }
    let scopes = spec.scopes.as_deref().unwrap_or_default();
    if scopes.len() > 64 {
        return Err(invalid("spec.scopes", "at most 64 scopes"));
    }
    let mut seen = HashSet::new();
    for (i, scope) in scopes.iter().enumerate() {
        scope::check(scope)
            .map_err(|e| invalid(format!("spec.scopes[{i}].{}", e.field), e.reason))?;
        if !seen.insert((scope.type_.as_str(), scope.resource.as_deref())) {
            return Err(invalid(
                format!("spec.scopes[{i}]"),
                "duplicates an earlier scope with the same type and resource",
            ));
        }
    }
    let period = spec
        .rotation
        .as_ref()
        .map(|r| Period::parse(&r.period))
        .transpose()
        .map_err(|e| invalid("spec.rotation.period", e.to_string()))?;
    let overlap = spec
        .rotation
        .as_ref()
        .and_then(|r| r.overlap.as_deref())
        .map(Period::parse_unbounded)
        .transpose()
        .map_err(|e| invalid("spec.rotation.overlap", e.to_string()))?;
    if let (Some(overlap), Some(period)) = (overlap, period)
        && overlap >= period
    {
        return Err(invalid(
            "spec.rotation.overlap",
            format!("must be shorter than spec.rotation.period ({period})"),
        ));
    }
    let format = Format::from(spec.format.as_ref());
    check_format(&format)?;
    if let Some(template) = &spec.secret_template {
        check_template(template, policy)?;
    }
    Ok(ValidSpec {
        role: spec.role.clone(),
        scopes: scopes.iter().map(Scope::canonical).collect(),
        period,
        overlap: overlap.filter(|o| o.as_secs() > 0),
        format,
    })
}

fn check_format(format: &Format) -> Result<(), InvalidSpec> {
    if format.prefix.len() > 16
        || !format
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "spec.format.prefix",
            "must be 0-16 characters of [A-Za-z0-9_-]",
        ));
    }
    if !(8..=64).contains(&format.access_key_length) {
        return Err(invalid("spec.format.accessKeyLength", "must be 8..64"));
    }
    if !(20..=128).contains(&format.secret_key_length) {
        return Err(invalid("spec.format.secretKeyLength", "must be 20..128"));
    }
    Ok(())
}

/// Labels and annotations the API server would refuse on the Secret (so the write could never
/// succeed), and replicator annotations unless the policy allows them.
fn check_template(template: &SecretTemplate, policy: Policy) -> Result<(), InvalidSpec> {
    let labels = template.labels.as_ref().map_or(&EMPTY, |l| l);
    for (key, value) in labels {
        let field = || format!("spec.secretTemplate.labels[{key:?}]");
        check_qualified_name(key).map_err(|reason| invalid(field(), format!("key {reason}")))?;
        if !is_label_value(value) {
            return Err(invalid(
                field(),
                "value must be at most 63 characters of [A-Za-z0-9._-], starting and ending with an alphanumeric",
            ));
        }
    }
    let annotations = template.annotations.as_ref().map_or(&EMPTY, |a| a);
    let mut total = 0;
    for (key, value) in annotations {
        let field = || format!("spec.secretTemplate.annotations[{key:?}]");
        check_qualified_name(key).map_err(|reason| invalid(field(), format!("key {reason}")))?;
        if !policy.allow_replication_annotations
            && REPLICATOR_PREFIXES.iter().any(|p| key.starts_with(p))
        {
            return Err(invalid(
                field(),
                "replicator annotations would copy the credential into other namespaces; \
                 refused unless the operator runs with --allow-replication-annotations",
            ));
        }
        total += key.len() + value.len();
    }
    // tokenmint's own annotations need room too; leave 4 KiB for them.
    if total > ANNOTATIONS_MAX_BYTES - 4096 {
        return Err(invalid(
            "spec.secretTemplate.annotations",
            "may total at most 252 KiB (the API server allows 256 KiB per object, tokenmint needs the rest)",
        ));
    }
    Ok(())
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// `^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`, 1-63 characters: an ApiToken's `spec.role`.
pub fn is_role(role: &str) -> bool {
    let bytes = role.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| edge(b) || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Rotation, TokenFormat};

    fn spec() -> ApiTokenSpec {
        ApiTokenSpec {
            role: "reader".into(),
            ..ApiTokenSpec::default()
        }
    }

    fn scope(text: &str) -> Scope {
        scope::parse(text).unwrap()
    }

    #[test]
    fn a_minimal_spec_is_valid_with_defaults() {
        let valid = validate(&spec(), Policy::default()).unwrap();
        assert_eq!(valid.format, Format::default());
        assert_eq!(valid.period, None);
        assert!(valid.scopes.is_empty());
    }

    #[test]
    fn period_out_of_bounds_names_the_field() {
        let mut s = spec();
        s.rotation = Some(Rotation {
            period: "30s".into(),
            overlap: None,
        });
        let err = validate(&s, Policy::default()).unwrap_err();
        assert_eq!(err.field, "spec.rotation.period");
        assert!(err.to_string().contains("at least 1m"));
    }

    #[test]
    fn a_resource_that_would_read_as_part_of_the_type_is_rejected() {
        let mut s = spec();
        s.scopes = Some(vec![Scope {
            type_: "PIPES".into(),
            resource: Some("READ".into()),
            filter: None,
        }]);
        assert_eq!(
            validate(&s, Policy::default()).unwrap_err().field,
            "spec.scopes[0].resource"
        );
        // Unambiguous: a two-word type, or a resource that is not an upper-case word.
        for (type_, resource) in [
            ("PIPES:READ", "TOP"),
            ("PIPES", "top_pages"),
            ("PIPES", "Read"),
        ] {
            s.scopes = Some(vec![Scope {
                type_: type_.into(),
                resource: Some(resource.into()),
                filter: None,
            }]);
            assert!(
                validate(&s, Policy::default()).is_ok(),
                "{type_} {resource}"
            );
        }
    }

    #[test]
    fn duplicate_scopes_are_rejected_by_index() {
        let mut s = spec();
        s.scopes = Some(vec![
            scope("PIPES:READ:top"),
            scope("DATASOURCES:READ:events"),
            scope("PIPES:READ:top"),
        ]);
        assert_eq!(
            validate(&s, Policy::default()).unwrap_err().field,
            "spec.scopes[2]"
        );
    }

    #[test]
    fn filter_without_resource_is_rejected() {
        let mut s = spec();
        s.scopes = Some(vec![Scope {
            type_: "DATASOURCES:READ".into(),
            resource: None,
            filter: Some("a = 1".into()),
        }]);
        assert_eq!(
            validate(&s, Policy::default()).unwrap_err().field,
            "spec.scopes[0].filter"
        );
    }

    #[test]
    fn bad_role_and_format_name_their_fields() {
        let mut s = spec();
        s.role = "Reader".into();
        assert_eq!(
            validate(&s, Policy::default()).unwrap_err().field,
            "spec.role"
        );
        let mut s = spec();
        s.format = Some(TokenFormat {
            prefix: Some("bad prefix".into()),
            ..TokenFormat::default()
        });
        assert_eq!(
            validate(&s, Policy::default()).unwrap_err().field,
            "spec.format.prefix"
        );
    }

    fn template(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ApiTokenSpec {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut s = spec();
        s.secret_template = Some(SecretTemplate {
            labels: map(labels),
            annotations: map(annotations),
        });
        s
    }

    #[test]
    fn a_filter_that_could_forge_a_line_is_rejected() {
        for filter in ["a = 1\nADMIN", "a\r", "a\u{0}", "a\u{2028}b", "a\u{85}"] {
            let mut s = spec();
            s.scopes = Some(vec![Scope {
                type_: "DATASOURCES:READ".into(),
                resource: Some("events".into()),
                filter: Some(filter.into()),
            }]);
            let err = validate(&s, Policy::default()).unwrap_err();
            assert_eq!(err.field, "spec.scopes[0].filter", "{filter:?}");
        }
        assert!(scope::parse("DATASOURCES:READ:events:a = 1\nADMIN").is_err());
    }

    #[test]
    fn template_labels_and_annotations_the_api_server_would_refuse_name_their_key() {
        let long = "v".repeat(64);
        for (spec, field) in [
            (template(&[("bad key!", "x")], &[]), "labels[\"bad key!\"]"),
            (template(&[("team", &long)], &[]), "labels[\"team\"]"),
            (template(&[("team", "-x")], &[]), "labels[\"team\"]"),
            (
                template(&[("Example.COM/team", "x")], &[]),
                "labels[\"Example.COM/team\"]",
            ),
            (template(&[], &[("/x", "y")]), "annotations[\"/x\"]"),
        ] {
            let err = validate(&spec, Policy::default()).unwrap_err();
            assert_eq!(err.field, format!("spec.secretTemplate.{field}"));
        }
        let huge = "x".repeat(253 * 1024);
        let err = validate(&template(&[], &[("big", &huge)]), Policy::default()).unwrap_err();
        assert_eq!(err.field, "spec.secretTemplate.annotations");
        let fine = template(
            &[("example.com/team", "analytics"), ("tier", "")],
            &[("example.com/note", "any text at all\nwith lines")],
        );
        assert!(validate(&fine, Policy::default()).is_ok());
    }

    #[test]
    fn replicator_annotations_are_refused_unless_allowed() {
        for key in [
            "reflector.v1.k8s.emberstack.com/reflection-allowed",
            "kubed.appscode.com/sync",
            "replicator.v1.mittwald.de/replicate-to",
        ] {
            let s = template(&[], &[(key, "true")]);
            let err = validate(&s, Policy::default()).unwrap_err();
            assert!(err.reason.contains("other namespaces"), "{key}");
            let allowed = Policy {
                allow_replication_annotations: true,
            };
            assert!(validate(&s, allowed).is_ok(), "{key}");
        }
    }

    #[test]
    fn secret_keys_shorter_than_twenty_are_rejected() {
        let mut s = spec();
        s.format = Some(TokenFormat {
            secret_key_length: Some(19),
            ..TokenFormat::default()
        });
        assert_eq!(
            validate(&s, Policy::default()).unwrap_err().field,
            "spec.format.secretKeyLength"
        );
    }
}
