//! Reconcile requests for objects not in the cache yet, retried a few times before given up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::runtime::keys::split_key;
use crate::runtime::metrics::Metrics;

/// Reconcile requests for a token not in the cache (yet): each is counted and retried a few times
/// with growing delays before it is given up as deleted. A Secret's event, a relist of the other
/// kind or a verifier's publication can name a token before its own watch event arrives.
pub struct Dropped {
    retry: futures::channel::mpsc::UnboundedSender<Arc<str>>,
    attempts: Mutex<HashMap<Arc<str>, u32>>,
    metrics: Arc<Metrics>,
}

impl Dropped {
    /// Retries before a request is taken to be for a deleted token.
    const RETRIES: u32 = 4;

    pub fn new(
        retry: futures::channel::mpsc::UnboundedSender<Arc<str>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Dropped {
            retry,
            attempts: Mutex::default(),
            metrics,
        }
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u32>> {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settled(&self, token: &str) {
        self.attempts().remove(token);
    }

    pub fn retry(&self, key: Arc<str>) {
        let attempt = {
            let mut attempts = self.attempts();
            let attempt = attempts.entry(key.clone()).or_insert(0);
            *attempt += 1;
            *attempt
        };
        self.metrics.dropped();
        let (namespace, name) = split_key(&key);
        if attempt > Self::RETRIES {
            self.attempts().remove(&key);
            tracing::info!(
                namespace,
                name,
                "ApiToken still not in the cache after {} retries; taken as deleted",
                Self::RETRIES
            );
            return;
        }
        tracing::info!(
            namespace,
            name,
            attempt,
            "reconcile request for an ApiToken not in the cache yet; retrying"
        );
        let retry = self.retry.clone();
        let delay = Duration::from_millis(250) * (1 << (attempt - 1));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = retry.unbounded_send(key);
        });
    }
}
