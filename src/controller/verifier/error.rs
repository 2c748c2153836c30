//! What can go wrong in one verifier reconcile.

/// What can go wrong in one verifier reconcile. Messages name objects, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ApiTokenVerifier has no namespace")]
    NoNamespace,
    #[error("reading Secret {name}: {source}")]
    ReadSecret { name: String, source: kube::Error },
    #[error("writing output Secret {name}: {source}")]
    WriteOutput { name: String, source: kube::Error },
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
}
