//! The scope grammar, written once: what a scope's type, resource and row filter may hold, how the
//! string form `TYPE[:resource[:filter]]` (Tinybird's) reads back, and when one scope covers
//! another. Token validation, the verifier's trust, `tokenmint authz` and `kubectl apitoken` all
//! use it; a scope's string form is [`Scope::canonical`].

pub use crate::api::Scope;
use crate::core::invalid::{InvalidSpec, invalid};

/// What a type must look like, as said in errors.
pub const TYPE_RULE: &str =
    "must match ^[A-Z][A-Z_]*(:[A-Z][A-Z_]*)?$ (e.g. ADMIN, DATASOURCES:READ)";
/// What a resource must look like, as said in errors.
pub const RESOURCE_RULE: &str = "must be 1-253 characters of [A-Za-z0-9_.-]";

/// Whether a token holding `held` may do `wanted`: the same type, and the same resource or none (a
/// scope without a resource covers every resource of its type). Filters play no part.
pub fn covers(held: &Scope, wanted: &Scope) -> bool {
    held.type_ == wanted.type_ && (held.resource.is_none() || held.resource == wanted.resource)
}

/// A character that could end or forge a line for a consumer reading the value line by line.
fn breaks_lines(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `^[A-Z][A-Z_]*(:[A-Z][A-Z_]*)?$`.
pub fn is_type(type_: &str) -> bool {
    let word = |w: &str| {
        w.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
            && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
    };
    let mut parts = type_.split(':');
    let first = parts.next().is_some_and(word);
    let second = parts.next().is_none_or(word);
    first && second && parts.next().is_none() && type_.len() <= 64
}

/// 1-253 characters of `[A-Za-z0-9_.-]`.
pub fn is_resource(resource: &str) -> bool {
    (1..=253).contains(&resource.len())
        && resource
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// One scope's fields; `field` is relative to the scope.
pub fn check(scope: &Scope) -> Result<(), InvalidSpec> {
    if !is_type(&scope.type_) {
        return Err(invalid("type", TYPE_RULE));
    }
    if let Some(resource) = &scope.resource
        && !is_resource(resource)
    {
        return Err(invalid("resource", RESOURCE_RULE));
    }
    // The canonical string `TYPE:resource` must read back one way: `PIPES` with resource `READ`
    // would be `PIPES:READ`, the two-word type.
    if let Some(resource) = &scope.resource
        && !scope.type_.contains(':')
        && is_type(resource)
        && !resource.contains(':')
    {
        return Err(invalid(
            "resource",
            "an upper-case resource of a one-word type reads as part of the type (PIPES with resource READ is PIPES:READ)",
        ));
    }
    if let Some(filter) = &scope.filter {
        check_filter(filter).map_err(|reason| invalid("filter", reason))?;
    }
    match (&scope.resource, &scope.filter) {
        (None, Some(_)) => Err(invalid(
            "filter",
            "needs resource: a row filter applies to one resource",
        )),
        _ => Ok(()),
    }
}

/// A row filter's text: 1-1024 characters, none that breaks a line. The reason when not.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() || filter.len() > 1024 {
        Err("must be 1-1024 characters")
    } else if filter.chars().any(breaks_lines) {
        Err("may not contain control characters or line separators")
    } else {
        Ok(())
    }
}

/// Parses Tinybird's `TYPE[:resource[:filter]]` syntax, as used by `kubectl apitoken create --scope`.
///
/// The type may itself hold one `:` (`DATASOURCES:READ`), so a second segment is part of the type when it
/// is an upper-case word, otherwise it is the resource. Everything after the resource is the filter,
/// colons included.
pub fn parse(text: &str) -> Result<Scope, InvalidSpec> {
    let mut parts = text.splitn(2, ':');
    let head = parts.next().unwrap_or_default();
    let mut rest = parts.next();
    let mut type_ = head.to_owned();
    if let Some(r) = rest {
        let (candidate, after) = r.split_once(':').map_or((r, None), |(a, b)| (a, Some(b)));
        if is_type(candidate) && !candidate.contains(':') {
            type_ = format!("{head}:{candidate}");
            rest = after;
        }
    }
    let (resource, filter) = match rest {
        None => (None, None),
        Some(r) => match r.split_once(':') {
            Some((resource, filter)) => (Some(resource.to_owned()), Some(filter.to_owned())),
            None => (Some(r.to_owned()), None),
        },
    };
    let scope = Scope {
        type_,
        resource,
        filter,
    };
    check(&scope).map_err(|e| invalid(format!("scope {text:?}: {}", e.field), e.reason))?;
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tinybird_scope_strings() {
        let cases = [
            ("ADMIN", ("ADMIN", None, None)),
            ("TOKENS", ("TOKENS", None, None)),
            ("DATASOURCES:CREATE", ("DATASOURCES:CREATE", None, None)),
            (
                "PIPES:READ:top_pages",
                ("PIPES:READ", Some("top_pages"), None),
            ),
            (
                "DATASOURCES:READ:events:tenant_id = 42",
                ("DATASOURCES:READ", Some("events"), Some("tenant_id = 42")),
            ),
            (
                "DATASOURCES:READ:table_name:column==1",
                ("DATASOURCES:READ", Some("table_name"), Some("column==1")),
            ),
            (
                "DATASOURCES:READ:t:a:b",
                ("DATASOURCES:READ", Some("t"), Some("a:b")),
            ),
        ];
        for (text, (type_, resource, filter)) in cases {
            let s = parse(text).unwrap();
            assert_eq!(s.type_, type_, "{text}");
            assert_eq!(s.resource.as_deref(), resource, "{text}");
            assert_eq!(s.filter.as_deref(), filter, "{text}");
            assert_eq!(s.canonical(), text);
        }
    }

    #[test]
    fn rejects_malformed_scope_strings() {
        for text in [
            "",
            "admin",
            "PIPES:READ:bad resource",
            "PIPES:READ:top:",
            "A:B:C:",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn scopes_split_into_type_resource_and_filter() {
        let split = |text| parse(text).ok().map(|s| (s.type_, s.resource, s.filter));
        let some = |t: &str, r: Option<&str>, f: Option<&str>| {
            Some((t.to_owned(), r.map(Into::into), f.map(Into::into)))
        };
        assert_eq!(split("ADMIN"), some("ADMIN", None, None));
        assert_eq!(split("TOKENS"), some("TOKENS", None, None));
        assert_eq!(split("PIPES:READ"), some("PIPES:READ", None, None));
        assert_eq!(
            split("PIPES:READ:top_pages"),
            some("PIPES:READ", Some("top_pages"), None)
        );
        assert_eq!(
            split("DATASOURCES:READ:events:a = 1 AND b = 'x:y'"),
            some(
                "DATASOURCES:READ",
                Some("events"),
                Some("a = 1 AND b = 'x:y'")
            )
        );
        assert_eq!(split("TOKENS:mine"), some("TOKENS", Some("mine"), None));
        assert_eq!(split("ADMIN:EVENTS"), some("ADMIN:EVENTS", None, None));
        for bad in [
            "",
            "admin",
            ":READ",
            "PIPES:",
            "PIPES:READ:",
            "PIPES:READ:top pages",
            "PIPES:READ:top_pages:",
            "PIPES:READ::x",
        ] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_scope_without_a_resource_covers_every_resource_of_its_type() {
        let scope = |text| parse(text).unwrap();
        let all = scope("PIPES:READ");
        assert!(covers(&all, &scope("PIPES:READ:top_pages")));
        assert!(covers(&all, &scope("PIPES:READ")));
        assert!(!covers(&all, &scope("PIPES:DROP:top_pages")));
        let one = scope("PIPES:READ:top_pages");
        assert!(covers(&one, &scope("PIPES:READ:top_pages")));
        assert!(!covers(&one, &scope("PIPES:READ:other")));
        assert!(!covers(&one, &scope("PIPES:READ")));
        assert!(!covers(&scope("PIPES"), &scope("PIPES:READ")));
    }
}
