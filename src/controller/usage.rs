//! Reads the usage records `tokenmint authz` writes ([`crate::core::usage`]) in the namespaces this
//! installation trusts (`--usage-namespace`: the operator's own by default; a tenant cannot write
//! there, so no tenant can claim a use) and keeps, per token, the latest recorded use of each
//! credential. The token controller folds them into status ([`crate::core::usage::fold`]); this
//! module only says which tokens to look at again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::core::usage::{self, Rejection, Use};
use crate::runtime::events::Events;
use crate::runtime::keys::{Key, key_from};
use crate::runtime::queue::Request;
use crate::runtime::watch::{WatchBackoff, not_gone, watch_errors};

/// The latest use of each credential, per token, from every trusted record; and the verifiers
/// whose authz reports use.
#[derive(Default)]
pub struct Book {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By token key: (access key, latest use).
    uses: HashMap<Key, Vec<(Box<str>, Timestamp)>>,
    /// The verifier of each record present, and the granularity of its authz, by the record's key.
    records: HashMap<Key, (String, Option<Duration>)>,
    /// Entries already reported as rejected, by record key (reported once, not at every update).
    reported: HashMap<Key, HashSet<(String, Rejection)>>,
    /// When entries past retention were last dropped.
    swept: Option<Timestamp>,
    /// Tokens with a later use than their status shows, oldest first, each once.
    pending: VecDeque<Key>,
    queued: HashSet<Key>,
}

impl Book {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recorded uses of the token `key`.
    pub fn uses_of(&self, key: &str) -> Vec<(Box<str>, Timestamp)> {
        self.inner().uses.get(key).cloned().unwrap_or_default()
    }

    /// Whether an authz serving `verifier` (`namespace/name`) reports use.
    pub fn tracks(&self, verifier: &str) -> bool {
        self.inner().records.values().any(|(v, _)| v == verifier)
    }

    /// The coarsest granularity the records of `verifier` declare.
    pub fn granularity(&self, verifier: &str) -> Option<Duration> {
        let inner = self.inner();
        let of_verifier = inner.records.values().filter(|(v, _)| v == verifier);
        of_verifier.filter_map(|(_, g)| *g).max()
    }

    /// Up to `n` tokens with a later use than known, oldest first.
    fn take_pending(&self, n: usize) -> Vec<Key> {
        let mut inner = self.inner();
        let n = n.min(inner.pending.len());
        let taken: Vec<Key> = inner.pending.drain(..n).collect();
        for key in &taken {
            inner.queued.remove(key);
        }
        taken
    }

    /// Takes in `uses` of record `record` (of `verifier`), queueing the tokens with a later use than
    /// known; whether the verifier is newly tracked.
    fn apply(&self, record: Key, verifier: Declared, uses: Vec<Use>, now: Timestamp) -> bool {
        let mut inner = self.inner();
        let newly_tracked = !inner.records.values().any(|(v, _)| *v == verifier.0);
        inner.records.insert(record, verifier);
        for one in uses {
            let known = inner.uses.entry(one.token.as_str().into()).or_default();
            match known.iter_mut().find(|(k, _)| **k == *one.access_key) {
                Some((_, at)) if *at >= one.at => continue,
                Some((_, at)) => *at = one.at,
                None => known.push((one.access_key.into(), one.at)),
            }
            let key: Key = one.token.into();
            if inner.queued.insert(key.clone()) {
                inner.pending.push_back(key);
            }
        }
        // Entries past retention leave records at their next write; the book drops them hourly.
        let retention = jiff::SignedDuration::try_from(usage::RETENTION).unwrap_or_default();
        if inner
            .swept
            .is_none_or(|at| now.duration_since(at) > jiff::SignedDuration::from_hours(1))
        {
            inner.swept = Some(now);
            inner.uses.retain(|_, known| {
                known.retain(|(_, at)| now.duration_since(*at) < retention);
                !known.is_empty()
            });
        }
        newly_tracked
    }

    /// Record `record` is gone: its verifier may no longer be tracked. Uses stay (a last use never
    /// moves backwards).
    fn remove(&self, record: &str) -> bool {
        let mut inner = self.inner();
        inner.reported.remove(record);
        let Some((verifier, _)) = inner.records.remove(record) else {
            return false;
        };
        !inner.records.values().any(|(v, _)| *v == verifier)
    }

    /// The rejections of `record` not reported yet.
    fn unreported(
        &self,
        record: &Key,
        rejected: Vec<(String, Rejection)>,
    ) -> Vec<(String, Rejection)> {
        let mut inner = self.inner();
        let reported = inner.reported.entry(record.clone()).or_default();
        rejected
            .into_iter()
            .filter(|one| reported.insert(one.clone()))
            .collect()
    }
}

/// What a record declares: its verifier and its authz's granularity.
type Declared = (String, Option<Duration>);

/// How often tokens with a later use are let through to be reconciled.
const TICK: Duration = Duration::from_millis(100);

/// Watches the usage records in `namespaces`; the book, and the tokens to reconcile as records
/// change: at most `per_second` of them a second, so 100,000 tokens in use cannot turn into a
/// burst of status writes (a token waiting longer still gets its latest use when its turn comes).
pub fn watch(
    client: &Client,
    namespaces: &[String],
    events: Events,
    per_second: u32,
) -> (Arc<Book>, impl Stream<Item = Request> + Send + 'static) {
    let book = Arc::new(Book::default());
    let selector = format!("{}={}", usage::RECORD_LABEL, usage::RECORD_VERSION);
    let streams = namespaces.iter().map(|namespace| {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        watcher(api, watcher::Config::default().labels(&selector))
            .filter(not_gone)
            .backoff(WatchBackoff::default())
            .filter_map(watch_errors)
            .boxed()
    });
    let events = Arc::new(events);
    let reader = book.clone();
    let records = futures::stream::select_all(streams)
        .then(move |event| {
            let (book, events) = (reader.clone(), events.clone());
            async move { take(&book, &events, event).await }
        })
        .flat_map(futures::stream::iter);
    // Per tick, a tenth of the second's allowance (at least one): a steady, bounded trickle.
    let batch = usize::try_from(per_second.div_ceil(10).max(1)).unwrap_or(1);
    let drainer = book.clone();
    let ticks = futures::stream::unfold(tokio::time::interval(TICK), |mut every| async {
        every.tick().await;
        Some(((), every))
    });
    let trickle = ticks
        .map(move |()| {
            let keys = drainer.take_pending(batch);
            futures::stream::iter(keys.into_iter().map(|k| Request::One(Arc::from(&*k))))
        })
        .flatten();
    (book, futures::stream::select(records, trickle))
}

/// One watch event into `book`: the tokens to look at again.
async fn take(book: &Book, events: &Events, event: watcher::Event<ConfigMap>) -> Vec<Request> {
    match event {
        watcher::Event::Apply(record) | watcher::Event::InitApply(record) => {
            read_record(book, events, &record).await
        }
        watcher::Event::Delete(record) => {
            let key = key_from(record.namespace().as_deref(), &record.name_any());
            if book.remove(&key) {
                vec![Request::All]
            } else {
                Vec::new()
            }
        }
        watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
    }
}

async fn read_record(book: &Book, events: &Events, record: &ConfigMap) -> Vec<Request> {
    let key = key_from(record.namespace().as_deref(), &record.name_any());
    let annotation = |key: &str| record.annotations().get(key).cloned();
    let granularity = annotation(usage::GRANULARITY_ANNOTATION)
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let verifier = (
        annotation(usage::VERIFIER_ANNOTATION).unwrap_or_default(),
        granularity,
    );
    let now = Timestamp::now();
    let data = record.data.clone().unwrap_or_default();
    let read = usage::read(&data, now);
    // Named by position (kubectl shows keys sorted), not by key: the key is an access key.
    let position = |entry: &str| data.keys().position(|k| k == entry).unwrap_or_default();
    for (entry, why) in book.unreported(&key, read.rejected) {
        let field = format!("data (entry {} of {})", position(&entry) + 1, data.len());
        let note = match why {
            Rejection::Malformed => format!(
                "{field}: not `<RFC 3339 time> <namespace>/<name>` under an access key; ignored"
            ),
            Rejection::Future => format!(
                "{field}: a last use ahead of this clock by more than {}s; ignored",
                usage::CLOCK_SKEW.as_secs()
            ),
        };
        tracing::warn!(record = %key, %note, "usage record entry ignored");
        let event = Event {
            type_: EventType::Warning,
            reason: "UsageIgnored".into(),
            note: Some(note),
            action: "ReadUsage".into(),
            secondary: None,
        };
        events.record(event, record.object_ref(&())).await;
    }
    // The tokens with a later use wait their turn in the book's queue.
    if book.apply(key, verifier, read.uses, now) {
        vec![Request::All]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, token: &str, at: &str) -> Use {
        Use {
            access_key: key.into(),
            token: token.into(),
            at: at.parse().unwrap(),
        }
    }

    #[test]
    fn a_record_changes_only_the_tokens_it_brings_a_later_use_for() {
        let book = Book::default();
        let now: Timestamp = "2026-12-07T16:00:00Z".parse().unwrap();
        let newly_tracked = book.apply(
            "ops/r-0".into(),
            ("gw/v".into(), None),
            vec![one("A", "data/app", "2026-12-07T15:00:00Z")],
            now,
        );
        assert!(newly_tracked);
        assert_eq!(book.take_pending(10), vec![Key::from("data/app")]);
        assert!(book.tracks("gw/v") && !book.tracks("gw/other"));
        // The same record again, and an older use from another replica's record: nothing new.
        let again = book.apply(
            "ops/r-1".into(),
            ("gw/v".into(), None),
            vec![one("A", "data/app", "2026-12-07T14:00:00Z")],
            now,
        );
        assert!(!again);
        assert!(book.take_pending(10).is_empty());
        assert_eq!(
            book.uses_of("data/app"),
            vec![("A".into(), "2026-12-07T15:00:00Z".parse().unwrap())]
        );
        // One record of two gone: still tracked; both gone: not.
        assert!(!book.remove("ops/r-0"));
        assert!(book.remove("ops/r-1"));
        assert!(!book.tracks("gw/v"));
        assert_eq!(book.uses_of("data/app").len(), 1, "a last use stays");
    }

    #[test]
    fn tokens_with_later_uses_queue_once_each_oldest_first() {
        let book = Book::default();
        let now: Timestamp = "2026-12-07T16:00:00Z".parse().unwrap();
        let uses = |minute: u32| {
            (0..5)
                .map(|i| {
                    one(
                        &format!("K{i}"),
                        &format!("data/t{i}"),
                        &format!("2026-12-07T15:{minute:02}:00Z"),
                    )
                })
                .collect::<Vec<_>>()
        };
        book.apply("ops/r".into(), ("gw/v".into(), None), uses(1), now);
        book.apply("ops/r".into(), ("gw/v".into(), None), uses(2), now);
        let first = book.take_pending(3);
        assert_eq!(
            first,
            vec![Key::from("data/t0"), "data/t1".into(), "data/t2".into()]
        );
        assert_eq!(
            book.take_pending(10).len(),
            2,
            "each token once, however many records"
        );
    }

    #[test]
    fn a_rejected_entry_is_reported_once() {
        let book = Book::default();
        let key: Key = "ops/r-0".into();
        let bad = vec![("X".to_owned(), Rejection::Future)];
        assert_eq!(book.unreported(&key, bad.clone()).len(), 1);
        assert!(book.unreported(&key, bad).is_empty());
    }
}
