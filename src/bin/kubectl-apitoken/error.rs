//! What can go wrong, phrased so a person can act on it. Messages never carry credential material.

use std::error::Error as _;

/// Resource names as kubectl prints them in messages.
pub const APITOKENS: &str = "apitokens.tokenmint.dev";
pub const SECRETS: &str = "secrets";

/// Every failure of the plugin; each becomes `error: <message>` on stderr and exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument is wrong; nothing was sent to the cluster.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot load the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot reach the cluster at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the cluster at {url} did not accept your credentials (401 Unauthorized): \
         check the user of your kubeconfig context"
    )]
    Unauthorized { url: String },
    #[error(
        "the ApiToken CRD is not installed in the cluster at {url}: \
         kubectl apply --server-side -f crds/ (or: tokenmint crd | kubectl apply --server-side -f -)"
    )]
    CrdMissing { url: String },
    #[error("{resource} {name:?} not found in namespace {namespace:?}")]
    NotFound {
        resource: &'static str,
        name: String,
        namespace: String,
    },
    #[error("not allowed to {verb} {resource} {scope}: {message}")]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        scope: String,
        message: String,
    },
    #[error("{verb} {resource} {name:?}: conflict: {message}{hint}")]
    Conflict {
        verb: &'static str,
        resource: &'static str,
        name: String,
        message: String,
        hint: &'static str,
    },
    #[error("the API server rejected the {verb} of {resource} {name:?}: {message}")]
    Rejected {
        verb: &'static str,
        resource: &'static str,
        name: String,
        message: String,
    },
    #[error("cannot {verb} {resource}: {message}")]
    Api {
        verb: &'static str,
        resource: &'static str,
        message: String,
    },
    /// The token is in a state the command cannot work with (revoked, no Secret yet, ...).
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Io(String),
}

/// One call to the API server, for error messages.
#[derive(Clone, Debug)]
pub struct Op<'a> {
    pub verb: &'static str,
    pub resource: &'static str,
    pub name: Option<&'a str>,
    /// `None` for a call across all namespaces.
    pub namespace: Option<&'a str>,
    /// The cluster URL, for reachability and CRD messages.
    pub url: &'a str,
}

impl Op<'_> {
    fn scope(&self) -> String {
        match self.namespace {
            Some(ns) => format!("in namespace {ns:?}"),
            None => "across all namespaces".to_owned(),
        }
    }

    /// Turns a client error into one a person can act on.
    pub fn error(&self, err: kube::Error) -> Error {
        let url = self.url.to_owned();
        let name = self.name.unwrap_or_default().to_owned();
        let status = match err {
            kube::Error::Api(status) => status,
            kube::Error::Auth(e) => {
                return Error::Kubeconfig(format!(
                    "cannot get credentials for the cluster at {url}: {e}"
                ));
            }
            kube::Error::InferKubeconfig(e) => return Error::Kubeconfig(e.to_string()),
            other => {
                return Error::Unreachable {
                    url,
                    reason: chain(&other),
                };
            }
        };
        let message = status.message.clone();
        match status.code {
            401 => Error::Unauthorized { url },
            403 => Error::Forbidden {
                verb: self.verb,
                resource: self.resource,
                scope: self.scope(),
                message,
            },
            // An object that is missing comes with details naming it; a resource type that is not
            // served (no CRD) is a bare 404, often not even a JSON Status.
            404 if self.resource == APITOKENS
                && status.details.as_ref().is_none_or(|d| d.name.is_empty()) =>
            {
                Error::CrdMissing { url }
            }
            404 => Error::NotFound {
                resource: self.resource,
                name,
                namespace: self.namespace.unwrap_or_default().to_owned(),
            },
            409 => Error::Conflict {
                verb: self.verb,
                resource: self.resource,
                name,
                message,
                hint: if self.verb == "apply" {
                    " (another field manager owns these fields; re-run with --force-conflicts to take them over)"
                } else {
                    ""
                },
            },
            400 | 422 => Error::Rejected {
                verb: self.verb,
                resource: self.resource,
                name,
                message,
            },
            code => Error::Api {
                verb: self.verb,
                resource: self.resource,
                message: format!("{message} ({code} {})", status.reason),
            },
        }
    }
}

/// An error and its causes joined by `: `, with repeats (wrappers quoting their source) dropped.
fn chain(err: &kube::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    // The top level is kube's own wrapper ("ServiceError: ..."); its sources say what happened.
    let mut next: Option<&dyn std::error::Error> = err.source();
    if next.is_none() {
        parts.push(err.to_string());
    }
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::StatusDetails;

    fn op(resource: &'static str) -> Op<'static> {
        Op {
            verb: "get",
            resource,
            name: Some("superset-reader"),
            namespace: Some("analytics"),
            url: "https://127.0.0.1:6443",
        }
    }

    fn api(code: u16, name: Option<&str>) -> kube::Error {
        let mut status = Status::failure("boom", "Reason").with_code(code);
        status.details = name.map(|n| StatusDetails {
            name: n.to_owned(),
            group: "tokenmint.dev".into(),
            kind: "apitokens".into(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds: 0,
        });
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn missing_object_and_missing_crd_are_told_apart() {
        let missing = op(APITOKENS).error(api(404, Some("superset-reader")));
        assert_eq!(
            missing.to_string(),
            "apitokens.tokenmint.dev \"superset-reader\" not found in namespace \"analytics\""
        );
        let no_crd = op(APITOKENS).error(api(404, None)).to_string();
        assert!(
            no_crd.starts_with("the ApiToken CRD is not installed"),
            "{no_crd}"
        );
        assert!(
            no_crd.contains("kubectl apply --server-side -f crds/"),
            "{no_crd}"
        );
        let no_secret = op(SECRETS).error(api(404, None));
        assert!(matches!(
            no_secret,
            Error::NotFound {
                resource: SECRETS,
                ..
            }
        ));
    }

    #[test]
    fn forbidden_names_verb_resource_and_namespace() {
        let err = op(APITOKENS).error(api(403, None)).to_string();
        assert_eq!(
            err,
            "not allowed to get apitokens.tokenmint.dev in namespace \"analytics\": boom"
        );
        let mut all = op(APITOKENS);
        all.verb = "list";
        all.namespace = None;
        assert!(
            all.error(api(403, None))
                .to_string()
                .contains("list apitokens.tokenmint.dev across all namespaces")
        );
    }

    #[test]
    fn apply_conflicts_suggest_force() {
        let mut apply = op(APITOKENS);
        apply.verb = "apply";
        assert!(
            apply
                .error(api(409, None))
                .to_string()
                .contains("--force-conflicts")
        );
    }
}
