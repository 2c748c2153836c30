//! tokenmint: mints, rotates and revokes API tokens declared as `ApiToken` resources.
//!
//! Five layers, each importing only the ones below it (`tests/layers.rs` checks this):
//! - [`api`]: the custom resources' types and the names they share. Imports nothing of ours.
//! - [`core`]: every decision, as pure functions: credentials, schedules, seals, scopes, the
//!   sha256-map format; [`core::token`] (validate, read the Secret, plan) and [`core::verifier`]
//!   (validate, trust, render, status). No API client, no watch, no tokio.
//! - [`runtime`]: machinery that decides nothing: caches, queue, wake-ups, watch backoff, Events,
//!   leader election, the seal key store, metrics, logging.
//! - [`controller`]: the two controllers, each a pipeline gather → core → write; the Secret writes
//!   they share live in [`controller::write`].
//! - [`operator`] wires them into the process; [`authz`] is the gateway check, built on `api`,
//!   `core` and `runtime` only.

pub mod api;
pub mod authz;
pub mod controller;
pub mod core;
pub mod operator;
pub mod runtime;

pub use api::{all_crds_yaml, crd_yaml, verifier_crd_yaml};
