//! The two controllers. Each is a pipeline: gather what the caches (or, where they cannot know, the
//! API server) hold → decide in [`crate::core`] → write, then report.
//!
//! [`token`] keeps each ApiToken's Secret and status; [`verifier`] renders each ApiTokenVerifier's
//! outputs; both report with [`error::Error`], and the token controller's Secret writes go through
//! [`write`](mod@write). Only this layer, [`crate::runtime`] and [`crate::authz`] talk to the API server.

pub mod consumers;
pub mod error;
pub mod token;
pub mod usage;
pub mod verifier;
pub mod write;
