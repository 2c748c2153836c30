//! Which tokens wait for a reconcile and which are being reconciled: at most `concurrency` at once,
//! never one token twice at the same time, and a token asked for again while it is reconciled is
//! reconciled once more after.
//!
//! kube-runtime's `Controller` keeps each waiting token as a reconcile request (an `ObjectRef` of
//! four strings) in a scheduler table, and its cache as `Arc`s of the whole object under more
//! `ObjectRef`s: about 1.2 KiB per token at 10,000. Here a token is named everywhere by the one
//! `namespace/name` string the token cache holds ([`crate::runtime::cache::TokenCache`]), so waiting costs
//! a pointer in a queue and a set.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};

/// Why tokens are to be reconciled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The token `namespace/name`.
    One(Arc<str>),
    /// Every token in the cache.
    All,
}

/// The waiting and the running tokens.
#[derive(Default)]
pub struct Queue {
    /// In the order they were asked for.
    waiting: VecDeque<Arc<str>>,
    /// The same tokens, to ask for each once.
    queued: HashSet<Arc<str>>,
    running: HashSet<Arc<str>>,
    /// Asked for while running: they wait again once their reconcile is done.
    again: HashSet<Arc<str>>,
}

impl Queue {
    /// Asks for a reconcile of `key`.
    pub fn push(&mut self, key: Arc<str>) {
        if self.running.contains(&key) {
            self.again.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.waiting.push_back(key);
        }
    }

    /// The next token to reconcile, now counted as running.
    pub fn start(&mut self) -> Option<Arc<str>> {
        let key = self.waiting.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// The reconcile of `key` is done.
    pub fn finish(&mut self, key: &Arc<str>) {
        self.running.remove(key);
        if self.again.remove(key) {
            self.push(key.clone());
        }
    }

    /// How many tokens wait.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// How many tokens are being reconciled.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

/// Reconciles tokens as `requests` ask for them, `concurrency` at a time (0: no limit), until
/// `shutdown` resolves or `requests` ends with nothing left to do; then lets the reconciles under
/// way finish. `all` gives every token's key, for [`Request::All`].
pub async fn drive<R, F>(
    requests: impl Stream<Item = Request>,
    all: impl Fn() -> Vec<Arc<str>>,
    concurrency: u16,
    reconcile: impl Fn(Arc<str>) -> F,
    shutdown: impl Future<Output = ()>,
) where
    F: Future<Output = R>,
{
    let limit = match concurrency {
        0 => usize::MAX,
        n => usize::from(n),
    };
    let mut queue = Queue::default();
    let mut running = FuturesUnordered::new();
    let mut requests = std::pin::pin!(requests);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut asking = true;
    loop {
        while running.len() < limit
            && let Some(key) = queue.start()
        {
            let reconciled = reconcile(key.clone());
            running.push(reconciled.map(move |_| key));
        }
        if !asking && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(key) = running.next(), if !running.is_empty() => queue.finish(&key),
            request = requests.next(), if asking => match request {
                Some(Request::One(key)) => queue.push(key),
                Some(Request::All) => all().into_iter().for_each(|key| queue.push(key)),
                None => asking = false,
            },
        }
    }
    // The reconciles under way finish; nothing new starts.
    while running.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    fn key(name: &str) -> Arc<str> {
        format!("ns/{name}").into()
    }

    #[test]
    fn a_token_waits_once_however_often_it_is_asked_for() {
        let mut queue = Queue::default();
        for name in ["a", "b", "a", "a", "c", "b"] {
            queue.push(key(name));
        }
        assert_eq!(queue.waiting(), 3);
        let order: Vec<_> = std::iter::from_fn(|| queue.start()).collect();
        assert_eq!(
            order,
            [key("a"), key("b"), key("c")],
            "first asked, first run"
        );
        assert_eq!((queue.waiting(), queue.running()), (0, 3));
    }

    #[test]
    fn a_token_asked_for_while_running_runs_again_after_not_alongside() {
        let mut queue = Queue::default();
        queue.push(key("a"));
        let a = queue.start().unwrap();
        queue.push(key("a"));
        queue.push(key("a"));
        assert_eq!(queue.start(), None, "not twice at once");
        queue.finish(&a);
        assert_eq!(queue.start(), Some(key("a")), "once more, after");
        queue.finish(&a);
        assert_eq!((queue.start(), queue.running()), (None, 0));
    }

    /// What the reconciles saw: how many ran at most at once, and each token's reconciles.
    #[derive(Default)]
    struct Seen {
        now: usize,
        most: usize,
        runs: Vec<Arc<str>>,
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_keeps_to_the_concurrency_and_finishes_what_it_started() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watched = seen.clone();
        let reconcile = move |key: Arc<str>| {
            let seen = watched.clone();
            async move {
                {
                    let mut s = seen.lock().unwrap();
                    s.now += 1;
                    s.most = s.most.max(s.now);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut s = seen.lock().unwrap();
                s.now -= 1;
                s.runs.push(key);
            }
        };
        let requests = futures::stream::iter(
            [Request::One(key("a")), Request::All, Request::One(key("a"))].into_iter(),
        );
        let all = || ["a", "b", "c", "d", "e"].map(key).to_vec();
        let started = tokio::time::Instant::now();
        drive(requests, all, 2, reconcile, futures::future::pending()).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.most, 2);
        let mut runs = seen.runs.clone();
        runs.sort();
        // "a" was running when it was asked for twice more: it ran once more after, not twice.
        assert_eq!(runs, ["a", "a", "b", "c", "d", "e"].map(key));
        // Six one-second reconciles, two at a time.
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_running_reconciles_finish_and_starts_no_more() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let record = done.clone();
        let reconcile = move |key: Arc<str>| {
            let done = record.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                done.lock().unwrap().push(key);
            }
        };
        let requests = futures::stream::iter([Request::All]).chain(futures::stream::pending());
        let all = || ["a", "b", "c"].map(key).to_vec();
        let shutdown = tokio::time::sleep(Duration::from_secs(1));
        drive(requests, all, 1, reconcile, shutdown).await;
        assert_eq!(*done.lock().unwrap(), [key("a")]);
    }
}
