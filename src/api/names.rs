//! Kubernetes' own name rules (apimachinery `util/validation`), as the API server applies them.
//!
//! The CRD schema states these as patterns where it can; these functions re-check them operator-side
//! exactly (lengths per part, which a pattern cannot bound), for selectors, Secret names and keys.

/// RFC 1123 label: 1-63 characters of `[a-z0-9-]`, starting and ending alphanumeric (namespace names).
pub fn is_dns_label(text: &str) -> bool {
    let b = text.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated labels (object names, Secret names).
pub fn is_dns_subdomain(text: &str) -> bool {
    (1..=253).contains(&text.len()) && text.split('.').all(is_dns_label)
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() <= 63
        && b.first().is_none_or(u8::is_ascii_alphanumeric)
        && b.last().is_none_or(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A qualified name (label keys): an optional DNS-subdomain prefix and `/`, then a non-empty name of
/// at most 63 characters of `[A-Za-z0-9._-]` starting and ending alphanumeric. `Err` says what is wrong.
pub fn check_qualified_name(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err("prefix must be a DNS subdomain (lower case, at most 253 characters)");
    }
    if name.is_empty() || !is_label_value(name) {
        return Err(
            "name must be 1-63 characters of [A-Za-z0-9._-], starting and ending with an alphanumeric",
        );
    }
    Ok(())
}

/// A Secret or ConfigMap data key: 1-253 characters of `[-._a-zA-Z0-9]`, not `.` and not starting
/// with `..` (the kubelet projects keys as file names, so these would escape the volume).
pub fn is_data_key(key: &str) -> bool {
    (1..=253).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && key != "."
        && !key.starts_with("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_and_subdomains_follow_rfc_1123() {
        for ok in ["a", "data", "a-b", "0a9", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok:?}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(is_dns_subdomain(&long));
        assert!(!is_dns_subdomain(&format!("{long}e")));
        for bad in ["", "a..b", ".a", "a.", "a.-b", "Pinot"] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
        assert!(is_dns_subdomain("pinot-htpasswd.v2"));
    }

    #[test]
    fn label_values_may_be_empty_but_not_ragged() {
        for ok in ["", "a", "Team_A.b-1", &"x".repeat(63)] {
            assert!(is_label_value(ok), "{ok:?}");
        }
        for bad in ["-a", "a-", "_a", "a b", "a/b", &"x".repeat(64)] {
            assert!(!is_label_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn qualified_names_check_prefix_and_name_separately() {
        for ok in [
            "team",
            "example.com/team",
            "kubernetes.io/metadata.name",
            "A_b",
        ] {
            assert_eq!(check_qualified_name(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "/team",
            "Example.com/team",
            "example.com/",
            "a/b/c",
            "te am",
        ] {
            assert!(check_qualified_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_qualified_name(&format!("{}/x", "a".repeat(254))).is_err());
        assert!(check_qualified_name(&"n".repeat(64)).is_err());
    }

    #[test]
    fn data_keys_cannot_escape_a_volume() {
        for ok in [
            "htpasswd",
            "tokens.json",
            "auth",
            ".hidden",
            "a..b",
            "A-b_c.d",
        ] {
            assert!(is_data_key(ok), "{ok:?}");
        }
        for bad in ["", ".", "..", "..x", "a/b", "a b", &"k".repeat(254)] {
            assert!(!is_data_key(bad), "{bad:?}");
        }
    }
}
