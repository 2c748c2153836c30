//! A spec field the operator rejects, for tokens and verifiers alike.

/// A spec field the operator rejects. The message names the field and never echoes a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    pub field: String,
    pub reason: String,
}

/// `field` is rejected because of `reason`.
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}
