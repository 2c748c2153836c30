//! The clock, read once per reconcile and passed into the core.

use jiff::Timestamp;

/// Whole seconds: the precision Kubernetes stores timestamps at, so status compares equal after a round trip.
pub fn now_seconds() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}
