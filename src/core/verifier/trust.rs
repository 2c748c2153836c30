//! Consent: whether a verifier includes a token's credentials. Pure.
//!
//! Consent is two-sided. The token's owner consents by naming the verifier in `spec.audiences`
//! (resolved relative to the token's namespace); the server's owner consents with a `spec.trust`
//! entry that matches the token's namespace and role and grants every scope the token claims. Neither
//! side alone puts a credential into an output, so nobody can push a token into someone else's server,
//! nor pull someone else's token in, nor widen what a trusted token may do by editing it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::api::Scope;
use crate::api::names;
use crate::api::verifier::{
    AudienceReason, AudienceRef, MAX_AUDIENCES, MAX_GRANT_FILTERS, MAX_ROLES, MAX_SCOPE_GRANTS,
    MAX_SELECTOR_TERMS, MAX_SELECTOR_VALUES, MAX_TRUST_ENTRIES, ScopeGrant, TrustEntry,
    VerifierRef,
};
use crate::core::invalid::{InvalidSpec, invalid};
use crate::core::scope::{self, RESOURCE_RULE, TYPE_RULE};
use crate::core::token::validate::is_role;

/// A verifier's `spec.trust`, checked: every selector parsed, every role valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    verifier: VerifierRef,
    rules: Vec<Rule>,
}

/// One trust entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    namespaces: Namespaces,
    /// `None`: any role.
    roles: Option<BTreeSet<String>>,
    scopes: Grants,
}

/// What scopes a trust entry lets a token claim.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Grants {
    /// Any scope: an entry for the verifier's own namespace that lists none.
    Any,
    /// Only these, by type (none at all for an entry that selects other namespaces and lists none).
    Listed(BTreeMap<String, Grant>),
}

/// One [`ScopeGrant`], checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    /// `None`: any resource a scope names.
    resources: Option<BTreeSet<String>>,
    any_resource: bool,
    require_filter: bool,
    /// `None`: any filter.
    filters: Option<BTreeSet<String>>,
}

impl Grants {
    /// The index of the first of `scopes` not granted, if any.
    fn first_not_granted(&self, scopes: &[Scope]) -> Option<usize> {
        let Grants::Listed(grants) = self else {
            return None;
        };
        scopes.iter().position(|scope| {
            let Some(grant) = grants.get(&scope.type_) else {
                return true;
            };
            let resource_ok = match &scope.resource {
                None => grant.any_resource,
                Some(resource) => grant
                    .resources
                    .as_ref()
                    .is_none_or(|r| r.contains(resource)),
            };
            let filter_ok = match (&scope.filter, &grant.filters) {
                (None, _) => !grant.require_filter,
                (Some(_), None) => true,
                (Some(filter), Some(allowed)) => allowed.contains(filter),
            };
            !resource_ok || !filter_ok
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Namespaces {
    /// No selector: the verifier's own namespace.
    Own,
    Selected(Selector),
}

/// A label selector as Kubernetes evaluates it (`metav1.LabelSelectorAsSelector`): every requirement
/// must hold; no requirements select everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// The label is present with one of the values (`matchLabels` is `In` with one value).
    In(String, BTreeSet<String>),
    /// The label is absent, or present with none of the values.
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Parses `selector`, checked as the API server checks a LabelSelector. Errors name the part
    /// under `field` (e.g. `spec.trust[1].namespaceSelector.matchExpressions[0].values`).
    pub fn parse(selector: &LabelSelector, field: &str) -> Result<Selector, InvalidSpec> {
        let labels = selector.match_labels.as_ref();
        let expressions = selector.match_expressions.as_deref().unwrap_or_default();
        if labels.map_or(0, BTreeMap::len) > MAX_SELECTOR_TERMS {
            return Err(invalid(
                format!("{field}.matchLabels"),
                format!("at most {MAX_SELECTOR_TERMS} labels"),
            ));
        }
        if expressions.len() > MAX_SELECTOR_TERMS {
            return Err(invalid(
                format!("{field}.matchExpressions"),
                format!("at most {MAX_SELECTOR_TERMS} expressions"),
            ));
        }
        let mut requirements = Vec::new();
        for (key, value) in labels.into_iter().flatten() {
            let here = format!("{field}.matchLabels[{key:?}]");
            names::check_qualified_name(key)
                .map_err(|reason| invalid(&here, format!("key: {reason}")))?;
            if !names::is_label_value(value) {
                return Err(invalid(here, LABEL_VALUE_RULE));
            }
            requirements.push(Requirement::In(
                key.clone(),
                BTreeSet::from([value.clone()]),
            ));
        }
        for (i, expression) in expressions.iter().enumerate() {
            requirements.push(requirement(
                expression,
                &format!("{field}.matchExpressions[{i}]"),
            )?);
        }
        Ok(Selector { requirements })
    }

    /// Whether a namespace with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }
}

const LABEL_VALUE_RULE: &str = "label values are at most 63 characters of [A-Za-z0-9._-], starting and ending with an alphanumeric";

fn requirement(r: &LabelSelectorRequirement, field: &str) -> Result<Requirement, InvalidSpec> {
    names::check_qualified_name(&r.key)
        .map_err(|reason| invalid(format!("{field}.key"), reason))?;
    let values = r.values.as_deref().unwrap_or_default();
    if values.len() > MAX_SELECTOR_VALUES {
        return Err(invalid(
            format!("{field}.values"),
            format!("at most {MAX_SELECTOR_VALUES} values"),
        ));
    }
    if let Some(i) = values.iter().position(|v| !names::is_label_value(v)) {
        return Err(invalid(format!("{field}.values[{i}]"), LABEL_VALUE_RULE));
    }
    let key = r.key.clone();
    let set = || values.iter().cloned().collect::<BTreeSet<_>>();
    let needs_values = || {
        invalid(
            format!("{field}.values"),
            format!("must be non-empty for operator {}", r.operator),
        )
    };
    let takes_none = || {
        invalid(
            format!("{field}.values"),
            format!("must be empty for operator {}", r.operator),
        )
    };
    match r.operator.as_str() {
        "In" if values.is_empty() => Err(needs_values()),
        "NotIn" if values.is_empty() => Err(needs_values()),
        "In" => Ok(Requirement::In(key, set())),
        "NotIn" => Ok(Requirement::NotIn(key, set())),
        "Exists" | "DoesNotExist" if !values.is_empty() => Err(takes_none()),
        "Exists" => Ok(Requirement::Exists(key)),
        "DoesNotExist" => Ok(Requirement::DoesNotExist(key)),
        _ => Err(invalid(
            format!("{field}.operator"),
            "must be In, NotIn, Exists or DoesNotExist",
        )),
    }
}

impl Trust {
    /// Checks `spec.trust` of `verifier`. Absent means one entry: the verifier's namespace, any role.
    pub fn parse(
        verifier: VerifierRef,
        entries: Option<&[TrustEntry]>,
    ) -> Result<Trust, InvalidSpec> {
        let Some(entries) = entries else {
            return Ok(Trust {
                verifier,
                rules: vec![Rule {
                    namespaces: Namespaces::Own,
                    roles: None,
                    scopes: Grants::Any,
                }],
            });
        };
        if entries.is_empty() || entries.len() > MAX_TRUST_ENTRIES {
            // An empty list would trust nobody, and tools that drop empty lists would turn it into
            // "this namespace": ambiguous, so refused (the schema says minItems 1 too).
            return Err(invalid(
                "spec.trust",
                format!("1 to {MAX_TRUST_ENTRIES} entries; omit the field to trust this namespace"),
            ));
        }
        let rules = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| rule(entry, &format!("spec.trust[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Trust { verifier, rules })
    }

    /// The verifier this trust belongs to.
    pub fn verifier(&self) -> &VerifierRef {
        &self.verifier
    }

    /// Whether the verifier includes `token`'s credentials.
    pub fn decide(&self, token: &Candidate<'_>) -> Verdict {
        let named = token
            .audiences
            .iter()
            .any(|a| a.names(token.namespace, &self.verifier));
        if !named {
            return Verdict::NotNamed;
        }
        // The most specific reason wins: a scope not granted, else a role, else the namespace.
        let mut rejection = Rejection::NamespaceNotTrusted;
        for rule in &self.rules {
            let namespace_matches = match &rule.namespaces {
                Namespaces::Own => token.namespace == self.verifier.namespace,
                // Unknown labels select nothing: fail closed until the namespace is seen.
                Namespaces::Selected(selector) => {
                    token.namespace_labels.is_some_and(|l| selector.matches(l))
                }
            };
            if !namespace_matches {
                continue;
            }
            if !rule.roles.as_ref().is_none_or(|r| r.contains(token.role)) {
                if rejection == Rejection::NamespaceNotTrusted {
                    rejection = Rejection::RoleNotTrusted;
                }
                continue;
            }
            match rule.scopes.first_not_granted(token.scopes) {
                None => return Verdict::Accepted,
                Some(index) => {
                    if !matches!(rejection, Rejection::ScopeNotTrusted { .. }) {
                        rejection = Rejection::ScopeNotTrusted { index };
                    }
                }
            }
        }
        Verdict::Rejected(rejection)
    }
}

fn rule(entry: &TrustEntry, field: &str) -> Result<Rule, InvalidSpec> {
    let namespaces = match &entry.namespace_selector {
        None => Namespaces::Own,
        Some(selector) => Namespaces::Selected(Selector::parse(
            selector,
            &format!("{field}.namespaceSelector"),
        )?),
    };
    let roles = entry
        .roles
        .as_deref()
        .map(|roles| {
            allow_list(
                roles,
                &format!("{field}.roles"),
                MAX_ROLES,
                "role",
                |role| {
                    is_role(role).then_some(()).ok_or(
                        "must be 1-63 characters of [a-z0-9._-], starting and ending with [a-z0-9]",
                    )
                },
            )
        })
        .transpose()?;
    let scopes = match (&entry.scopes, &namespaces) {
        (None, Namespaces::Own) => Grants::Any,
        (None, Namespaces::Selected(_)) => Grants::Listed(BTreeMap::new()),
        (Some(grants), _) => Grants::Listed(grants_of(grants, &format!("{field}.scopes"))?),
    };
    Ok(Rule {
        namespaces,
        roles,
        scopes,
    })
}

/// A list given as an allow-list (`roles`, a grant's `resources`): 1 to `max` items, each valid by
/// `check`, none twice. Errors name the list or the item under `field`.
fn allow_list(
    items: &[String],
    field: &str,
    max: usize,
    what: &str,
    check: impl Fn(&str) -> Result<(), &'static str>,
) -> Result<BTreeSet<String>, InvalidSpec> {
    if items.is_empty() || items.len() > max {
        return Err(invalid(
            field,
            format!("1 to {max} {what}s; omit the field to allow any"),
        ));
    }
    let mut set = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        check(item).map_err(|reason| invalid(format!("{field}[{i}]"), reason))?;
        if !set.insert(item.clone()) {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("duplicates an earlier {what}"),
            ));
        }
    }
    Ok(set)
}

fn grants_of(grants: &[ScopeGrant], field: &str) -> Result<BTreeMap<String, Grant>, InvalidSpec> {
    if grants.len() > MAX_SCOPE_GRANTS {
        return Err(invalid(field, format!("at most {MAX_SCOPE_GRANTS} grants")));
    }
    let mut by_type = BTreeMap::new();
    for (i, grant) in grants.iter().enumerate() {
        let here = format!("{field}[{i}]");
        if !scope::is_type(&grant.type_) {
            return Err(invalid(format!("{here}.type"), TYPE_RULE));
        }
        let resources = grant
            .resources
            .as_deref()
            .map(|list| {
                let here = format!("{here}.resources");
                allow_list(list, &here, MAX_SCOPE_GRANTS, "resource", |resource| {
                    scope::is_resource(resource)
                        .then_some(())
                        .ok_or(RESOURCE_RULE)
                })
            })
            .transpose()?;
        let filters = grant
            .filters
            .as_deref()
            .map(|list| {
                let here = format!("{here}.filters");
                allow_list(list, &here, MAX_GRANT_FILTERS, "filter", |filter| {
                    scope::check_filter(filter)
                })
            })
            .transpose()?;
        let checked = Grant {
            resources,
            filters,
            any_resource: grant.any_resource.unwrap_or(false),
            require_filter: grant.require_filter.unwrap_or(false),
        };
        if by_type.insert(grant.type_.clone(), checked).is_some() {
            return Err(invalid(
                format!("{here}.type"),
                "duplicates an earlier grant of the same type",
            ));
        }
    }
    Ok(by_type)
}

/// What [`Trust::decide`] needs to know about a token.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The token's namespace.
    pub namespace: &'a str,
    /// The token's `spec.role`.
    pub role: &'a str,
    /// The token's `spec.audiences`.
    pub audiences: &'a [AudienceRef],
    /// The token's `spec.scopes`.
    pub scopes: &'a [Scope],
    /// Labels of the token's namespace; `None` while the namespace is not known, which no selector matches.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

/// Whether a verifier includes a token's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The token does not name this verifier: it is none of the verifier's business, and not counted
    /// in `status.rejected`.
    NotNamed,
    /// Both sides consent: the token's credentials belong in the outputs while it is Active.
    Accepted,
    /// The token names the verifier but the verifier does not trust it; counted in `status.rejected`.
    Rejected(Rejection),
}

/// Why a verifier does not trust a token that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No trust entry selects the token's namespace.
    NamespaceNotTrusted,
    /// Entries select the namespace, but none lists the token's role.
    RoleNotTrusted,
    /// Entries select the namespace and the role, but none grants `spec.scopes[index]`.
    ScopeNotTrusted { index: usize },
}

impl Verdict {
    /// The reason for the token's `status.audiences` item; `None` when the token does not name the verifier.
    pub fn audience_reason(self) -> Option<AudienceReason> {
        match self {
            Verdict::NotNamed => None,
            Verdict::Accepted => Some(AudienceReason::Accepted),
            Verdict::Rejected(Rejection::NamespaceNotTrusted) => {
                Some(AudienceReason::NamespaceNotTrusted)
            }
            Verdict::Rejected(Rejection::RoleNotTrusted) => Some(AudienceReason::RoleNotTrusted),
            Verdict::Rejected(Rejection::ScopeNotTrusted { .. }) => {
                Some(AudienceReason::ScopeNotTrusted)
            }
        }
    }

    /// Which scope was not granted, as `spec.scopes[i] (<canonical>)`, for the token's
    /// `status.audiences` item.
    pub fn audience_message(self, scopes: &[Scope]) -> Option<String> {
        let Verdict::Rejected(Rejection::ScopeNotTrusted { index }) = self else {
            return None;
        };
        let canonical = scopes.get(index).map(Scope::canonical).unwrap_or_default();
        Some(format!(
            "spec.scopes[{index}] ({canonical}) is not granted by the verifier's trust"
        ))
    }
}

/// Checks an ApiToken's `spec.audiences` (in `token_namespace`) beyond what the schema can: lengths
/// of each part, and no two items naming the same verifier (`pinot` and `data/pinot` in `data`).
/// Returns the verifiers named, in spec order.
pub fn validate_audiences(
    audiences: &[AudienceRef],
    token_namespace: &str,
) -> Result<Vec<VerifierRef>, InvalidSpec> {
    if audiences.len() > MAX_AUDIENCES {
        return Err(invalid(
            "spec.audiences",
            format!("at most {MAX_AUDIENCES} verifiers"),
        ));
    }
    let mut seen: Vec<VerifierRef> = Vec::with_capacity(audiences.len());
    for (i, audience) in audiences.iter().enumerate() {
        let verifier = audience.resolve(token_namespace).map_err(|e| {
            invalid(
                format!("spec.audiences[{i}]"),
                format!("must be <namespace>/<name> or <name> of an ApiTokenVerifier: {e}"),
            )
        })?;
        if let Some(j) = seen.iter().position(|v| v == &verifier) {
            return Err(invalid(
                format!("spec.audiences[{i}]"),
                format!("names the same verifier ({verifier}) as spec.audiences[{j}]"),
            ));
        }
        seen.push(verifier);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> VerifierRef {
        VerifierRef {
            namespace: "data".into(),
            name: "pinot".into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        match_expressions: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!match_expressions.is_empty()).then_some(match_expressions),
        }
    }

    fn entry(selector: Option<LabelSelector>, roles: Option<&[&str]>) -> TrustEntry {
        TrustEntry {
            namespace_selector: selector,
            roles: roles.map(|r| r.iter().map(|s| s.to_string()).collect()),
            scopes: None,
        }
    }

    fn trust(entries: Option<Vec<TrustEntry>>) -> Trust {
        Trust::parse(verifier(), entries.as_deref()).unwrap()
    }

    struct Token {
        namespace: &'static str,
        role: &'static str,
        audiences: Vec<AudienceRef>,
        labels: Option<BTreeMap<String, String>>,
        scopes: Vec<Scope>,
    }

    fn token(namespace: &'static str, role: &'static str, audiences: &[&str]) -> Token {
        Token {
            namespace,
            role,
            audiences: audiences.iter().map(|a| AudienceRef::from(*a)).collect(),
            labels: Some(labels(&[("kubernetes.io/metadata.name", namespace)])),
            scopes: Vec::new(),
        }
    }

    fn with_labels(mut t: Token, pairs: &[(&str, &str)]) -> Token {
        let mut l = labels(pairs);
        l.insert("kubernetes.io/metadata.name".into(), t.namespace.into());
        t.labels = Some(l);
        t
    }

    fn decide(trust: &Trust, t: &Token) -> Verdict {
        trust.decide(&Candidate {
            namespace: t.namespace,
            role: t.role,
            audiences: &t.audiences,
            scopes: &t.scopes,
            namespace_labels: t.labels.as_ref(),
        })
    }

    fn claiming(mut t: Token, scopes: &[&str]) -> Token {
        t.scopes = scopes
            .iter()
            .map(|s| crate::core::scope::parse(s).unwrap())
            .collect();
        t
    }

    fn grant(type_: &str, resources: Option<&[&str]>, any: bool, filter: bool) -> ScopeGrant {
        ScopeGrant {
            type_: type_.into(),
            resources: resources.map(|r| r.iter().map(|s| s.to_string()).collect()),
            any_resource: any.then_some(true),
            require_filter: filter.then_some(true),
            filters: None,
        }
    }

    fn not_scope(index: usize) -> Verdict {
        Verdict::Rejected(Rejection::ScopeNotTrusted { index })
    }

    #[test]
    fn another_namespace_gets_only_the_scopes_its_entry_grants() {
        let team = || selector(&[("team", "analytics")], vec![]);
        let tenant = |scopes: &[&str]| {
            claiming(
                with_labels(
                    token("analytics", "reader", &["data/pinot"]),
                    &[("team", "analytics")],
                ),
                scopes,
            )
        };
        // No grants: a token of another namespace may claim no scope at all; its own namespace any.
        let bare = trust(Some(vec![entry(Some(team()), None), entry(None, None)]));
        assert_eq!(decide(&bare, &tenant(&[])), ACCEPTED);
        assert_eq!(decide(&bare, &tenant(&["ADMIN"])), not_scope(0));
        let own = claiming(token("data", "reader", &["pinot"]), &["ADMIN"]);
        assert_eq!(decide(&bare, &own), ACCEPTED);

        let mut granted = entry(Some(team()), None);
        granted.scopes = Some(vec![
            grant("PIPES:READ", Some(&["top_pages"]), false, false),
            grant("DATASOURCES:READ", Some(&["events"]), false, true),
            grant("TOKENS", None, true, false),
        ]);
        let t = trust(Some(vec![granted]));
        for (scopes, verdict) in [
            (&["PIPES:READ:top_pages"][..], ACCEPTED),
            (&["DATASOURCES:READ:events:tenant_id = 42"], ACCEPTED),
            (&["TOKENS"], ACCEPTED),
            (&["TOKENS:anything"], ACCEPTED),
            // Another type, another resource, no resource (every resource), no required filter.
            (&["PIPES:READ:top_pages", "ADMIN"], not_scope(1)),
            (&["PIPES:READ:other"], not_scope(0)),
            (&["PIPES:READ"], not_scope(0)),
            (&["DATASOURCES:READ:events"], not_scope(0)),
            (&["DATASOURCES:APPEND:events"], not_scope(0)),
        ] {
            assert_eq!(decide(&t, &tenant(scopes)), verdict, "{scopes:?}");
        }
        let message = not_scope(1).audience_message(&tenant(&["TOKENS", "ADMIN"]).scopes);
        assert_eq!(
            message.as_deref(),
            Some("spec.scopes[1] (ADMIN) is not granted by the verifier's trust")
        );
    }

    #[test]
    fn a_pinned_filter_is_the_only_one_a_tenant_may_claim() {
        // Tenant 7's namespace may read `events` only through the filter the server owner wrote.
        let mut seven = entry(Some(selector(&[("tenant", "7")], vec![])), None);
        let mut read = grant("DATASOURCES:READ", Some(&["events"]), false, true);
        read.filters = Some(vec!["tenant_id = 7".into()]);
        seven.scopes = Some(vec![read]);
        let t = trust(Some(vec![seven]));
        let tenant = |scopes: &[&str]| {
            claiming(
                with_labels(
                    token("tenant-7", "reader", &["data/pinot"]),
                    &[("tenant", "7")],
                ),
                scopes,
            )
        };
        for (scopes, verdict) in [
            (&["DATASOURCES:READ:events:tenant_id = 7"][..], ACCEPTED),
            // Another tenant's filter, a filter that widens, no filter, another table.
            (&["DATASOURCES:READ:events:tenant_id = 42"], not_scope(0)),
            (
                &["DATASOURCES:READ:events:tenant_id = 7 OR true"],
                not_scope(0),
            ),
            (&["DATASOURCES:READ:events"], not_scope(0)),
            (&["DATASOURCES:READ:events_42:tenant_id = 7"], not_scope(0)),
        ] {
            assert_eq!(decide(&t, &tenant(scopes)), verdict, "{scopes:?}");
        }
        let bad = |filters: Vec<String>| {
            let mut e = entry(Some(LabelSelector::default()), None);
            let mut g = grant("DATASOURCES:READ", None, true, false);
            g.filters = Some(filters);
            e.scopes = Some(vec![g]);
            Trust::parse(verifier(), Some(&[e])).unwrap_err().field
        };
        assert_eq!(bad(vec![]), "spec.trust[0].scopes[0].filters");
        assert_eq!(
            bad(vec!["a = 1".into(), "a = 1".into()]),
            "spec.trust[0].scopes[0].filters[1]"
        );
        assert_eq!(
            bad(vec!["a = 1\n OR true".into()]),
            "spec.trust[0].scopes[0].filters[0]"
        );
    }

    #[test]
    fn a_scope_rejection_outranks_a_role_rejection_and_any_entry_may_accept() {
        let team = || selector(&[("team", "analytics")], vec![]);
        let mut readers = entry(Some(team()), Some(&["reader"]));
        readers.scopes = Some(vec![grant("PIPES:READ", None, false, false)]);
        let mut admins = entry(Some(team()), Some(&["admin"]));
        admins.scopes = Some(vec![grant("ADMIN", None, true, false)]);
        let t = trust(Some(vec![readers, admins]));
        let tenant = |role, scopes: &[&str]| {
            claiming(
                with_labels(
                    token("analytics", role, &["data/pinot"]),
                    &[("team", "analytics")],
                ),
                scopes,
            )
        };
        assert_eq!(decide(&t, &tenant("reader", &["ADMIN"])), not_scope(0));
        assert_eq!(decide(&t, &tenant("admin", &["ADMIN"])), ACCEPTED);
        assert_eq!(decide(&t, &tenant("writer", &["ADMIN"])), NOT_ROLE);
        assert_eq!(
            not_scope(0).audience_reason(),
            Some(AudienceReason::ScopeNotTrusted)
        );
    }

    #[test]
    fn grants_are_checked_and_name_their_field() {
        let bad = |g: ScopeGrant| {
            let mut e = entry(Some(LabelSelector::default()), None);
            e.scopes = Some(vec![grant("TOKENS", None, false, false), g]);
            Trust::parse(verifier(), Some(&[e])).unwrap_err().field
        };
        assert_eq!(
            bad(grant("pipes", None, false, false)),
            "spec.trust[0].scopes[1].type"
        );
        assert_eq!(
            bad(grant("TOKENS", None, false, false)),
            "spec.trust[0].scopes[1].type"
        );
        assert_eq!(
            bad(grant("PIPES:READ", Some(&[]), false, false)),
            "spec.trust[0].scopes[1].resources"
        );
        assert_eq!(
            bad(grant("PIPES:READ", Some(&["a", "a"]), false, false)),
            "spec.trust[0].scopes[1].resources[1]"
        );
        assert_eq!(
            bad(grant("PIPES:READ", Some(&["a b"]), false, false)),
            "spec.trust[0].scopes[1].resources[0]"
        );
    }

    const ACCEPTED: Verdict = Verdict::Accepted;
    const NOT_NS: Verdict = Verdict::Rejected(Rejection::NamespaceNotTrusted);
    const NOT_ROLE: Verdict = Verdict::Rejected(Rejection::RoleNotTrusted);

    #[test]
    fn absent_trust_accepts_own_namespace_any_role_and_nothing_else() {
        let t = trust(None);
        assert_eq!(decide(&t, &token("data", "reader", &["pinot"])), ACCEPTED);
        assert_eq!(
            decide(&t, &token("data", "admin", &["data/pinot"])),
            ACCEPTED
        );
        assert_eq!(
            decide(&t, &token("analytics", "reader", &["data/pinot"])),
            NOT_NS
        );
    }

    #[test]
    fn a_token_that_does_not_name_the_verifier_is_not_its_business() {
        let t = trust(Some(vec![entry(Some(selector(&[], vec![])), None)]));
        for audiences in [&[][..], &["pinot"], &["other/pinot"], &["data/trino"]] {
            // "pinot" from analytics means analytics/pinot, not data/pinot.
            let candidate = token("analytics", "reader", audiences);
            assert_eq!(decide(&t, &candidate), Verdict::NotNamed, "{audiences:?}");
        }
        assert_eq!(decide(&t, &token("data", "reader", &[])), Verdict::NotNamed);
    }

    #[test]
    fn consent_needs_both_the_audience_and_a_trust_entry() {
        let analytics = selector(&[("team", "analytics")], vec![]);
        let t = trust(Some(vec![entry(
            Some(analytics),
            Some(&["reader", "writer"]),
        )]));
        let named = with_labels(
            token("analytics", "reader", &["data/pinot"]),
            &[("team", "analytics")],
        );
        assert_eq!(decide(&t, &named), ACCEPTED);
        let unnamed = with_labels(token("analytics", "reader", &[]), &[("team", "analytics")]);
        assert_eq!(decide(&t, &unnamed), Verdict::NotNamed);
        let untrusted = with_labels(
            token("sales", "reader", &["data/pinot"]),
            &[("team", "sales")],
        );
        assert_eq!(decide(&t, &untrusted), NOT_NS);
    }

    #[test]
    fn a_selected_namespace_with_an_unlisted_role_is_rejected_for_its_role() {
        let t = trust(Some(vec![
            entry(
                Some(selector(&[("team", "analytics")], vec![])),
                Some(&["reader"]),
            ),
            entry(None, Some(&["admin"])),
        ]));
        let analytics = |role| {
            with_labels(
                token("analytics", role, &["data/pinot"]),
                &[("team", "analytics")],
            )
        };
        assert_eq!(decide(&t, &analytics("reader")), ACCEPTED);
        assert_eq!(decide(&t, &analytics("writer")), NOT_ROLE);
        assert_eq!(decide(&t, &token("data", "admin", &["pinot"])), ACCEPTED);
        assert_eq!(decide(&t, &token("data", "reader", &["pinot"])), NOT_ROLE);
    }

    #[test]
    fn a_selector_does_not_include_the_own_namespace_unless_it_matches() {
        let t = trust(Some(vec![entry(
            Some(selector(&[("team", "analytics")], vec![])),
            None,
        )]));
        assert_eq!(decide(&t, &token("data", "reader", &["pinot"])), NOT_NS);
    }

    #[test]
    fn an_empty_selector_selects_every_namespace() {
        let t = trust(Some(vec![entry(Some(LabelSelector::default()), None)]));
        assert_eq!(
            decide(&t, &token("anywhere", "x", &["data/pinot"])),
            ACCEPTED
        );
    }

    #[test]
    fn unknown_namespace_labels_select_nothing() {
        let t = trust(Some(vec![entry(
            Some(selector(&[], vec![expr("team", "DoesNotExist", None)])),
            None,
        )]));
        let mut unseen = token("analytics", "reader", &["data/pinot"]);
        unseen.labels = None;
        assert_eq!(decide(&t, &unseen), NOT_NS);
        // The own namespace needs no labels.
        let own = trust(None);
        let mut unseen = token("data", "reader", &["pinot"]);
        unseen.labels = None;
        assert_eq!(decide(&own, &unseen), ACCEPTED);
    }

    #[test]
    fn selectors_evaluate_like_kubernetes() {
        let team = |pairs: &[(&str, &str)]| labels(pairs);
        let cases: Vec<(LabelSelector, BTreeMap<String, String>, bool)> = vec![
            (selector(&[], vec![]), team(&[]), true),
            (
                selector(&[("team", "a")], vec![]),
                team(&[("team", "a")]),
                true,
            ),
            (
                selector(&[("team", "a")], vec![]),
                team(&[("team", "b")]),
                false,
            ),
            (selector(&[("team", "a")], vec![]), team(&[]), false),
            (
                selector(&[], vec![expr("team", "In", Some(&["a", "b"]))]),
                team(&[("team", "b")]),
                true,
            ),
            (
                selector(&[], vec![expr("team", "In", Some(&["a", "b"]))]),
                team(&[("team", "c")]),
                false,
            ),
            (
                selector(&[], vec![expr("team", "In", Some(&["a"]))]),
                team(&[]),
                false,
            ),
            (
                selector(&[], vec![expr("team", "NotIn", Some(&["a"]))]),
                team(&[("team", "b")]),
                true,
            ),
            (
                selector(&[], vec![expr("team", "NotIn", Some(&["a"]))]),
                team(&[("team", "a")]),
                false,
            ),
            // NotIn holds when the label is absent, as in Kubernetes.
            (
                selector(&[], vec![expr("team", "NotIn", Some(&["a"]))]),
                team(&[]),
                true,
            ),
            (
                selector(&[], vec![expr("team", "Exists", None)]),
                team(&[("team", "")]),
                true,
            ),
            (
                selector(&[], vec![expr("team", "Exists", None)]),
                team(&[("tier", "x")]),
                false,
            ),
            (
                selector(&[], vec![expr("team", "DoesNotExist", None)]),
                team(&[]),
                true,
            ),
            (
                selector(&[], vec![expr("team", "DoesNotExist", None)]),
                team(&[("team", "a")]),
                false,
            ),
            // matchLabels and matchExpressions are ANDed.
            (
                selector(&[("team", "a")], vec![expr("env", "In", Some(&["prod"]))]),
                team(&[("team", "a"), ("env", "dev")]),
                false,
            ),
            (
                selector(&[("team", "a")], vec![expr("env", "In", Some(&["prod"]))]),
                team(&[("team", "a"), ("env", "prod")]),
                true,
            ),
            // Values are exact and case-sensitive.
            (
                selector(&[("team", "A")], vec![]),
                team(&[("team", "a")]),
                false,
            ),
        ];
        for (i, (sel, labels, expected)) in cases.into_iter().enumerate() {
            let parsed = Selector::parse(&sel, "s").unwrap();
            assert_eq!(
                parsed.matches(&labels),
                expected,
                "case {i}: {sel:?} on {labels:?}"
            );
        }
    }

    fn parse_error(entries: Vec<TrustEntry>) -> InvalidSpec {
        Trust::parse(verifier(), Some(&entries)).unwrap_err()
    }

    #[test]
    fn an_invalid_selector_names_its_field() {
        let one = |e: LabelSelectorRequirement| {
            vec![
                entry(None, None),
                entry(
                    Some(selector(&[], vec![expr("ok", "Exists", None), e])),
                    None,
                ),
            ]
        };
        let at = "spec.trust[1].namespaceSelector.matchExpressions[1]";
        for (requirement, field) in [
            (
                expr("team", "Equals", Some(&["a"])),
                format!("{at}.operator"),
            ),
            (expr("team", "in", Some(&["a"])), format!("{at}.operator")),
            (expr("team", "In", None), format!("{at}.values")),
            (expr("team", "NotIn", Some(&[])), format!("{at}.values")),
            (expr("team", "Exists", Some(&["a"])), format!("{at}.values")),
            (
                expr("team", "DoesNotExist", Some(&["a"])),
                format!("{at}.values"),
            ),
            (
                expr("team", "In", Some(&["ok", "not ok"])),
                format!("{at}.values[1]"),
            ),
            (expr("bad key", "Exists", None), format!("{at}.key")),
            (expr("", "Exists", None), format!("{at}.key")),
        ] {
            assert_eq!(
                parse_error(one(requirement.clone())).field,
                field,
                "{requirement:?}"
            );
        }
        let err = parse_error(vec![entry(Some(selector(&[("team", "-x")], vec![])), None)]);
        assert_eq!(
            err.field,
            r#"spec.trust[0].namespaceSelector.matchLabels["team"]"#
        );
        let err = parse_error(vec![entry(
            Some(selector(&[("Bad.io/team", "x")], vec![])),
            None,
        )]);
        assert_eq!(
            err.field,
            r#"spec.trust[0].namespaceSelector.matchLabels["Bad.io/team"]"#
        );
        assert!(err.reason.starts_with("key: prefix"), "{}", err.reason);
    }

    #[test]
    fn trust_and_roles_lists_are_bounded_and_never_empty() {
        assert_eq!(parse_error(vec![]).field, "spec.trust");
        assert_eq!(parse_error(vec![entry(None, None); 33]).field, "spec.trust");
        assert!(Trust::parse(verifier(), Some(&vec![entry(None, None); 32])).is_ok());
        assert_eq!(
            parse_error(vec![entry(None, Some(&[]))]).field,
            "spec.trust[0].roles"
        );
        let many: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            parse_error(vec![entry(None, Some(&many))]).field,
            "spec.trust[0].roles"
        );
        assert_eq!(
            parse_error(vec![entry(None, Some(&["reader", "Reader"]))]).field,
            "spec.trust[0].roles[1]"
        );
        assert_eq!(
            parse_error(vec![entry(None, Some(&["reader", "reader"]))]).field,
            "spec.trust[0].roles[1]"
        );
    }

    #[test]
    fn selectors_are_bounded() {
        let many: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        let sel = LabelSelector {
            match_labels: Some(many.into_iter().collect()),
            match_expressions: None,
        };
        assert_eq!(
            parse_error(vec![entry(Some(sel), None)]).field,
            "spec.trust[0].namespaceSelector.matchLabels"
        );
        let values: Vec<String> = (0..65).map(|i| format!("v{i}")).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let sel = selector(&[], vec![expr("k", "In", Some(&values))]);
        assert_eq!(
            parse_error(vec![entry(Some(sel), None)]).field,
            "spec.trust[0].namespaceSelector.matchExpressions[0].values"
        );
    }

    #[test]
    fn audiences_resolve_relative_to_the_token_namespace() {
        let refs = [AudienceRef::from("pinot"), AudienceRef::from("data/trino")];
        let resolved = validate_audiences(&refs, "analytics").unwrap();
        assert_eq!(
            resolved.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["analytics/pinot", "data/trino"]
        );
    }

    #[test]
    fn audiences_naming_one_verifier_twice_are_rejected() {
        let refs = [
            AudienceRef::from("data/pinot"),
            AudienceRef::from("trino"),
            AudienceRef::from("pinot"),
        ];
        let err = validate_audiences(&refs, "data").unwrap_err();
        assert_eq!(err.field, "spec.audiences[2]");
        assert!(err.reason.contains("spec.audiences[0]"), "{}", err.reason);
    }

    #[test]
    fn malformed_audiences_name_their_item() {
        let long_ns = format!("{}/pinot", "n".repeat(64));
        let long_name = "p".repeat(254);
        for bad in [
            "",
            "/pinot",
            "data/",
            "Data/pinot",
            "data/pi_not",
            "a/b/c",
            &long_ns,
            &long_name,
        ] {
            let refs = [AudienceRef::from("ok"), AudienceRef::from(bad)];
            let err = validate_audiences(&refs, "data").unwrap_err();
            assert_eq!(err.field, "spec.audiences[1]", "{bad:?}");
        }
        let refs = vec![AudienceRef::from("x"); 17];
        assert_eq!(
            validate_audiences(&refs, "data").unwrap_err().field,
            "spec.audiences"
        );
        assert!(AudienceRef::from("data/pinot.v2").resolve("x").is_ok());
    }

    #[test]
    fn verdicts_map_to_audience_reasons() {
        assert_eq!(Verdict::NotNamed.audience_reason(), None);
        assert_eq!(ACCEPTED.audience_reason(), Some(AudienceReason::Accepted));
        assert_eq!(
            NOT_NS.audience_reason(),
            Some(AudienceReason::NamespaceNotTrusted)
        );
        assert_eq!(
            NOT_ROLE.audience_reason(),
            Some(AudienceReason::RoleNotTrusted)
        );
    }
}
