//! Watch-based observers: when did each token become Active, when did each credential rotate.
//!
//! Every time is taken when the watch event reaches the bench, so it includes the API server's
//! watch delivery, as a user waiting on `kubectl wait` would see it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokenmint::api::{ApiToken, Phase};
use tokenmint::secret::{ROTATIONS_ANNOTATION, managed_selector};
use tokio::sync::watch;

use crate::BenchResult;

/// What one object says right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Reading {
    active: bool,
    rotations: u64,
    next_rotation: Option<i64>,
}

/// Per object, the first time each reading was seen.
#[derive(Default)]
pub struct Seen {
    /// First time the object was seen Active (tokens only).
    pub active_at: HashMap<String, Instant>,
    /// First time a given rotation count was seen: (monotonic, wall clock).
    pub rotations_at: HashMap<(String, u64), (Instant, SystemTime)>,
    /// Latest `status.nextRotationAt` (tokens only), Unix seconds.
    pub next_rotation: HashMap<String, i64>,
    /// Latest rotation count.
    pub rotations: HashMap<String, u64>,
}

impl Seen {
    /// How many objects have reached at least `rotations`.
    pub fn rotated(&self, rotations: u64) -> usize {
        self.rotations.values().filter(|r| **r >= rotations).count()
    }
}

/// A watch over one kind in one namespace, recording [`Seen`].
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    /// Watches ApiTokens in `api`'s namespace; returns once the initial list is done.
    pub async fn tokens(api: Api<ApiToken>) -> BenchResult<Tracker> {
        Self::start(api, watcher::Config::default(), |t: &ApiToken| {
            let status = t.status.as_ref();
            Reading {
                active: status.and_then(|s| s.phase) == Some(Phase::Active),
                rotations: status.and_then(|s| s.rotations).unwrap_or(0),
                next_rotation: status
                    .and_then(|s| s.next_rotation_at.as_ref())
                    .map(|t| t.0.as_second()),
            }
        })
        .await
    }

    /// Watches tokenmint's Secrets; a Secret's reading is its rotations annotation.
    pub async fn secrets(api: Api<Secret>) -> BenchResult<Tracker> {
        let config = watcher::Config::default().labels(&managed_selector());
        Self::start(api, config, |s: &Secret| Reading {
            active: true,
            rotations: s
                .annotations()
                .get(ROTATIONS_ANNOTATION)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            next_rotation: None,
        })
        .await
    }

    async fn start<K>(
        api: Api<K>,
        config: watcher::Config,
        read: fn(&K) -> Reading,
    ) -> BenchResult<Tracker>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, changed) = watch::channel(0u64);
        let (synced_tx, synced) = tokio::sync::oneshot::channel();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                let objects = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced_tx.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("bench: watch error (retrying): {e}");
                        continue;
                    }
                };
                let (now, wall) = (Instant::now(), SystemTime::now());
                {
                    let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                    for object in objects {
                        let name = object.name_any();
                        let reading = read(&object);
                        if reading.active {
                            seen.active_at.entry(name.clone()).or_insert(now);
                        }
                        if let Some(at) = reading.next_rotation {
                            seen.next_rotation.insert(name.clone(), at);
                        }
                        seen.rotations_at
                            .entry((name.clone(), reading.rotations))
                            .or_insert((now, wall));
                        seen.rotations.insert(name, reading.rotations);
                    }
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        tokio::time::timeout(Duration::from_secs(60), synced)
            .await
            .map_err(|_| "watch did not sync within 60s")?
            .map_err(|_| "watch task ended")?;
        Ok(Tracker {
            seen,
            changed,
            task,
        })
    }

    /// Runs `f` over what has been seen so far.
    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until `done` holds for what has been seen, or `timeout` passes.
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Seen) -> bool,
    ) -> BenchResult<()> {
        let wait = async {
            loop {
                self.changed.borrow_and_update();
                if self.with(&mut done) {
                    return Ok(());
                }
                if self.changed.changed().await.is_err() {
                    return Err("watch task ended");
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(format!("timed out after {timeout:?} waiting for {what}").into()),
        }
    }
}
