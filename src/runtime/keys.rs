//! The `namespace/name` keys the caches, the queue and the wake-ups share.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// An object's `namespace/name`: one 16-byte pointer in a table where an `ObjectRef` takes 96
/// bytes and two strings.
pub type Key = Box<str>;

/// `namespace/name`, the compact key of a namespaced object (neither part can hold a `/`).
pub fn key_from(namespace: Option<&str>, name: &str) -> Key {
    format!("{}/{name}", namespace.unwrap_or_default()).into()
}

/// The key of the object `meta` describes.
pub fn meta_key(meta: &ObjectMeta) -> Key {
    key_from(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// A key's namespace and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_splits_back_into_namespace_and_name() {
        let key = key_from(Some("team-a"), "ingest");
        assert_eq!(&*key, "team-a/ingest");
        assert_eq!(split_key(&key), ("team-a", "ingest"));
        assert_eq!(split_key("loose"), ("", "loose"));
    }
}
