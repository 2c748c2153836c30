//! Tokens waiting for their namespace to come back or go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Tokens waiting for their namespace (gone or terminating): the resourceVersion each was parked at,
/// and when to look again. Until then no request, a relist's included, reaches the API server for
/// them; a new version of the token (edited, or a namesake in a namespace made again) is looked at.
#[derive(Default)]
pub struct Parking(Mutex<HashMap<Arc<str>, Parked>>);

/// The resourceVersion a token was parked at, and when it is due.
type Parked = (Option<String>, Instant);

impl Parking {
    pub fn park(&self, key: &Arc<str>, version: Option<&str>, until: Instant) {
        let mut parked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        parked.insert(key.clone(), (version.map(str::to_owned), until));
    }

    /// Whether the token `key`, now at `version`, is still parked at `now` (a stale entry goes).
    pub fn holds(&self, key: &str, version: Option<&str>, now: Instant) -> bool {
        let mut parked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match parked.get(key) {
            Some((at, until)) if at.as_deref() == version && now < *until => true,
            Some(_) => {
                parked.remove(key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_parked_token_waits_until_due_or_until_it_changes() {
        let parking = Parking::default();
        let key: Arc<str> = "gone/t".into();
        let now = Instant::now();
        parking.park(&key, Some("7"), now + Duration::from_secs(60));
        assert!(
            parking.holds(&key, Some("7"), now),
            "a relist of the same version"
        );
        assert!(!parking.holds("gone/other", Some("7"), now));
        assert!(!parking.holds(&key, Some("8"), now), "the token changed");
        assert!(
            !parking.holds(&key, Some("7"), now),
            "once released, released"
        );
        parking.park(&key, Some("7"), now + Duration::from_secs(60));
        assert!(
            !parking.holds(&key, Some("7"), now + Duration::from_secs(61)),
            "due"
        );
    }
}
