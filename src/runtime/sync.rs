//! When the caches have listed: the operator's readiness, and the verifiers' go-ahead to render.

use std::sync::Arc;

use kube::runtime::watcher;

use crate::runtime::metrics::Metrics;

/// Marks the operator ready, and lets verifiers render, once each watched kind has delivered its
/// first complete list.
pub struct Synced {
    /// One bit per kind that has listed.
    listed: std::sync::atomic::AtomicU8,
    metrics: Arc<Metrics>,
    both: tokio::sync::watch::Sender<bool>,
}

impl Synced {
    pub const TOKENS: u8 = 0b01;
    pub const SECRETS: u8 = 0b10;

    pub fn new(metrics: Arc<Metrics>, both: tokio::sync::watch::Sender<bool>) -> Self {
        Synced {
            listed: std::sync::atomic::AtomicU8::new(0),
            metrics,
            both,
        }
    }

    pub fn observe<K>(&self, kind: u8, event: &watcher::Event<K>) {
        if !matches!(event, watcher::Event::InitDone) {
            return;
        }
        let before = self
            .listed
            .fetch_or(kind, std::sync::atomic::Ordering::AcqRel);
        if before != Self::TOKENS | Self::SECRETS && before | kind == Self::TOKENS | Self::SECRETS {
            self.metrics.set_ready(true);
            self.both.send_replace(true);
            tracing::info!("caches synced");
        }
    }
}
