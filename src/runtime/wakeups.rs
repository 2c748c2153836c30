//! When each token next needs a reconcile (its rotation, expiry, a staged credential's promotion),
//! kept compactly.
//!
//! kube-runtime's scheduler keeps a requeued object as two copies of its reconcile request, each an
//! `ObjectRef` with four strings, in a hash map and a delay queue: about 0.75 KiB for every token
//! with a rotation ahead, 7.5 MiB at 10,000 tokens. Here a token's wake-up is the token cache's own
//! `namespace/name` string (shared, not copied), a time in a hash map and the same pair in a heap:
//! about 60 bytes.
//!
//! Times are wall-clock milliseconds, as plans give them, so a plan that decides the same instant
//! again (every reconcile of an unchanged token does) changes nothing. The latest reconcile's
//! decision replaces the earlier one (it planned from newer state), and a token whose plan waits
//! for a change has no wake-up at all. A due wake-up is handed to the queue ([`crate::runtime::queue`]);
//! one for a token no longer in the cache is dropped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::Stream;
use tokio::sync::Notify;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The wall clock, in [`Millis`].
pub fn now_millis() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

/// Pending wake-ups, at most one per token.
pub struct Wakeups {
    state: Mutex<State>,
    /// Told when a wake-up earlier than the one being waited for may have been set.
    changed: Notify,
    /// The clock the wake-ups are on ([`now_millis`]; tests use tokio's paused time).
    now: fn() -> Millis,
}

impl Default for Wakeups {
    fn default() -> Self {
        Wakeups::on(now_millis)
    }
}

#[derive(Default)]
struct State {
    /// When each token is due, by `namespace/name`.
    due: HashMap<Arc<str>, Millis>,
    /// The same pairs ordered by time. An entry whose time no longer matches `due` was replaced
    /// or cleared, and is skipped when it comes up.
    queue: BinaryHeap<Reverse<(Millis, Arc<str>)>>,
}

impl State {
    /// Drops replaced entries from the front of the queue, and rebuilds the queue when most of it
    /// is replaced entries, so it stays within twice the tokens that have a wake-up.
    fn tidy(&mut self) {
        while let Some(Reverse((at, key))) = self.queue.peek()
            && self.due.get(key) != Some(at)
        {
            self.queue.pop();
        }
        if self.queue.len() > 2 * self.due.len() + 64 {
            self.queue = self
                .due
                .iter()
                .map(|(key, at)| Reverse((*at, key.clone())))
                .collect();
        }
    }

    /// The next token due at or before `now`, taken out.
    fn take_due(&mut self, now: Millis) -> Option<Arc<str>> {
        self.tidy();
        let Reverse((at, _)) = self.queue.peek()?;
        if *at > now {
            return None;
        }
        let Reverse((_, key)) = self.queue.pop()?;
        self.due.remove(&key);
        Some(key)
    }

    /// When the next wake-up is due.
    fn next_at(&mut self) -> Option<Millis> {
        self.tidy();
        self.queue.peek().map(|Reverse((at, _))| *at)
    }
}

impl Wakeups {
    /// Wake-ups on the clock `now`.
    pub fn on(now: fn() -> Millis) -> Self {
        Wakeups {
            state: Mutex::default(),
            changed: Notify::new(),
            now,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the token `key` (`namespace/name`) at `at` (on this clock), instead of whenever it
    /// was to wake before.
    pub fn set(&self, key: &Arc<str>, at: Millis) {
        let mut state = self.lock();
        let shared = match state.due.get_key_value(key) {
            Some((_, held)) if *held == at => return,
            Some((shared, _)) => shared.clone(),
            None => key.clone(),
        };
        let earliest = state.next_at().is_none_or(|next| at < next);
        state.due.insert(shared.clone(), at);
        state.queue.push(Reverse((at, shared)));
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Wakes the token `key` once `delay` has passed (on this clock), instead of whenever it was to
    /// wake before.
    pub fn set_after(&self, key: &Arc<str>, delay: Duration) {
        let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        self.set(key, (self.now)().saturating_add(delay));
    }

    /// The token `key` needs no wake-up: it waits for a change, or it is gone.
    pub fn clear(&self, key: &str) {
        self.lock().due.remove(key);
    }

    /// How many tokens have a wake-up.
    pub fn len(&self) -> usize {
        self.lock().due.len()
    }

    /// Whether no token has a wake-up.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next token to reconcile, once it is due.
    async fn next(&self) -> Arc<str> {
        loop {
            let next = {
                let mut state = self.lock();
                if let Some(key) = state.take_due((self.now)()) {
                    return key;
                }
                state.next_at()
            };
            match next {
                Some(at) => {
                    let wait = u64::try_from(at - (self.now)()).unwrap_or(0);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// The tokens as they fall due, for the controller. Tokens no longer `present` (deleted since
    /// their last reconcile) are skipped.
    pub fn due(
        self: Arc<Self>,
        present: impl Fn(&str) -> bool + Clone + Send + 'static,
    ) -> impl Stream<Item = Arc<str>> + Send + 'static {
        futures::stream::unfold(self, move |wakeups| {
            let present = present.clone();
            async move {
                loop {
                    let token = wakeups.next().await;
                    if present(&token) {
                        return Some((token, wakeups));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn token(name: &str) -> Arc<str> {
        format!("ns/{name}").into()
    }

    fn secs(n: i64) -> Millis {
        n * 1000
    }

    /// tokio's clock (paused in tests), in milliseconds since the first reading.
    fn paused_clock() -> Millis {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        i64::try_from((Instant::now() - start).as_millis()).unwrap_or(i64::MAX)
    }

    /// Everything due by `now`, in order.
    fn due_by(wakeups: &Wakeups, now: Millis) -> Vec<String> {
        let mut state = wakeups.lock();
        std::iter::from_fn(|| state.take_due(now))
            .map(|k| k.trim_start_matches("ns/").to_owned())
            .collect()
    }

    #[test]
    fn wakes_each_token_once_in_order_of_time() {
        let wakeups = Wakeups::default();
        let start = now_millis();
        wakeups.set(&token("late"), start + secs(30));
        wakeups.set(&token("early"), start + secs(10));
        wakeups.set(&token("later"), start + secs(60));
        assert_eq!(due_by(&wakeups, start + secs(5)), Vec::<String>::new());
        assert_eq!(due_by(&wakeups, start + secs(30)), ["early", "late"]);
        assert_eq!(due_by(&wakeups, start + secs(30)), Vec::<String>::new());
        assert_eq!(wakeups.len(), 1);
    }

    #[test]
    fn the_latest_decision_replaces_the_earlier_one() {
        let wakeups = Wakeups::default();
        let start = now_millis();
        wakeups.set(&token("a"), start + secs(10));
        // Later: it is not woken at the earlier time any more.
        wakeups.set(&token("a"), start + secs(50));
        assert_eq!(due_by(&wakeups, start + secs(20)), Vec::<String>::new());
        // Earlier again.
        wakeups.set(&token("a"), start + secs(40));
        assert_eq!(due_by(&wakeups, start + secs(45)), ["a"]);
        assert_eq!(due_by(&wakeups, start + secs(60)), Vec::<String>::new());
        // The same decision twice keeps one entry.
        wakeups.set(&token("b"), start + secs(70));
        wakeups.set(&token("b"), start + secs(70));
        assert_eq!(wakeups.lock().queue.len(), 1);
    }

    #[test]
    fn a_cleared_token_is_not_woken() {
        let wakeups = Wakeups::default();
        let start = now_millis();
        wakeups.set(&token("a"), start + secs(10));
        wakeups.set(&token("b"), start + secs(10));
        wakeups.clear("ns/a");
        assert_eq!(due_by(&wakeups, start + secs(10)), ["b"]);
        assert!(wakeups.is_empty());
    }

    #[test]
    fn replaced_entries_do_not_pile_up() {
        let wakeups = Wakeups::default();
        let start = now_millis();
        for i in 0..10_000 {
            wakeups.set(&token("a"), start + secs(1000 - i % 500));
        }
        // One token with a wake-up: the queue is rebuilt past 2 × 1 + 64 entries.
        assert!(wakeups.lock().queue.len() <= 2 + 64 + 1);
        assert_eq!(due_by(&wakeups, start + secs(10_000)), ["a"]);
    }

    #[test]
    fn a_decision_repeated_by_later_reconciles_keeps_one_entry() {
        let wakeups = Wakeups::default();
        let at = now_millis() + secs(3600);
        for _ in 0..100 {
            wakeups.set(&token("a"), at);
        }
        assert_eq!((wakeups.len(), wakeups.lock().queue.len()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_yields_tokens_when_due_and_skips_deleted_ones() {
        use futures::StreamExt;
        let wakeups = Arc::new(Wakeups::on(paused_clock));
        let start = paused_clock();
        wakeups.set(&token("gone"), start + secs(1));
        wakeups.set(&token("kept"), start + secs(10));
        let mut due = Box::pin(wakeups.clone().due(|key: &str| key == "ns/kept"));
        // Set while the stream sleeps towards a later one: not missed.
        let early = wakeups.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            early.set(&token("kept"), paused_clock() + secs(1));
        });
        assert_eq!(due.next().await, Some(token("kept")));
        assert_eq!(paused_clock() - start, secs(3));
        assert!(wakeups.is_empty());
    }
}
