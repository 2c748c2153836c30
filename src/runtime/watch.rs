//! How every watch of tokenmint retries and reports errors: the operator's token and Secret watches,
//! the verifier controller's, and `tokenmint authz`'s watch on its output. No decisions, no state
//! beyond one backoff.

use std::time::{Duration, Instant};

use kube::runtime::watcher;

use crate::core::credential::os_rng;
use crate::core::schedule;

/// How a watch retries after an error: from half a second, doubling, at most 2 s, starting over after
/// 10 s without an error. The runtime's default grows to 30 s and starts over only after 120 s, so
/// the connection errors of an API server restart and the `410 Gone` that follows it kept tokens
/// waiting for up to half a minute after the API was back. Two watches retrying every 2 s is one
/// request a second while the API server is away.
#[derive(Default)]
pub struct WatchBackoff {
    failures: u32,
    last: Option<Instant>,
}

impl WatchBackoff {
    const MAX: Duration = Duration::from_secs(2);
    const RESET_AFTER: Duration = Duration::from_secs(10);
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.last.is_some_and(|at| at.elapsed() > Self::RESET_AFTER) {
            self.failures = 0;
        }
        self.last = Some(Instant::now());
        self.failures += 1;
        let jitter = rand::Rng::random(&mut os_rng());
        Some(schedule::backoff(self.failures, jitter).min(Self::MAX))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Whether a watch item is anything but a `410 Gone`. The watcher answers a 410 by listing again at
/// once; passed on, the error would also make the backoff wait (up to 2 s, more the longer an outage
/// has lasted), and after an API server restart each watch meets one or two of them. Use before
/// `.backoff(..)`.
pub fn not_gone<K>(event: &Result<K, watcher::Error>) -> futures::future::Ready<bool> {
    let gone = matches!(event, Err(watcher::Error::WatchError(status)) if status.code == 410);
    if gone {
        tracing::debug!("watch version gone (410); listing again");
    }
    futures::future::ready(!gone)
}

/// The objects of a watch, its errors logged (the watch retries them itself).
pub fn watch_errors<K>(event: Result<K, watcher::Error>) -> futures::future::Ready<Option<K>> {
    if let Err(e) = &event {
        tracing::warn!(error = %describe_watch_error(e), "watch failed; retrying with backoff");
    }
    futures::future::ready(event.ok())
}

/// A watch error in words that never carry an object: a decoding error would quote the response.
pub fn describe_watch_error(error: &watcher::Error) -> String {
    let source = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        _ => None,
    };
    match source {
        Some(kube::Error::SerdeError(_)) => {
            "a response from the API server could not be decoded".to_owned()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gone_version_is_not_passed_on_to_the_backoff_but_other_errors_are() {
        let status = |code: u16| {
            let status: kube::core::Status = serde_json::from_value(serde_json::json!({
                "code": code, "message": "m", "reason": "r", "status": "Failure"
            }))
            .unwrap();
            Err::<(), _>(watcher::Error::WatchError(Box::new(status)))
        };
        assert!(!not_gone(&status(410)).await);
        assert!(not_gone(&status(500)).await);
        assert!(not_gone(&Ok::<_, watcher::Error>(())).await);
    }

    #[test]
    fn the_backoff_stays_within_two_seconds_and_starts_over_on_reset() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = (&mut backoff).take(10).collect();
        assert!(delays.iter().all(|d| *d <= WatchBackoff::MAX), "{delays:?}");
        assert!(delays[9] >= delays[0], "{delays:?}");
        kube::runtime::utils::Backoff::reset(&mut backoff);
        assert!(backoff.next().unwrap() <= delays[9]);
    }
}
