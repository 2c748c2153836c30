//! Last use of credentials, written once: what `tokenmint authz` remembers between writes
//! ([`Ledger`]), the usage records it writes in its own namespace ([`merge`]) and what the operator
//! reads back from them ([`read`]). Pure: the caller brings the time.
//!
//! A usage record is a ConfigMap labelled [`RECORD_LABEL`], annotated with the verifier whose
//! output the authz serves ([`VERIFIER_ANNOTATION`]), named [`record_name`]. Each data key is a
//! credential's access key (public: it is the Basic user name), each value `<RFC 3339 minute>
//! <namespace>/<name>`: when that credential was last let in, and the token it belongs to. A
//! credential's entry is in shard [`shard_of`] of [`SHARDS`], so 100,000 credentials spread over
//! objects far below the 1 MiB limit. Several authz replicas (and restarts) merge into the same
//! records by taking the later time, so a last use never moves backwards.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest as _, Sha256};

use crate::api::ApiTokenStatus;

/// Label on every usage record (value [`RECORD_VERSION`]); the operator watches it.
pub const RECORD_LABEL: &str = "tokenmint.dev/usage";
/// The record layout's version.
pub const RECORD_VERSION: &str = "v1";
/// `namespace/name` of the verifier whose credentials the record's authz checks.
pub const VERIFIER_ANNOTATION: &str = "tokenmint.dev/verifier";
/// The authz's `--usage-granularity`, in seconds: how old a recorded use may be.
pub const GRANULARITY_ANNOTATION: &str = "tokenmint.dev/usage-granularity";
/// How many objects one verifier's records spread over.
pub const SHARDS: u8 = 16;
/// Bytes of data one record may hold; the oldest entries leave first past it (the operator has
/// folded them into token status long before).
pub const RECORD_BUDGET: usize = 768 * 1024;
/// Entries older than this leave a record at its next write.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The finest granularity: a credential in continuous use costs a write at most this often.
pub const MIN_GRANULARITY: Duration = Duration::from_secs(60);
/// The default granularity.
pub const DEFAULT_GRANULARITY: Duration = Duration::from_secs(3600);
/// How far ahead of the reader's clock a recorded use may be (clocks of two nodes disagree); a
/// later one is refused, never believed.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Minutes since the Unix epoch: the resolution of a last use.
pub type Minute = u32;

/// The minute `t` falls in.
pub fn minute_of(t: Timestamp) -> Minute {
    Minute::try_from(t.as_second().max(0) / 60).unwrap_or(Minute::MAX)
}

/// The start of `minute`.
pub fn start_of(minute: Minute) -> Timestamp {
    Timestamp::from_second(i64::from(minute) * 60).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The shard holding `access_key`'s entry.
pub fn shard_of(access_key: &str) -> u8 {
    Sha256::digest(access_key.as_bytes())[0] % SHARDS
}

/// The record of `verifier` (`namespace/name`) for `shard`: `tokenmint-usage-<10 hex of the
/// verifier's SHA-256>-<shard>`, short whatever the verifier's name.
pub fn record_name(verifier: &str, shard: u8) -> String {
    let digest = Sha256::digest(verifier.as_bytes());
    format!(
        "tokenmint-usage-{}-{shard:x}",
        &hex::encode(&digest[..5])[..10]
    )
}

/// One entry's value: `<minute> <token>`.
fn value(minute: Minute, token: &str) -> String {
    format!("{} {token}", start_of(minute))
}

/// Why an entry of a record is not believed. Never carries the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The key is no access key, or the value no `<RFC 3339> <namespace>/<name>`.
    Malformed,
    /// The time is ahead of the reader's clock by more than [`CLOCK_SKEW`].
    Future,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Future => "future",
        }
    }
}

/// One believed entry of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub access_key: String,
    /// `namespace/name`.
    pub token: String,
    pub at: Timestamp,
}

/// What a record says: the entries believed, and the keys of those that are not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    pub uses: Vec<Use>,
    pub rejected: Vec<(String, Rejection)>,
}

/// Whether `key` can be an access key: what tokenmint mints (ASCII letters and digits) and a
/// ConfigMap key allows.
fn is_access_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// One entry, or why not; `now` is the reader's clock.
fn entry(key: &str, text: &str, now: Timestamp) -> Result<Use, Rejection> {
    let (at, token) = text.split_once(' ').ok_or(Rejection::Malformed)?;
    let at: Timestamp = at.parse().map_err(|_| Rejection::Malformed)?;
    let (namespace, name) = token.split_once('/').ok_or(Rejection::Malformed)?;
    if !is_access_key(key) || namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Rejection::Malformed);
    }
    if at.duration_since(now) > jiff::SignedDuration::try_from(CLOCK_SKEW).unwrap_or_default() {
        return Err(Rejection::Future);
    }
    Ok(Use {
        access_key: key.to_owned(),
        token: token.to_owned(),
        at,
    })
}

/// Reads a record's data at `now`.
pub fn read(data: &BTreeMap<String, String>, now: Timestamp) -> Read {
    let mut read = Read::default();
    for (key, text) in data {
        match entry(key, text, now) {
            Ok(one) => read.uses.push(one),
            Err(why) => read.rejected.push((key.clone(), why)),
        }
    }
    read
}

/// A record's data after merging `uses` (access key, token, minute) into `existing` at `now`: each
/// entry keeps the later time; entries that cannot be read or are older than [`RETENTION`] leave,
/// and the oldest leave first while the data is over [`RECORD_BUDGET`].
pub fn merge<'a>(
    existing: &BTreeMap<String, String>,
    uses: impl IntoIterator<Item = (&'a str, &'a str, Minute)>,
    now: Timestamp,
) -> BTreeMap<String, String> {
    let retention = Minute::try_from(RETENTION.as_secs() / 60).unwrap_or(Minute::MAX);
    let oldest = minute_of(now).saturating_sub(retention);
    let mut merged: HashMap<String, (Minute, String)> = read(existing, now)
        .uses
        .into_iter()
        .map(|u| (u.access_key, (minute_of(u.at), u.token)))
        .collect();
    for (key, token, minute) in uses {
        match merged.get_mut(key) {
            Some((at, _)) if *at >= minute => {}
            Some(slot) => *slot = (minute, token.to_owned()),
            None => {
                merged.insert(key.to_owned(), (minute, token.to_owned()));
            }
        }
    }
    let mut kept: Vec<(String, Minute, String)> = merged
        .into_iter()
        .filter(|(_, (minute, _))| *minute >= oldest)
        .map(|(key, (minute, token))| (key, minute, value(minute, &token)))
        .collect();
    // Newest first, so a cut past the budget drops the oldest.
    kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut size = 0;
    kept.into_iter()
        .take_while(|(key, _, value)| {
            size += key.len() + value.len() + 6;
            size <= RECORD_BUDGET
        })
        .map(|(key, _, value)| (key, value))
        .collect()
}

/// What an authz has seen and written, per credential: so a credential in continuous use costs one
/// entry write per granularity, and one used once is written once.
#[derive(Debug)]
pub struct Ledger {
    granularity: Minute,
    entries: HashMap<Box<str>, Entry>,
}

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    /// The last minute it was let in.
    seen: Minute,
    /// The minute last written, if any.
    written: Option<Minute>,
}

/// Entries due for writing, by shard: (access key, token, minute).
pub type Due = BTreeMap<u8, Vec<(String, String, Minute)>>;

impl Ledger {
    /// `granularity`: at least [`MIN_GRANULARITY`].
    pub fn new(granularity: Duration) -> Ledger {
        let minutes = (granularity.max(MIN_GRANULARITY).as_secs() / 60).min(u64::from(u32::MAX));
        Ledger {
            granularity: Minute::try_from(minutes).unwrap_or(Minute::MAX),
            entries: HashMap::new(),
        }
    }

    /// `access_key` (of `token`) was let in during `minute`.
    pub fn note(&mut self, access_key: &str, token: &str, minute: Minute) {
        match self.entries.get_mut(access_key) {
            Some(entry) => entry.seen = entry.seen.max(minute),
            None => {
                self.entries.insert(
                    access_key.into(),
                    Entry {
                        token: token.into(),
                        seen: minute,
                        written: None,
                    },
                );
            }
        }
    }

    /// Entries never written, and those seen a granularity or more after their last write.
    pub fn due(&self) -> Due {
        let mut due = Due::new();
        for (key, entry) in &self.entries {
            let is_due = match entry.written {
                None => true,
                Some(written) => entry.seen >= written.saturating_add(self.granularity),
            };
            if is_due {
                due.entry(shard_of(key)).or_default().push((
                    key.to_string(),
                    entry.token.to_string(),
                    entry.seen,
                ));
            }
        }
        due
    }

    /// `entries` are in a record now.
    pub fn written(&mut self, entries: &[(String, String, Minute)]) {
        for (key, _, minute) in entries {
            if let Some(entry) = self.entries.get_mut(key.as_str()) {
                entry.written = Some(entry.written.unwrap_or(0).max(*minute));
            }
        }
    }

    /// Forgets written credentials not seen since `minute`, so a ledger holds what is in use.
    pub fn forget_before(&mut self, minute: Minute) {
        self.entries
            .retain(|_, e| e.seen >= minute || e.written.is_none_or(|w| w < e.seen));
    }

    /// Forgets written credentials not seen for two granularities before `now`.
    pub fn forget_idle(&mut self, now: Minute) {
        self.forget_before(now.saturating_sub(self.granularity.saturating_mul(2)));
    }

    /// Credentials remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Folds the recorded `uses` of one token (access key, last use) into its new `status`, never
/// backwards: `lastUsedAt` is the latest use of any credential the token holds or held in `last`
/// (a use of a credential of a deleted namesake is not this token's); `previous.lastUsedAt` that
/// of the previous credential.
pub fn fold(status: &mut ApiTokenStatus, last: &ApiTokenStatus, uses: &[(Box<str>, Timestamp)]) {
    let keys_of = |s: &ApiTokenStatus| {
        let previous = s.previous.as_ref().map(|p| p.access_key.clone());
        let next = s.next.as_ref().map(|n| n.access_key.clone());
        [s.access_key.clone(), previous, next]
    };
    let ours: Vec<String> = keys_of(status)
        .into_iter()
        .chain(keys_of(last))
        .flatten()
        .collect();
    let latest = |keys: &[&str]| {
        uses.iter()
            .filter(|(key, _)| keys.contains(&&**key))
            .map(|(_, at)| *at)
            .max()
    };
    let later = |a: Option<&Time>, b: Option<Timestamp>| match (a.map(|t| t.0), b) {
        (Some(a), Some(b)) => Some(Time(a.max(b))),
        (a, b) => a.or(b).map(Time),
    };
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    status.last_used_at = later(status.last_used_at.as_ref(), latest(&ours));
    if let Some(previous) = &mut status.previous {
        let used = latest(&[previous.access_key.as_str()]);
        previous.last_used_at = later(previous.last_used_at.as_ref(), used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2026-12-07T16:00:30Z";

    #[test]
    fn a_record_name_is_short_and_the_same_for_every_replica() {
        let long = format!("data/{}", "v".repeat(253));
        let name = record_name(&long, 15);
        assert!(
            name.starts_with("tokenmint-usage-") && name.ends_with("-f"),
            "{name}"
        );
        assert_eq!(name.len(), "tokenmint-usage-".len() + 10 + 2);
        assert_eq!(name, record_name(&long, 15));
        assert_ne!(record_name("data/a", 0), record_name("data/b", 0));
        let shards: std::collections::HashSet<u8> =
            (0..500).map(|i| shard_of(&format!("KEY{i}"))).collect();
        assert_eq!(shards.len(), usize::from(SHARDS));
    }

    #[test]
    fn reading_believes_well_formed_past_entries_only_and_names_the_rest_by_key() {
        let data: BTreeMap<String, String> = [
            ("AKEY1", "2026-12-07T15:00:00Z data/app"),
            ("AKEY2", "2026-12-07T16:04:00Z data/app"), // within the skew
            ("AKEY3", "2026-12-07T17:00:00Z data/app"), // an hour ahead
            ("AKEY4", "yesterday data/app"),
            ("AKEY5", "2026-12-07T15:00:00Z app"),
            ("bad/key", "2026-12-07T15:00:00Z data/app"),
            ("AKEY6", "2026-12-07T15:00:00Z data/a/b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let read = read(&data, at(NOW));
        let keys: Vec<&str> = read.uses.iter().map(|u| u.access_key.as_str()).collect();
        assert_eq!(keys, ["AKEY1", "AKEY2"]);
        assert_eq!(read.uses[0].token, "data/app");
        assert_eq!(read.uses[0].at, at("2026-12-07T15:00:00Z"));
        assert_eq!(
            read.rejected,
            [
                ("AKEY3".to_owned(), Rejection::Future),
                ("AKEY4".to_owned(), Rejection::Malformed),
                ("AKEY5".to_owned(), Rejection::Malformed),
                ("AKEY6".to_owned(), Rejection::Malformed),
                ("bad/key".to_owned(), Rejection::Malformed),
            ]
        );
    }

    #[test]
    fn merging_keeps_the_later_time_so_no_replica_moves_a_last_use_backwards() {
        let now = at(NOW);
        let first = merge(
            &BTreeMap::new(),
            [("AKEY1", "data/app", minute_of(now) - 5)],
            now,
        );
        assert_eq!(first["AKEY1"], "2026-12-07T15:55:00Z data/app");
        // A replica that saw it earlier writes after: the later time stays.
        let second = merge(
            &first,
            [
                ("AKEY1", "data/app", minute_of(now) - 30),
                ("AKEY2", "data/other", minute_of(now)),
            ],
            now,
        );
        assert_eq!(second["AKEY1"], "2026-12-07T15:55:00Z data/app");
        assert_eq!(second["AKEY2"], "2026-12-07T16:00:00Z data/other");
        let third = merge(&second, [("AKEY1", "data/app", minute_of(now))], now);
        assert_eq!(third["AKEY1"], "2026-12-07T16:00:00Z data/app");
    }

    #[test]
    fn merging_drops_what_cannot_be_read_and_what_is_past_retention() {
        let now = at(NOW);
        let existing: BTreeMap<String, String> = [
            ("OLD", "2026-11-20T00:00:00Z data/app"),
            ("FUTURE", "2027-01-01T00:00:00Z data/app"),
            ("BROKEN", "nonsense"),
            ("KEPT", "2026-12-01T00:00:00Z data/app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let merged = merge(&existing, [], now);
        assert_eq!(merged.keys().collect::<Vec<_>>(), ["KEPT"]);
    }

    #[test]
    fn a_record_over_its_budget_loses_its_oldest_entries_first() {
        let now = at(NOW);
        let token = format!("ns/{}", "n".repeat(250));
        let keys: Vec<String> = (0..4000).map(|i| format!("K{i:05}")).collect();
        let minute = minute_of(now);
        let merged = merge(
            &BTreeMap::new(),
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), token.as_str(), minute - i as Minute)),
            now,
        );
        let size: usize = merged.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        assert!(size <= RECORD_BUDGET, "{size}");
        assert!(merged.len() < keys.len());
        assert!(merged.contains_key("K00000"), "the newest stays");
        assert!(!merged.contains_key("K03999"), "the oldest goes");
    }

    #[test]
    fn a_credential_in_continuous_use_is_due_once_per_granularity() {
        let mut ledger = Ledger::new(Duration::from_secs(3600));
        let start = minute_of(at(NOW));
        let mut writes = 0;
        // Used every minute for five hours, flushed every minute.
        for minute in start..start + 300 {
            ledger.note("AKEY1", "data/app", minute);
            let due = ledger.due();
            for entries in due.values() {
                writes += entries.len();
                ledger.written(entries);
            }
        }
        assert_eq!(writes, 5, "first use, then once an hour");
        // Used once: written once, then never again.
        ledger.note("AKEY2", "data/other", start);
        let due = ledger.due();
        assert_eq!(due.values().map(Vec::len).sum::<usize>(), 1);
        for entries in due.values() {
            ledger.written(entries);
        }
        assert!(ledger.due().is_empty());
    }

    #[test]
    fn the_ledger_forgets_written_credentials_gone_quiet_but_never_an_unwritten_one() {
        let mut ledger = Ledger::new(Duration::from_secs(60));
        ledger.note("QUIET", "data/a", 100);
        ledger.note("PENDING", "data/b", 100);
        let quiet = ledger
            .due()
            .into_values()
            .flatten()
            .find(|e| e.0 == "QUIET");
        ledger.written(&[quiet.unwrap()]);
        ledger.forget_before(200);
        assert_eq!(ledger.len(), 1);
        assert_eq!(
            ledger.due().into_values().flatten().next().unwrap().0,
            "PENDING"
        );
    }

    #[test]
    fn folding_takes_the_latest_use_of_the_tokens_own_credentials_and_never_moves_back() {
        use crate::api::PreviousCredential;
        let t = |text: &str| Time(at(text));
        let last = ApiTokenStatus {
            access_key: Some("OLD".into()),
            last_used_at: Some(t("2026-12-07T10:00:00Z")),
            ..ApiTokenStatus::default()
        };
        // Rotated with an overlap: OLD is previous now, NEW current.
        let mut status = ApiTokenStatus {
            access_key: Some("NEW".into()),
            previous: Some(PreviousCredential {
                access_key: "OLD".into(),
                fingerprint: "sha256:x".into(),
                retires_at: t("2026-12-08T00:00:00Z"),
                last_used_at: None,
            }),
            last_used_at: last.last_used_at.clone(),
            ..ApiTokenStatus::default()
        };
        let uses: Vec<(Box<str>, Timestamp)> = vec![
            ("OLD".into(), at("2026-12-07T12:00:00Z")),
            ("NEW".into(), at("2026-12-07T11:00:00Z")),
            // A namesake's credential, deleted with it: not this token's.
            ("GONE".into(), at("2026-12-07T15:00:00Z")),
        ];
        fold(&mut status, &last, &uses);
        assert_eq!(status.last_used_at, Some(t("2026-12-07T12:00:00Z")));
        let previous = status.previous.as_ref().unwrap();
        assert_eq!(previous.last_used_at, Some(t("2026-12-07T12:00:00Z")));
        // An older record (another replica, a restart) never moves it back.
        let last = status.clone();
        fold(
            &mut status,
            &last,
            &[("NEW".into(), at("2026-12-07T09:00:00Z"))],
        );
        assert_eq!(status, last);
        // Nothing recorded: nothing claimed.
        let mut quiet = ApiTokenStatus::default();
        fold(&mut quiet, &ApiTokenStatus::default(), &uses);
        assert_eq!(quiet.last_used_at, None);
    }

    #[test]
    fn a_granularity_below_a_minute_is_a_minute() {
        let mut ledger = Ledger::new(Duration::from_secs(1));
        ledger.note("A", "n/t", 10);
        let due: Vec<_> = ledger.due().into_values().flatten().collect();
        ledger.written(&due);
        ledger.note("A", "n/t", 10);
        assert!(ledger.due().is_empty());
        ledger.note("A", "n/t", 11);
        assert_eq!(ledger.due().len(), 1);
    }
}
