//! Machinery the controllers and `tokenmint authz` share that decides nothing about a token or a
//! verifier: caches and the compact form they keep, the work queue and wake-ups, watch backoff,
//! leader election, the seal key store, metrics and logging.

pub mod cache;
pub mod clock;
pub mod coalesce;
pub mod compact;
pub mod dropped;
pub mod events;
pub mod keys;
pub mod keystore;
pub mod leader;
pub mod metrics;
pub mod parking;
pub mod queue;
pub mod sync;
pub mod telemetry;
pub mod wakeups;
pub mod watch;
pub mod watched;
