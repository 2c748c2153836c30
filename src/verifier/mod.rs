//! `ApiTokenVerifier`: renders, into Secrets of the verifier's namespace, what servers need to check
//! the credentials of the tokens it accepts. The pure core; the controller reads and writes.
//!
//! Kubernetes' name rules live in [`names`]; [`crate::validate`] has private copies of some of them
//! that can move here.

pub mod api;
pub mod names;
pub mod trust;

use crate::validate::InvalidSpec;

/// A field the operator rejects, with why.
fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}
