//! What can go wrong in one reconcile of a token, and how it is told apart.

/// What can go wrong in one reconcile. Messages name the object, never credential material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ApiToken has no namespace")]
    NoNamespace,
    #[error("reading Secret {name}: {source}")]
    ReadSecret { name: String, source: kube::Error },
    #[error("writing Secret {name}: {source}")]
    WriteSecret { name: String, source: kube::Error },
    #[error("deleting Secret {name}: {source}")]
    DeleteSecret { name: String, source: kube::Error },
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("Secret {name} kept changing under us; will retry")]
    Contended { name: String },
    #[error("the cached copy of the ApiToken could not be read back; will retry")]
    CachedCopy,
}

impl Error {
    /// Whether the token's namespace is gone or being deleted: nothing can be written there, and
    /// retrying at the usual pace would only load the API server (and a cluster-wide operator
    /// once kept hundreds of such tokens of a deleted namespace retrying for ever).
    pub fn namespace_gone(&self) -> bool {
        let source = match self {
            Error::ReadSecret { source, .. }
            | Error::WriteSecret { source, .. }
            | Error::DeleteSecret { source, .. }
            | Error::WriteStatus(source) => source,
            _ => return false,
        };
        let kube::Error::Api(status) = source else {
            return false;
        };
        let details = status.details.as_ref();
        let namespace_missing =
            status.code == 404 && details.is_some_and(|d| d.kind == "namespaces");
        let terminating = status.code == 403
            && details.is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"));
        namespace_missing
            || terminating
            || status.message.contains("because it is being terminated")
    }

    /// A fixed label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoNamespace => "no_namespace",
            Error::ReadSecret { .. } => "read_secret",
            Error::WriteSecret { .. } => "write_secret",
            Error::DeleteSecret { .. } => "delete_secret",
            Error::WriteStatus(_) => "write_status",
            Error::Contended { .. } => "contended",
            Error::CachedCopy => "cached_copy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A refusal as the API server sends it.
    fn failed(code: u16, kind: &str, cause: Option<&str>) -> Error {
        let causes: Vec<serde_json::Value> = cause
            .map(|reason| json!({"reason": reason, "message": "m"}))
            .into_iter()
            .collect();
        let status = serde_json::from_value(json!({
            "code": code, "message": "refused", "reason": "x", "status": "Failure",
            "details": {"kind": kind, "name": "n", "causes": causes},
        }))
        .unwrap();
        Error::WriteSecret {
            name: "s".into(),
            source: kube::Error::Api(Box::new(status)),
        }
    }

    #[test]
    fn a_missing_or_terminating_namespace_is_told_apart_from_other_refusals() {
        assert!(failed(404, "namespaces", None).namespace_gone());
        assert!(failed(403, "secrets", Some("NamespaceTerminating")).namespace_gone());
        assert!(!failed(404, "secrets", None).namespace_gone());
        assert!(!failed(403, "secrets", None).namespace_gone());
        assert!(!failed(409, "secrets", None).namespace_gone());
        assert!(!Error::NoNamespace.namespace_gone());
    }
}
