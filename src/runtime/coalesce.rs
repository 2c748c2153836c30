//! Many change signals made into few, without postponing any for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the window after a signal stays open.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Never shorter.
    pub least: Duration,
    /// Never longer, whatever the work.
    pub most: Duration,
    /// At least this many times the work done for the signal that opened it: under a steady stream
    /// of changes, that work takes at most about `1 / times` of the time.
    pub times: u32,
}

/// The work done for the signals, reported by whoever acts on them ([`Load::begin`]).
#[derive(Clone, Default)]
pub struct Load(Arc<Counters>);

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    /// Microseconds of work finished since the window opened.
    spent: AtomicU64,
    finished: Notify,
}

/// Work in progress; its time counts when it is dropped.
pub struct Busy {
    load: Load,
    started: Instant,
}

impl Load {
    /// Starts a piece of work: the open window does not close before it ends.
    pub fn begin(&self) -> Busy {
        self.0.running.fetch_add(1, Ordering::SeqCst);
        Busy {
            load: self.clone(),
            started: Instant::now(),
        }
    }

    fn spent(&self) -> Duration {
        Duration::from_micros(self.0.spent.load(Ordering::SeqCst))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let counters = &self.load.0;
        counters.spent.fetch_add(micros, Ordering::SeqCst);
        counters.running.fetch_sub(1, Ordering::SeqCst);
        counters.finished.notify_waiters();
    }
}

impl Window {
    /// When a window opened at `opened` closes, given the work so far: `None` while work is still
    /// running (before `most`).
    fn closes(&self, opened: Instant, load: &Load) -> Option<Instant> {
        let at_most = opened + self.most;
        if load.0.running.load(Ordering::SeqCst) > 0 {
            return (Instant::now() >= at_most).then_some(at_most);
        }
        let grown = load.spent().saturating_mul(self.times);
        Some(opened + self.least.max(grown).min(self.most))
    }
}

/// Signals for `changes`, at most two per window: a change after a quiet window is signalled at
/// once (a lone revocation is rendered without waiting), and the changes that come within the window
/// after a signal make one more signal when it closes. A steady stream of changes is rendered once
/// per window, never postponed for as long as it lasts (kube-runtime's debounce restarts its wait on
/// each change, so changes less than its period apart would hold every render back until they pause).
///
/// The window is `window.least` while the work is light; when the work reported to `load` for the
/// signal that opened it takes longer, it stays open until that work is done and for `window.times`
/// its duration (never past `window.most`), so a large render cannot follow the last one back to back
/// and take every core.
pub fn coalesce(
    changes: impl futures::Stream<Item = ()> + Send + 'static,
    window: Window,
    load: Load,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(
        (changes.boxed(), false, load),
        move |(mut changes, open, load)| async move {
            if open {
                // A window since the last signal: gather what comes in it.
                load.0.spent.store(0, Ordering::SeqCst);
                let opened = Instant::now();
                let (mut more, mut ended) = (false, false);
                loop {
                    let finished = load.0.finished.notified();
                    let closes = window.closes(opened, &load);
                    if closes.is_some_and(|at| at <= Instant::now()) {
                        break;
                    }
                    let wait = closes.unwrap_or(opened + window.most);
                    tokio::select! {
                        () = tokio::time::sleep_until(wait) => {}
                        () = finished => {}
                        next = changes.next(), if !ended => match next {
                            Some(()) => more = true,
                            None => ended = true,
                        },
                    }
                }
                if more {
                    return Some(((), (changes, true, load)));
                }
                if ended {
                    return None;
                }
            }
            changes.next().await?;
            Some(((), (changes, true, load)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAST: Duration = Duration::from_millis(100);

    const WINDOW: Window = Window {
        least: LEAST,
        most: Duration::from_secs(1),
        times: 4,
    };

    #[tokio::test]
    async fn a_steady_stream_of_changes_still_lets_renders_through() {
        // A change every 10 ms, ten times faster than the window, for as long as the test runs:
        // a debounce would never fire; the window fires about every 100 ms.
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let feeder = tokio::spawn(async move {
            while tx.unbounded_send(()).is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let signals = coalesce(rx, WINDOW, Load::default()).take(3).count();
        let count = tokio::time::timeout(Duration::from_secs(20), signals).await;
        feeder.abort();
        assert_eq!(count, Ok(3), "renders held back while changes kept coming");
    }

    #[tokio::test]
    async fn changes_within_one_window_make_one_signal_at_once_and_one_when_it_closes() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for _ in 0..100 {
            tx.unbounded_send(()).unwrap();
        }
        drop(tx);
        assert_eq!(coalesce(rx, WINDOW, Load::default()).count().await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_signalled_at_once_and_the_next_after_a_quiet_window_too() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        // Polled all the time, as the controller polls it.
        let (seen, mut signals) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(coalesce(rx, WINDOW, Load::default()).for_each(move |()| {
            let _ = seen.send(tokio::time::Instant::now());
            futures::future::ready(())
        }));
        for _ in 0..2 {
            let sent = tokio::time::Instant::now();
            tx.unbounded_send(()).unwrap();
            let signalled = signals.recv().await.unwrap();
            assert_eq!(signalled - sent, Duration::ZERO, "a lone change waited");
            // Nothing more within the window: no second signal for it.
            tokio::time::sleep(LEAST * 3).await;
            assert!(signals.try_recv().is_err(), "a signal with no change");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heavy_work_widens_the_window_and_light_work_does_not() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let load = Load::default();
        let (seen, mut signals) = tokio::sync::mpsc::unbounded_channel();
        let worker = load.clone();
        // Each signal's work takes `cost`, as a render does; changes keep coming meanwhile.
        let cost = Arc::new(AtomicU64::new(250));
        let costs = cost.clone();
        tokio::spawn(coalesce(rx, WINDOW, load).for_each(move |()| {
            let _ = seen.send(Instant::now());
            let busy = worker.begin();
            let ms = costs.load(Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                drop(busy);
            });
            futures::future::ready(())
        }));
        let feeder = tokio::spawn(async move {
            while tx.unbounded_send(()).is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut last = signals.recv().await.unwrap();
        for _ in 0..3 {
            let next = signals.recv().await.unwrap();
            // 250 ms of work: the window is 4 × 250 ms = 1 s, its most.
            assert!(next - last >= Duration::from_secs(1), "{:?}", next - last);
            last = next;
        }
        cost.store(5, Ordering::SeqCst);
        // The window open now was sized by heavy work; the ones after by light work.
        last = signals.recv().await.unwrap();
        last = signals.recv().await.unwrap().max(last);
        for _ in 0..3 {
            let next = signals.recv().await.unwrap();
            assert!(
                next - last <= LEAST + Duration::from_millis(20),
                "{:?}",
                next - last
            );
            last = next;
        }
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn work_still_running_holds_the_window_open_until_its_most() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let load = Load::default();
        let busy = load.begin();
        let mut signals = Box::pin(coalesce(rx, WINDOW, load));
        tx.unbounded_send(()).unwrap();
        let first = Instant::now();
        signals.next().await.unwrap();
        tx.unbounded_send(()).unwrap();
        signals.next().await.unwrap();
        assert_eq!(Instant::now() - first, WINDOW.most, "work that never ends");
        drop(busy);
    }
}
