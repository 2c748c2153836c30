//! Every decision tokenmint makes, as pure functions of what was observed: no API client, no watch,
//! no tokio, no clock read behind the caller's back (time and randomness come in as arguments).
//!
//! The parts shared by tokens and verifiers sit at the top ([`credential`], [`schedule`],
//! [`seal`], [`htpasswd`]); [`token`] decides what one ApiToken's Secret and status should be,
//! [`verifier`] what one ApiTokenVerifier's outputs should hold.

pub mod conditions;
pub mod consumer;
pub mod credential;
pub mod htpasswd;
pub mod inactivity;
pub mod invalid;
pub mod schedule;
pub mod scope;
pub mod seal;
pub mod sha256_map;
pub mod token;
pub mod trino;
pub mod usage;
pub mod verifier;
