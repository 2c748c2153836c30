//! What each output Secret of a verifier holds: a pure function of (outputs, credentials, now, hasher).
//!
//! Renderings are deterministic: the same credentials render the same bytes in any input order, so
//! the controller can compare bytes and write nothing in a steady state. Hashing for htpasswd comes
//! in from the caller (bcrypt is slow and salted; the caller derives the salt from the credential so
//! a line stays byte-identical while its credential is unchanged, and may cache lines).

use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::Timestamp;

use crate::api::verifier::HtpasswdHash;
use crate::core::credential::Credential;
use crate::core::sha256_map;
use crate::core::trino::TableRule;
pub use crate::core::verifier::output::{Rendering, ValidOutput, validate_outputs};

/// Most bytes of data one output Secret may hold: the API server refuses a Secret whose data
/// values total more than 1 MiB (`MaxSecretSize`), below etcd's request limit (1.5 MiB by default).
///
/// For a typical credential (16-character access key, `namespace/name` of 21 characters, role
/// `reader`, 3 scopes, an expiry) that is 13,443 credentials as bcrypt htpasswd lines (78 bytes
/// each), 12,945 as sha256-crypt (81), 16,384 as ssha with an 8-byte salt (64), and 1,826 in a
/// sha256-map (574 bytes: two 64-hex-digit keys, each with the whole item). A token in a rotation
/// overlap takes two.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Most bytes one token's role and canonical scope strings may take in an output, per credential.
/// The schema lets a token carry 64 scopes with 1 KiB filters (about 86 KB, written twice per
/// credential in a sha256-map): a few such tokens would fill a shared output, and then other
/// tenants' new tokens would wait. Over this budget a token is left out of the outputs alone
/// (`OverBudget`). With it, one token takes at most about 14 KB of a sha256-map (three credentials
/// during a staged rotation in an overlap, each under two digests), so one output holds at least
/// 70 tokens of the largest kind, and 1,826 typical ones.
pub const MAX_TOKEN_SCOPE_BYTES: usize = 2048;

/// A token by namespace and name; shown as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for TokenRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One credential to render. `Debug` never shows the secret key ([`Credential`]'s does not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub token: TokenRef,
    pub role: String,
    /// Canonical scope strings (`TYPE[:resource[:filter]]`), in spec order.
    pub scopes: Vec<String>,
    pub credential: Credential,
    /// When the credential stops being valid; `None`: not before the token is revoked.
    pub not_after: Option<Timestamp>,
    /// Whether this is the previous credential of a rotation overlap.
    pub previous: bool,
}

impl Entry {
    /// The access key (the htpasswd user name).
    pub fn access_key(&self) -> &str {
        &self.credential.access_key
    }

    /// The secret key, for the htpasswd hasher.
    pub fn secret_key(&self) -> &str {
        &self.credential.secret_key
    }
}

/// A token's valid credentials, as the controller reads them from the token and its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenCredentials {
    pub token: TokenRef,
    pub role: String,
    /// Canonical scope strings, in spec order.
    pub scopes: Vec<String>,
    /// `spec.expiresAt`.
    pub expires_at: Option<Timestamp>,
    pub current: Credential,
    /// During a rotation overlap: the previous credential and when it retires.
    pub previous: Option<(Credential, Timestamp)>,
    /// A credential staged for the next rotation: servers accept it before the token's clients
    /// are handed it, so none of them is refused when they switch.
    pub next: Option<Credential>,
}

impl TokenCredentials {
    /// One entry per credential: the current one (and a staged next one) valid until `expiresAt` (or
    /// open-ended), the previous one until it retires, or until `expiresAt` if that comes first
    /// (expiry removes them all).
    pub fn entries(&self) -> Vec<Entry> {
        let entry = |credential: &Credential, not_after, previous| Entry {
            token: self.token.clone(),
            role: self.role.clone(),
            scopes: self.scopes.clone(),
            credential: credential.clone(),
            not_after,
            previous,
        };
        let mut entries = vec![entry(&self.current, self.expires_at, false)];
        if let Some((credential, retires_at)) = &self.previous {
            let not_after = self.expires_at.map_or(*retires_at, |e| e.min(*retires_at));
            entries.push(entry(credential, Some(not_after), true));
        }
        if let Some(next) = &self.next {
            entries.push(entry(next, self.expires_at, false));
        }
        entries
    }
}

/// An entry and what every render of it needs, made once per credential: the hex SHA-256 of its two
/// presented forms and its sha256-map item as JSON. A caller that keeps these across renders (the
/// verifier controller does, per token version) pays the hashing and encoding of a credential once,
/// not once per render. `Debug` shows the entry only.
#[derive(Clone, PartialEq, Eq)]
pub struct Prepared {
    pub entry: Entry,
    bearer_hash: Box<str>,
    basic_hash: Box<str>,
    item: Box<str>,
}

impl Prepared {
    pub fn new(entry: Entry) -> Self {
        let item = sha256_map::Item {
            access_key: entry.access_key().into(),
            not_after: entry.not_after.map(|t| t.to_string()),
            previous: entry.previous,
            role: entry.role.as_str().into(),
            scopes: entry.scopes.as_slice().into(),
            token: entry.token.to_string().into(),
        };
        Prepared {
            bearer_hash: sha256_map::key(&entry.credential.bearer()).into(),
            basic_hash: sha256_map::key(&entry.credential.basic()).into(),
            item: sha256_map::encode_item(&item).into(),
            entry,
        }
    }

    /// The hex SHA-256 of the Bearer form: one per credential, so a key for what a caller keeps of
    /// it (its password lines).
    pub fn bearer_hash(&self) -> &str {
        &self.bearer_hash
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// Every output's data, and what it counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// One per output, in spec order.
    pub outputs: Vec<RenderedOutput>,
    /// Distinct tokens with a valid credential (`status.tokens`); all are in every output that does
    /// not overflow.
    pub tokens: usize,
    /// Valid credentials (a token in a rotation overlap has two).
    pub credentials: usize,
    /// The earliest `notAfter` still ahead: the outputs change then without any other change, so
    /// render again at that instant.
    pub next_change: Option<Timestamp>,
    /// Tokens left out of the outputs, and why: one bad or ambiguous token excludes itself (and a
    /// token it cannot be told apart from), never the rest of the outputs.
    pub excluded: Vec<RenderError>,
}

/// One output Secret's data. `Debug` shows names and sizes only: the data holds hashes of credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedOutput {
    pub secret_name: String,
    pub key: String,
    /// What to write under `key`.
    pub data: Vec<u8>,
    /// A second data key of the same Secret and what to write there: a trino output's rules, which
    /// change with its password file in one write (a mounted Secret swaps both at once).
    pub extra: Option<(String, Vec<u8>)>,
    /// How many credentials `data` holds.
    pub credentials: usize,
    /// Set when every valid credential would not fit: `data` then holds only tokens already in the
    /// output as observed (their current credential first), so revocations, retirements and
    /// rotations still reach it while new tokens wait. Report it (`Ready=False`); never ignore it.
    pub overflow: Option<Overflow>,
}

impl fmt::Debug for RenderedOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedOutput")
            .field("secret_name", &self.secret_name)
            .field("key", &self.key)
            .field("bytes", &self.data.len())
            .field("extra", &self.extra.as_ref().map(|(k, d)| (k, d.len())))
            .field("credentials", &self.credentials)
            .field("overflow", &self.overflow)
            .finish()
    }
}

/// An output that cannot hold every valid credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "output {secret_name}: {credentials} credentials render to {bytes} bytes, over the {limit} bytes a \
     Secret may hold; {left_out} of them are left out (tokens not in it yet stay out). Split the \
     tokens across verifiers (spec.trust roles or namespaceSelector) or use htpasswd, which is denser"
)]
pub struct Overflow {
    pub secret_name: String,
    /// Valid credentials.
    pub credentials: usize,
    /// Bytes they would take.
    pub bytes: usize,
    pub limit: usize,
    /// Valid credentials the written data does not hold.
    pub left_out: usize,
}

impl Overflow {
    /// The reason for the verifier's `Ready=False` condition.
    pub const REASON: &'static str = "OutputTooLarge";
}

/// Why a token is left out of the outputs. Names outputs and tokens, never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "tokens {first} and {second} present the same credential or access key; neither can be told apart"
    )]
    Ambiguous { first: TokenRef, second: TokenRef },
    #[error("token {token}: its access key is not 1-64 characters of [A-Za-z0-9]")]
    BadAccessKey { token: TokenRef },
    #[error(
        "token {token}: its role and scopes take {bytes} bytes, over the {MAX_TOKEN_SCOPE_BYTES} each token may take in an output"
    )]
    OverBudget { token: TokenRef, bytes: usize },
    #[error(
        "output {secret_name}: the htpasswd line for token {token} is not `<accessKey>:<hash>` on one line"
    )]
    BadHtpasswdLine {
        secret_name: String,
        token: TokenRef,
    },
    #[error("output {secret_name}: token {token} is left out of its Trino rules: {reason}")]
    TrinoRules {
        secret_name: String,
        token: TokenRef,
        reason: String,
    },
}

impl RenderError {
    /// The tokens this leaves out.
    pub fn tokens(&self) -> Vec<&TokenRef> {
        match self {
            RenderError::Ambiguous { first, second } => vec![first, second],
            RenderError::BadAccessKey { token }
            | RenderError::BadHtpasswdLine { token, .. }
            | RenderError::TrinoRules { token, .. }
            | RenderError::OverBudget { token, .. } => vec![token],
        }
    }

    /// The reason for the verifier's `Ready=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::Ambiguous { .. } | RenderError::BadAccessKey { .. } => {
                "AmbiguousCredential"
            }
            RenderError::BadHtpasswdLine { .. } => "Error",
            RenderError::OverBudget { .. } => "OverBudget",
            RenderError::TrinoRules { .. } => "TrinoRules",
        }
    }
}

/// What each output Secret holds now, under its output's key, by Secret name; only Secrets the
/// verifier controls (a missing one is an empty output).
pub type ObservedOutputs<'a> = BTreeMap<&'a str, &'a [u8]>;

/// How a password line hashes: an htpasswd hash, or Trino's PBKDF2 ([`crate::core::trino::password_line`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LineHash {
    Htpasswd(HtpasswdHash),
    Trino,
}

/// Renders every output from `entries` at `now`: [`render_prepared`] for entries not prepared yet.
pub fn render(
    outputs: &[ValidOutput],
    entries: &[Entry],
    observed: &ObservedOutputs<'_>,
    now: Timestamp,
    mut htpasswd_line: impl FnMut(&Entry, LineHash) -> String,
) -> Rendered {
    let prepared: Vec<Prepared> = entries.iter().cloned().map(Prepared::new).collect();
    let refs: Vec<&Prepared> = prepared.iter().collect();
    render_prepared(outputs, &refs, observed, now, |p, hash| {
        htpasswd_line(&p.entry, hash)
    })
}

/// Renders every output from `entries` at `now`.
///
/// Entries whose `not_after` has come (`not_after <= now`) are left out; an entry given twice counts
/// once. `htpasswd_line(entry, hash)` returns `<accessKey>:<hash>` without a newline; it is called
/// once per credential and hash, and only for htpasswd and trino outputs. An output that would exceed
/// [`MAX_OUTPUT_BYTES`] is never cut silently: see [`RenderedOutput::overflow`] (`observed` says which
/// credentials it already holds).
pub fn render_prepared(
    outputs: &[ValidOutput],
    entries: &[&Prepared],
    observed: &ObservedOutputs<'_>,
    now: Timestamp,
    mut htpasswd_line: impl FnMut(&Prepared, LineHash) -> String,
) -> Rendered {
    let (valid, mut excluded) = valid_entries(entries, now);
    // Password lines once per hash, whichever outputs share it.
    let mut lines: BTreeMap<LineHash, Vec<Option<String>>> = BTreeMap::new();
    for output in outputs {
        let hash = match output.rendering {
            Rendering::Sha256Map => continue,
            Rendering::Htpasswd(hash) => LineHash::Htpasswd(hash),
            Rendering::Trino => LineHash::Trino,
        };
        if let Slot::Vacant(slot) = lines.entry(hash) {
            slot.insert(htpasswd_lines(
                &valid,
                hash,
                &output.secret_name,
                &mut htpasswd_line,
                &mut excluded,
            ));
        }
    }
    let mut rendered = Vec::with_capacity(outputs.len());
    for output in outputs {
        let lines_of = |hash| lines.get(&hash).map_or(&[][..], Vec::as_slice);
        let encoding = match (output.rendering, &output.trino) {
            (Rendering::Sha256Map, _) => Encoding::Sha256Map,
            (Rendering::Htpasswd(hash), _) => {
                Encoding::Htpasswd(lines_of(LineHash::Htpasswd(hash)))
            }
            (Rendering::Trino, Some(mapping)) => {
                let rules = valid
                    .iter()
                    .map(|v| {
                        mapping
                            .user_rules(v.entry.access_key(), &v.entry.scopes)
                            .map_err(|reason| {
                                let error = RenderError::TrinoRules {
                                    secret_name: output.secret_name.clone(),
                                    token: v.entry.token.clone(),
                                    reason,
                                };
                                // Once per token, not per credential of an overlap.
                                if !excluded.contains(&error) {
                                    excluded.push(error);
                                }
                            })
                            .ok()
                    })
                    .collect();
                Encoding::Trino {
                    lines: lines_of(LineHash::Trino),
                    rules,
                    mapping,
                }
            }
            (Rendering::Trino, None) => {
                unreachable!("validate_outputs gives every trino output its mapping")
            }
        };
        rendered.push(render_output(output, &valid, &encoding, observed));
    }
    let mut tokens: Vec<&TokenRef> = valid.iter().map(|v| &v.entry.token).collect();
    tokens.sort();
    tokens.dedup();
    Rendered {
        outputs: rendered,
        tokens: tokens.len(),
        credentials: valid.len(),
        next_change: valid.iter().filter_map(|v| v.entry.not_after).min(),
        excluded,
    }
}

/// How to turn entries into bytes; password lines are made once per hash, parallel to the entries.
enum Encoding<'m> {
    /// `None` where the hasher's line for that entry was malformed: that credential is left out.
    Htpasswd(&'m [Option<String>]),
    Sha256Map,
    /// Password lines and each entry's table rules; an entry with either `None` is left out of both.
    Trino {
        lines: &'m [Option<String>],
        rules: Vec<Option<Vec<TableRule>>>,
        mapping: &'m crate::core::trino::Mapping,
    },
}

/// An output's data: under its key, and under a second key for trino's rules.
struct Encoded {
    data: Vec<u8>,
    extra: Option<Vec<u8>>,
}

impl Encoded {
    /// Bytes against the Secret's limit, which counts every key.
    fn len(&self) -> usize {
        self.data.len() + self.extra.as_ref().map_or(0, Vec::len)
    }
}

/// `lines` at `chosen`, one per line break.
fn join_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut data = Vec::new();
    for line in lines {
        data.extend_from_slice(line.as_bytes());
        data.push(b'\n');
    }
    data
}

impl Encoding<'_> {
    /// The data for the entries at `chosen` (indices into `valid`, ascending).
    fn encode(&self, valid: &[Valid<'_>], chosen: &[usize]) -> Encoded {
        match self {
            Encoding::Htpasswd(lines) => Encoded {
                data: join_lines(chosen.iter().filter_map(|&i| lines[i].as_deref())),
                extra: None,
            },
            Encoding::Sha256Map => Encoded {
                data: sha256_map(chosen.iter().map(|&i| &valid[i])),
                extra: None,
            },
            Encoding::Trino {
                lines,
                rules,
                mapping,
            } => {
                let kept: Vec<usize> = chosen
                    .iter()
                    .copied()
                    .filter(|&i| lines[i].is_some() && rules[i].is_some())
                    .collect();
                Encoded {
                    data: join_lines(kept.iter().filter_map(|&i| lines[i].as_deref())),
                    extra: Some(
                        mapping
                            .rules_file(kept.iter().filter_map(|&i| rules[i].as_ref()).flatten()),
                    ),
                }
            }
        }
    }

    /// The bytes [`Encoding::encode`] makes of `chosen`, added up without encoding where the format
    /// allows it (an htpasswd file is its lines; a sha256-map its keys and items): an overflowing
    /// output is sized a dozen times per render. Trino's rules are encoded to be measured.
    fn size(&self, valid: &[Valid<'_>], chosen: &[usize]) -> usize {
        match self {
            Encoding::Htpasswd(lines) => chosen
                .iter()
                .filter_map(|&i| lines[i].as_ref())
                .map(|line| line.len() + 1)
                .sum(),
            Encoding::Sha256Map => {
                // `"<key>":<item>` twice per credential, a comma between any two.
                let pairs: usize = chosen
                    .iter()
                    .map(|&i| {
                        let p = valid[i];
                        p.bearer_hash.len() + p.basic_hash.len() + 2 * (p.item.len() + 3)
                    })
                    .sum();
                let commas = (2 * chosen.len()).saturating_sub(1);
                *EMPTY_MAP + pairs + commas
            }
            Encoding::Trino { .. } => self.encode(valid, chosen).len(),
        }
    }

    /// Whether `valid` is in `data`, an earlier rendering of this encoding.
    fn holds(&self, data: &Present, valid: &Valid<'_>) -> bool {
        match (self, data) {
            (Encoding::Htpasswd(_) | Encoding::Trino { .. }, Present::AccessKeys(keys)) => {
                keys.contains(valid.entry.access_key())
            }
            (Encoding::Sha256Map, Present::Hashes(hashes)) => hashes.contains(&*valid.bearer_hash),
            _ => false,
        }
    }

    fn present<'d>(&self, data: &'d [u8]) -> Present<'d> {
        match self {
            Encoding::Htpasswd(_) | Encoding::Trino { .. } => Present::AccessKeys(
                data.split(|b| *b == b'\n')
                    .filter_map(|line| std::str::from_utf8(line).ok()?.split_once(':'))
                    .map(|(user, _)| user)
                    .collect(),
            ),
            // An unreadable map holds nothing we can vouch for.
            Encoding::Sha256Map => Present::Hashes(
                serde_json::from_slice::<PresentMap>(data)
                    .map(|m| m.tokens.into_keys().collect())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// The credentials an observed output holds.
enum Present<'d> {
    AccessKeys(BTreeSet<&'d str>),
    Hashes(BTreeSet<String>),
}

#[derive(serde::Deserialize)]
struct PresentMap {
    tokens: BTreeMap<String, serde::de::IgnoredAny>,
}

fn render_output(
    output: &ValidOutput,
    valid: &[Valid<'_>],
    encoding: &Encoding<'_>,
    observed: &ObservedOutputs<'_>,
) -> RenderedOutput {
    let all: Vec<usize> = (0..valid.len()).collect();
    let rendered = |encoded: Encoded, credentials, overflow| RenderedOutput {
        secret_name: output.secret_name.clone(),
        key: output.key.clone(),
        data: encoded.data,
        extra: encoded.extra.map(|data| {
            let key = output.trino.as_ref().map(|t| t.rules_key.clone());
            (key.unwrap_or_default(), data)
        }),
        credentials,
        overflow,
    };
    let bytes = encoding.size(valid, &all);
    if bytes <= MAX_OUTPUT_BYTES {
        return rendered(encoding.encode(valid, &all), valid.len(), None);
    }
    // Tokens already in the output stay in; tokens not in it yet wait. A rotated token's new
    // credential comes before any previous credential, so its clients can move; if even that does
    // not fit (entries grew, the hash changed), previous credentials go first, then whatever sorts last.
    let present = encoding.present(
        observed
            .get(output.secret_name.as_str())
            .copied()
            .unwrap_or_default(),
    );
    let staying: BTreeSet<&TokenRef> = valid
        .iter()
        .filter(|v| encoding.holds(&present, v))
        .map(|v| &v.entry.token)
        .collect();
    let mut priority: Vec<usize> = all
        .into_iter()
        .filter(|&i| staying.contains(&valid[i].entry.token))
        .collect();
    // Stable: access key order within current and within previous credentials.
    priority.sort_by_key(|&i| valid[i].entry.previous);
    let chosen = |n: usize| {
        let mut chosen = priority[..n].to_vec();
        chosen.sort_unstable();
        chosen
    };
    let fits = |n: usize| encoding.size(valid, &chosen(n)) <= MAX_OUTPUT_BYTES;
    let (mut kept, mut too_many) = (0, priority.len() + 1);
    while kept + 1 < too_many {
        let mid = kept + (too_many - kept) / 2;
        if fits(mid) {
            kept = mid;
        } else {
            too_many = mid;
        }
    }
    let overflow = Overflow {
        secret_name: output.secret_name.clone(),
        credentials: valid.len(),
        bytes,
        limit: MAX_OUTPUT_BYTES,
        left_out: valid.len() - kept,
    };
    rendered(encoding.encode(valid, &chosen(kept)), kept, Some(overflow))
}

/// An entry valid now.
type Valid<'e> = &'e Prepared;

/// The bytes of a sha256-map without entries.
static EMPTY_MAP: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| sha256_map::write_encoded([]).len());

/// The entries still valid at `now`, sorted by access key, one per credential, and the tokens left
/// out: a token whose access key is malformed, and both tokens wherever two different entries would
/// present the same access key or credential (neither can be told apart, so neither is believed).
/// Excluding tokens never makes the rest collide, so one pass finds them all.
fn valid_entries<'e>(
    entries: &[&'e Prepared],
    now: Timestamp,
) -> (Vec<Valid<'e>>, Vec<RenderError>) {
    // In one order whatever the caller's (the controller's memo has none): which pair of colliding
    // tokens is named, and in which order, must not change from one render to the next.
    let mut live: Vec<&Prepared> = entries
        .iter()
        .copied()
        .filter(|p| p.entry.not_after.is_none_or(|t| t > now))
        .collect();
    live.sort_unstable_by(|a, b| {
        (a.entry.access_key(), &a.entry.token, a.entry.previous).cmp(&(
            b.entry.access_key(),
            &b.entry.token,
            b.entry.previous,
        ))
    });
    let mut excluded: Vec<RenderError> = Vec::new();
    let mut out: BTreeSet<&TokenRef> = BTreeSet::new();
    let mut by_access_key: BTreeMap<&str, &Prepared> = BTreeMap::new();
    for prepared in live {
        let entry = &prepared.entry;
        let bytes = entry.role.len() + entry.scopes.iter().map(String::len).sum::<usize>();
        if bytes > MAX_TOKEN_SCOPE_BYTES {
            if out.insert(&entry.token) {
                excluded.push(RenderError::OverBudget {
                    token: entry.token.clone(),
                    bytes,
                });
            }
            continue;
        }
        let key = entry.access_key();
        if !(1..=64).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            if out.insert(&entry.token) {
                excluded.push(RenderError::BadAccessKey {
                    token: entry.token.clone(),
                });
            }
            continue;
        }
        match by_access_key.entry(key) {
            Slot::Vacant(slot) => {
                slot.insert(prepared);
            }
            Slot::Occupied(slot) if slot.get().entry == *entry => {}
            Slot::Occupied(slot) => {
                ambiguous(&slot.get().entry, entry, &mut out, &mut excluded);
            }
        }
    }
    let valid: Vec<Valid<'e>> = by_access_key
        .into_values()
        .filter(|p| !out.contains(&p.entry.token))
        .collect();
    // Access keys differ, but a Bearer token could still repeat another's through odd prefixes
    // (`a-` + `bc` and `a-b` + `c`); the map's keys must be unique.
    let mut presented: BTreeMap<&str, &Entry> = BTreeMap::new();
    for v in &valid {
        for hash in [&v.bearer_hash, &v.basic_hash] {
            if let Some(first) = presented.insert(hash, &v.entry) {
                ambiguous(first, &v.entry, &mut out, &mut excluded);
            }
        }
    }
    let valid = valid
        .into_iter()
        .filter(|v| !out.contains(&v.entry.token))
        .collect();
    (valid, excluded)
}

/// Leaves out both tokens of two entries that cannot be told apart, reporting the pair once.
fn ambiguous<'e>(
    first: &'e Entry,
    second: &'e Entry,
    out: &mut BTreeSet<&'e TokenRef>,
    excluded: &mut Vec<RenderError>,
) {
    let newly = [&first.token, &second.token]
        .map(|t| out.insert(t))
        .contains(&true);
    if newly {
        excluded.push(RenderError::Ambiguous {
            first: first.token.clone(),
            second: second.token.clone(),
        });
    }
}

/// One checked line per valid entry, in the same order; `None` (and a reason in `excluded`) where
/// the hasher's line is malformed.
fn htpasswd_lines(
    valid: &[Valid<'_>],
    hash: LineHash,
    secret_name: &str,
    htpasswd_line: &mut impl FnMut(&Prepared, LineHash) -> String,
    excluded: &mut Vec<RenderError>,
) -> Vec<Option<String>> {
    valid
        .iter()
        .map(|prepared| {
            let entry = &prepared.entry;
            let line = htpasswd_line(prepared, hash);
            // A line break would forge a second user; a missing or foreign user name would let one
            // credential pass for another.
            let well_formed = line
                .strip_prefix(entry.access_key())
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|hash| !hash.is_empty() && !hash.chars().any(char::is_control));
            if well_formed {
                Some(line)
            } else {
                excluded.push(RenderError::BadHtpasswdLine {
                    secret_name: secret_name.to_owned(),
                    token: entry.token.clone(),
                });
                None
            }
        })
        .collect()
}

/// Whether the rendering `data` of an output lets `credential` in: its htpasswd line, or its Bearer
/// token's key in the sha256-map. The token controller asks this of every output before it hands
/// its clients a staged credential.
pub fn holds(rendering: Rendering, data: &[u8], credential: &Credential) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match rendering {
        Rendering::Htpasswd(_) | Rendering::Trino => {
            let user = format!("{}:", credential.access_key);
            text.lines().any(|line| line.starts_with(&user))
        }
        Rendering::Sha256Map => sha256_map::has_key(data, &credential.bearer()),
    }
}

/// The sha256-map of `entries`: each credential under the keys of both its presented forms.
fn sha256_map<'v, 'e: 'v>(entries: impl Iterator<Item = &'v Valid<'e>>) -> Vec<u8> {
    sha256_map::write_encoded(
        entries.flat_map(|p| [(&*p.bearer_hash, &*p.item), (&*p.basic_hash, &*p.item)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::verifier::{HtpasswdHash, Output, OutputFormat};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const NOW: i64 = 0;

    fn token(namespace: &str, name: &str) -> TokenRef {
        TokenRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn credential(access_key: &str) -> Credential {
        Credential {
            prefix: "tm-".into(),
            access_key: access_key.into(),
            secret_key: format!("{access_key}SECRETsecret0123456789"),
        }
    }

    fn issued(name: &str, access_key: &str) -> TokenCredentials {
        TokenCredentials {
            token: token("analytics", name),
            role: "reader".into(),
            scopes: vec![
                "DATASOURCES:READ:events".into(),
                "PIPES:READ:top_pages".into(),
            ],
            expires_at: None,
            current: credential(access_key),
            previous: None,
            next: None,
        }
    }

    #[test]
    fn a_staged_credential_is_let_in_by_every_format_and_holds_says_so() {
        let staged = TokenCredentials {
            next: Some(credential("NEXTnextNEXT0001")),
            ..issued("superset", "AbCdEfGh12345678")
        };
        let entries = staged.entries();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| !e.previous && e.not_after.is_none()));
        let r = render(
            &outputs(),
            &entries,
            &ObservedOutputs::new(),
            at(NOW),
            fake_line,
        );
        for (output, out) in outputs().iter().zip(&r.outputs) {
            let next = credential("NEXTnextNEXT0001");
            assert!(
                holds(output.rendering, &out.data, &next),
                "{}",
                output.secret_name
            );
            assert!(holds(
                output.rendering,
                &out.data,
                &credential("AbCdEfGh12345678")
            ));
            assert!(!holds(
                output.rendering,
                &out.data,
                &credential("OTHERotherOTH001")
            ));
        }
        // A credential that differs only in its secret key is not held by the map (the key is the
        // hash of the whole Bearer token); htpasswd keys lines by access key, and the access key
        // of every new credential is new.
        let mut forged = credential("NEXTnextNEXT0001");
        forged.secret_key.push('x');
        assert!(!holds(Rendering::Sha256Map, &r.outputs[1].data, &forged));
        assert!(!holds(Rendering::Sha256Map, b"\xff\xfe", &forged));
    }

    fn trino_output() -> Vec<ValidOutput> {
        use crate::api::verifier::{TrinoGrant, TrinoOutput, TrinoPrivilege, TrinoTable};
        validate_outputs(&[Output {
            secret_name: "trino-auth".into(),
            format: OutputFormat::Trino,
            key: None,
            hash: None,
            trino: Some(TrinoOutput {
                tables: vec![TrinoTable {
                    resource: "events".into(),
                    catalog: "memory".into(),
                    schema: "web".into(),
                    table: None,
                }],
                privileges: vec![TrinoGrant {
                    scope_type: "DATASOURCES:READ".into(),
                    privileges: vec![TrinoPrivilege::Select],
                }],
                rules_key: None,
            }),
        }])
        .unwrap()
    }

    #[test]
    fn a_trino_output_writes_password_lines_and_rules_together() {
        let mut tenant = issued("tenant-42", "AAAAAAAAAAAAAAA1");
        tenant.scopes = vec!["DATASOURCES:READ:events:tenant_id = 42".into()];
        tenant.previous = Some((credential("AAAAAAAAAAAAAAA0"), at(60)));
        let mut torn = issued("torn", "BBBBBBBBBBBBBBB1");
        torn.previous = Some((credential("BBBBBBBBBBBBBBB0"), at(60)));
        torn.scopes = vec![
            "DATASOURCES:READ:events:tenant_id = 1".into(),
            "DATASOURCES:READ:events:tenant_id = 2".into(),
        ];
        let entries: Vec<Entry> = [tenant, torn].iter().flat_map(|t| t.entries()).collect();
        let r = render(
            &trino_output(),
            &entries,
            &ObservedOutputs::new(),
            at(NOW),
            fake_line,
        );
        let out = &r.outputs[0];
        assert_eq!(out.key, "password.db");
        assert_eq!(
            text(&r, 0),
            "AAAAAAAAAAAAAAA0:{pbkdf2}".to_owned()
                + &sha256_map::key(&credential("AAAAAAAAAAAAAAA0").secret_key)[..20]
                + "\nAAAAAAAAAAAAAAA1:{pbkdf2}"
                + &sha256_map::key(&credential("AAAAAAAAAAAAAAA1").secret_key)[..20]
                + "\n",
            "both credentials of the overlap, not the token whose filters conflict"
        );
        assert!(holds(
            Rendering::Trino,
            &out.data,
            &credential("AAAAAAAAAAAAAAA0")
        ));
        assert!(!holds(
            Rendering::Trino,
            &out.data,
            &credential("BBBBBBBBBBBBBBB1")
        ));
        let (key, rules) = out.extra.as_ref().unwrap();
        assert_eq!(key, "rules.json");
        let rules: serde_json::Value = serde_json::from_slice(rules).unwrap();
        let users: Vec<&str> = rules["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["^AAAAAAAAAAAAAAA0$", "^AAAAAAAAAAAAAAA1$"]);
        assert_eq!(rules["tables"][0]["filter"], "tenant_id = 42");
        assert_eq!(rules["tables"][0]["table"], "^events$");
        assert_eq!(
            r.excluded
                .iter()
                .map(RenderError::reason)
                .collect::<Vec<_>>(),
            ["TrinoRules"]
        );
        assert!(r.excluded[0].to_string().contains("analytics/torn"));
    }

    fn outputs() -> Vec<ValidOutput> {
        validate_outputs(&[
            Output {
                secret_name: "pinot-htpasswd".into(),
                format: OutputFormat::Htpasswd,
                key: None,
                hash: None,
                trino: None,
            },
            Output {
                secret_name: "pinot-map".into(),
                format: OutputFormat::Sha256Map,
                key: None,
                hash: None,
                trino: None,
            },
        ])
        .unwrap()
    }

    /// Stands in for the real hasher: deterministic, shows which hash was asked for.
    fn fake_line(entry: &Entry, hash: LineHash) -> String {
        let digest = sha256_map::key(entry.secret_key());
        let name = match hash {
            LineHash::Htpasswd(hash) => hash.name(),
            LineHash::Trino => "pbkdf2",
        };
        format!("{}:{{{name}}}{}", entry.access_key(), &digest[..20])
    }

    fn run(entries: &[Entry]) -> Rendered {
        render(
            &outputs(),
            entries,
            &ObservedOutputs::new(),
            at(NOW),
            fake_line,
        )
    }

    fn text(r: &Rendered, i: usize) -> &str {
        std::str::from_utf8(&r.outputs[i].data).unwrap()
    }

    fn json(r: &Rendered) -> serde_json::Value {
        serde_json::from_slice(&r.outputs[1].data).unwrap()
    }

    #[test]
    fn empty_set_renders_an_empty_file_and_an_empty_map() {
        let r = run(&[]);
        assert_eq!(text(&r, 0), "");
        assert_eq!(text(&r, 1), "{\"tokens\":{},\"version\":1}\n");
        assert_eq!((r.tokens, r.credentials, r.next_change), (0, 0, None));
        assert_eq!(r.outputs[0].key, "htpasswd");
        assert_eq!(r.outputs[1].key, "tokens.json");
        assert!(r.outputs.iter().all(|o| o.overflow.is_none()));
    }

    #[test]
    fn one_token_is_one_line_and_two_map_keys_in_a_stable_layout() {
        let t = issued("superset", "AbCdEfGh12345678");
        let r = run(&t.entries());
        let line = fake_line(&t.entries()[0], LineHash::Htpasswd(HtpasswdHash::Bcrypt));
        assert_eq!(text(&r, 0), format!("{line}\n"));
        assert!(line.starts_with("AbCdEfGh12345678:{bcrypt}"));
        let bearer = sha256_map::key(&t.current.bearer());
        let basic = sha256_map::key(&t.current.basic());
        let item = r#"{"accessKey":"AbCdEfGh12345678","notAfter":null,"previous":false,"role":"reader","scopes":["DATASOURCES:READ:events","PIPES:READ:top_pages"],"token":"analytics/superset"}"#;
        let (first, second) = if bearer < basic {
            (&bearer, &basic)
        } else {
            (&basic, &bearer)
        };
        assert_eq!(
            text(&r, 1),
            format!("{{\"tokens\":{{\"{first}\":{item},\"{second}\":{item}}},\"version\":1}}\n")
        );
        assert_eq!((r.tokens, r.credentials), (1, 1));
    }

    #[test]
    fn map_keys_are_sha256_of_the_exact_presented_strings() {
        let t = issued("superset", "AbCdEfGh12345678");
        let map = json(&run(&t.entries()));
        let bearer = "tm-AbCdEfGh12345678-AbCdEfGh12345678SECRETsecret0123456789";
        assert_eq!(t.current.bearer(), bearer);
        // sha256 of the Bearer token, not of "Bearer <token>" nor of the fingerprint.
        let digest: String = <sha2::Sha256 as sha2::Digest>::digest(bearer)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(map["tokens"][&digest]["token"], "analytics/superset");
        let basic = sha256_map::key(&t.current.basic());
        assert_eq!(map["tokens"][&basic]["accessKey"], "AbCdEfGh12345678");
        assert!(
            map["tokens"]
                .get(sha256_map::key(&format!("Bearer {bearer}")))
                .is_none()
        );
    }

    #[test]
    fn a_token_in_overlap_has_both_credentials_and_the_previous_retires() {
        let mut t = issued("superset", "NEWnewNEWnew0001");
        t.previous = Some((credential("OLDoldOLDold0001"), at(3600)));
        let entries = t.entries();
        let r = run(&entries);
        let lines: Vec<&str> = text(&r, 0).lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NEWnewNEWnew0001:"), "{lines:?}");
        assert!(lines[1].starts_with("OLDoldOLDold0001:"), "{lines:?}");
        let map = json(&r);
        let old = &map["tokens"][sha256_map::key(&credential("OLDoldOLDold0001").bearer())];
        assert_eq!(old["previous"], true);
        assert_eq!(old["notAfter"], "2027-01-15T09:00:00Z");
        let new = &map["tokens"][sha256_map::key(&t.current.bearer())];
        assert_eq!(new["previous"], false);
        assert_eq!(map["tokens"].as_object().unwrap().len(), 4);
        assert_eq!((r.tokens, r.credentials), (1, 2));
        assert_eq!(r.next_change, Some(at(3600)));
    }

    #[test]
    fn not_after_is_retires_at_for_previous_then_expires_at_then_null() {
        let cases = [
            // (expiresAt, previous retiresAt) -> (current notAfter, previous notAfter)
            (None, None, (None, None)),
            (Some(at(900)), None, (Some(at(900)), None)),
            (None, Some(at(60)), (None, Some(at(60)))),
            (Some(at(900)), Some(at(60)), (Some(at(900)), Some(at(60)))),
            // Expiry removes both credentials, so the previous one is not valid past it either.
            (Some(at(30)), Some(at(60)), (Some(at(30)), Some(at(30)))),
        ];
        for (expires_at, retires_at, (current, previous)) in cases {
            let mut t = issued("superset", "NEWnewNEWnew0001");
            t.expires_at = expires_at;
            t.previous = retires_at.map(|r| (credential("OLDoldOLDold0001"), r));
            let entries = t.entries();
            assert_eq!(
                entries[0].not_after, current,
                "{expires_at:?} {retires_at:?}"
            );
            assert!(!entries[0].previous);
            assert_eq!(entries.get(1).map(|e| e.not_after), previous.map(Some));
            assert!(entries.get(1).is_none_or(|e| e.previous));
        }
    }

    #[test]
    fn credentials_past_not_after_are_left_out_and_the_next_one_wakes_us() {
        let mut retired = issued("a", "AAAAAAAAAAAAAAA1");
        retired.previous = Some((credential("AAAAAAAAAAAAAAA0"), at(NOW)));
        let mut expired = issued("b", "BBBBBBBBBBBBBBB1");
        expired.expires_at = Some(at(NOW - 1));
        let mut later = issued("c", "CCCCCCCCCCCCCCC1");
        later.expires_at = Some(at(7200));
        let entries: Vec<Entry> = [retired, expired, later]
            .iter()
            .flat_map(|t| t.entries())
            .collect();
        let r = run(&entries);
        let users: Vec<&str> = text(&r, 0)
            .lines()
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(users, ["AAAAAAAAAAAAAAA1", "CCCCCCCCCCCCCCC1"]);
        assert_eq!((r.tokens, r.credentials), (2, 2));
        assert_eq!(r.next_change, Some(at(7200)));
    }

    #[test]
    fn lines_are_sorted_by_access_key_whatever_the_input_order() {
        let keys = [
            "zzzzzzzzzzzzzzz1",
            "AAAAAAAAAAAAAAA1",
            "aaaaaaaaaaaaaaa1",
            "0000000000000001",
        ];
        let entries: Vec<Entry> = keys
            .iter()
            .enumerate()
            .flat_map(|(i, k)| issued(&format!("t{i}"), k).entries())
            .collect();
        let r = run(&entries);
        let users: Vec<&str> = text(&r, 0)
            .lines()
            .map(|l| l.split(':').next().unwrap())
            .collect();
        // Byte order: digits, then upper case, then lower case.
        assert_eq!(
            users,
            [
                "0000000000000001",
                "AAAAAAAAAAAAAAA1",
                "aaaaaaaaaaaaaaa1",
                "zzzzzzzzzzzzzzz1"
            ]
        );
        assert!(text(&r, 0).ends_with('\n'));
    }

    #[test]
    fn an_unchanged_set_renders_byte_identical_outputs_in_any_order() {
        let mut overlap = issued("b", "BBBBBBBBBBBBBBB2");
        overlap.previous = Some((credential("BBBBBBBBBBBBBBB1"), at(600)));
        let mut entries: Vec<Entry> = [
            issued("a", "AAAAAAAAAAAAAAA1"),
            overlap,
            issued("c", "CCCCCCCCCCCCCCC1"),
        ]
        .iter()
        .flat_map(|t| t.entries())
        .collect();
        let first = run(&entries);
        entries.reverse();
        let reversed = run(&entries);
        entries.rotate_left(2);
        let rotated = run(&entries);
        assert_eq!(first, reversed);
        assert_eq!(first, rotated);
    }

    #[test]
    fn an_entry_given_twice_counts_once() {
        let entries = issued("a", "AAAAAAAAAAAAAAA1").entries();
        let twice: Vec<Entry> = entries.iter().chain(&entries).cloned().collect();
        assert_eq!(run(&twice), run(&entries));
    }

    #[test]
    fn two_tokens_with_one_access_key_are_both_left_out_naming_both_and_the_rest_rendered() {
        let entries: Vec<Entry> = [
            issued("a", "AAAAAAAAAAAAAAA1"),
            issued("b", "AAAAAAAAAAAAAAA1"),
            issued("c", "CCCCCCCCCCCCCCC1"),
        ]
        .iter()
        .flat_map(|t| t.entries())
        .collect();
        let r = run(&entries);
        assert_eq!(
            r.excluded,
            vec![RenderError::Ambiguous {
                first: token("analytics", "a"),
                second: token("analytics", "b")
            }]
        );
        assert_eq!((r.tokens, r.credentials), (1, 1));
        for (output, out) in outputs().iter().zip(&r.outputs) {
            assert!(holds(
                output.rendering,
                &out.data,
                &credential("CCCCCCCCCCCCCCC1")
            ));
            assert!(!holds(
                output.rendering,
                &out.data,
                &credential("AAAAAAAAAAAAAAA1")
            ));
        }
    }

    #[test]
    fn a_token_over_its_byte_budget_is_left_out_alone() {
        let mut greedy = issued("greedy", "GGGGGGGGGGGGGGG1");
        greedy.scopes = (0..64)
            .map(|i| format!("DATASOURCES:READ:t{i}:{}", "x".repeat(1000)))
            .collect();
        let mut modest = issued("modest", "MMMMMMMMMMMMMMM1");
        modest.scopes = vec![format!("DATASOURCES:READ:t:{}", "x".repeat(1000))];
        let mut entries = greedy.entries();
        entries.extend(modest.entries());
        let r = run(&entries);
        assert!(
            matches!(&r.excluded[..], [RenderError::OverBudget { token, bytes }]
                if *token == greedy.token && *bytes > MAX_TOKEN_SCOPE_BYTES),
            "{:?}",
            r.excluded
        );
        assert_eq!((r.tokens, r.credentials), (1, 1));
        assert!(text(&r, 0).starts_with("MMMMMMMMMMMMMMM1:"));
    }

    #[test]
    fn an_access_key_that_could_forge_a_line_leaves_out_its_token_alone() {
        for bad in ["", "a:b", "a\nb", "a b", &"a".repeat(65)] {
            let mut t = issued("a", "x");
            t.current.access_key = bad.into();
            let mut entries = t.entries();
            entries.extend(issued("c", "CCCCCCCCCCCCCCC1").entries());
            let r = run(&entries);
            assert_eq!(
                r.excluded,
                vec![RenderError::BadAccessKey {
                    token: token("analytics", "a")
                }],
                "{bad:?}"
            );
            assert_eq!((r.tokens, r.credentials), (1, 1), "{bad:?}");
            assert!(text(&r, 0).starts_with("CCCCCCCCCCCCCCC1:"), "{bad:?}");
        }
    }

    #[test]
    fn a_malformed_htpasswd_line_from_the_hasher_leaves_out_that_credential_alone() {
        let mut entries = issued("a", "AAAAAAAAAAAAAAA1").entries();
        entries.extend(issued("c", "CCCCCCCCCCCCCCC1").entries());
        let bad_lines: [fn(&Entry, LineHash) -> String; 4] = [
            |e, _| format!("{}:hash\n", e.access_key()),
            |e, _| format!("{}:hash\nmallory:x", e.access_key()),
            |_, _| "someoneelse:hash".into(),
            |e, _| format!("{}:", e.access_key()),
        ];
        for line in bad_lines {
            let for_a = |e: &Entry, h: LineHash| {
                if e.access_key() == "AAAAAAAAAAAAAAA1" {
                    line(e, h)
                } else {
                    fake_line(e, h)
                }
            };
            let r = render(
                &outputs(),
                &entries,
                &ObservedOutputs::new(),
                at(NOW),
                for_a,
            );
            assert_eq!(
                r.excluded,
                vec![RenderError::BadHtpasswdLine {
                    secret_name: "pinot-htpasswd".into(),
                    token: token("analytics", "a")
                }]
            );
            let htpasswd = text(&r, 0);
            assert!(htpasswd.starts_with("CCCCCCCCCCCCCCC1:"), "{htpasswd}");
            assert!(!htpasswd.contains("AAAAAAAAAAAAAAA1") && !htpasswd.contains("mallory"));
        }
    }

    #[test]
    fn the_hasher_runs_once_per_credential_and_hash_and_never_for_a_map() {
        let many = validate_outputs(&[
            Output {
                secret_name: "a".into(),
                format: OutputFormat::Htpasswd,
                key: None,
                hash: Some(HtpasswdHash::Bcrypt),
                trino: None,
            },
            Output {
                secret_name: "b".into(),
                format: OutputFormat::Htpasswd,
                key: Some("auth".into()),
                hash: None,
                trino: None,
            },
            Output {
                secret_name: "c".into(),
                format: OutputFormat::Htpasswd,
                key: None,
                hash: Some(HtpasswdHash::Ssha),
                trino: None,
            },
            Output {
                secret_name: "d".into(),
                format: OutputFormat::Sha256Map,
                key: None,
                hash: None,
                trino: None,
            },
        ])
        .unwrap();
        let entries: Vec<Entry> = [
            issued("a", "AAAAAAAAAAAAAAA1"),
            issued("b", "BBBBBBBBBBBBBBB1"),
        ]
        .iter()
        .flat_map(|t| t.entries())
        .collect();
        let mut calls = Vec::new();
        let r = render(&many, &entries, &ObservedOutputs::new(), at(NOW), |e, h| {
            calls.push((e.access_key().to_owned(), h));
            fake_line(e, h)
        });
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert_eq!(r.outputs[0].data, r.outputs[1].data);
        assert_ne!(r.outputs[0].data, r.outputs[2].data);
        assert_eq!(r.outputs[1].key, "auth");
        let map_only = &many[3..];
        render(
            map_only,
            &entries,
            &ObservedOutputs::new(),
            at(NOW),
            |_, _| unreachable!("no htpasswd output"),
        );
    }

    /// `n` tokens with distinct 16-character access keys, three scopes, and an expiry.
    fn fleet(n: usize) -> Vec<Entry> {
        (0..n)
            .flat_map(|i| {
                let mut t = issued(&format!("token-{i:05}"), &format!("K{i:015}"));
                t.scopes.push("DATASOURCES:APPEND:events".into());
                t.expires_at = Some(at(86_400));
                t.entries()
            })
            .collect()
    }

    #[test]
    fn an_output_over_the_limit_is_reported_by_name_and_never_gains_credentials() {
        let fleet = fleet(2000);
        let r = run(&fleet);
        let map = &r.outputs[1];
        let overflow = map
            .overflow
            .as_ref()
            .expect("2000 credentials exceed a sha256-map");
        assert_eq!(overflow.secret_name, "pinot-map");
        assert_eq!((overflow.credentials, overflow.left_out), (2000, 2000));
        assert!(overflow.bytes > MAX_OUTPUT_BYTES);
        assert!(
            overflow
                .to_string()
                .starts_with("output pinot-map: 2000 credentials")
        );
        // Nothing was in it before, so nothing new enters: the map stays empty rather than cut.
        assert_eq!(map.data, b"{\"tokens\":{},\"version\":1}\n");
        assert_eq!(map.credentials, 0);
        // The denser htpasswd output fits the same set.
        assert!(r.outputs[0].overflow.is_none());
        assert_eq!(r.outputs[0].credentials, 2000);
    }

    #[test]
    fn an_overflowing_output_still_loses_revoked_credentials() {
        let fleet = fleet(2000);
        // The map as it was with the first 1000 credentials.
        let before = run(&fleet[..1000]).outputs[1].data.clone();
        // Token 0 is revoked (gone from the entries) while 1000 more arrive.
        let observed = ObservedOutputs::from([("pinot-map", before.as_slice())]);
        let r = render(&outputs(), &fleet[1..], &observed, at(NOW), fake_line);
        let map = &r.outputs[1];
        assert_eq!(map.credentials, 999);
        assert_eq!(map.overflow.as_ref().unwrap().left_out, 1999 - 999);
        let written: serde_json::Value = serde_json::from_slice(&map.data).unwrap();
        assert!(
            written["tokens"]
                .get(sha256_map::key(&fleet[0].credential.bearer()))
                .is_none()
        );
        assert!(
            written["tokens"]
                .get(sha256_map::key(&fleet[1].credential.bearer()))
                .is_some()
        );
        assert!(
            written["tokens"]
                .get(sha256_map::key(&fleet[1500].credential.bearer()))
                .is_none()
        );
    }

    #[test]
    fn an_overflowing_output_still_takes_a_rotation_of_a_token_it_holds() {
        let fleet = fleet(2000);
        let before = run(&fleet[..1000]).outputs[1].data.clone();
        let observed = ObservedOutputs::from([("pinot-map", before.as_slice())]);
        // Token 5 rotates with an overlap: a new current credential, the old one as previous.
        let rotated = TokenCredentials {
            previous: Some((fleet[5].credential.clone(), at(600))),
            ..issued("token-00005", "NEWnewNEWnew0005")
        };
        let mut entries: Vec<Entry> = fleet.clone();
        entries.remove(5);
        entries.extend(rotated.entries());
        let r = render(&outputs(), &entries, &observed, at(NOW), fake_line);
        let map = &r.outputs[1];
        assert!(map.overflow.is_some());
        assert_eq!(map.credentials, 1001);
        let written: serde_json::Value = serde_json::from_slice(&map.data).unwrap();
        let has = |c: &Credential| {
            written["tokens"]
                .get(sha256_map::key(&c.bearer()))
                .is_some()
        };
        assert!(
            has(&rotated.current),
            "the new credential enters with its token"
        );
        assert!(
            has(&fleet[5].credential),
            "the previous one stays until it retires"
        );
        assert!(!has(&fleet[1000].credential), "a token not in it yet waits");
    }

    #[test]
    fn an_overflow_that_cannot_keep_everything_it_had_keeps_what_fits_in_order() {
        let fleet = fleet(2000);
        // Claim the output already holds everything: the kept set alone is too large.
        let prepared: Vec<Prepared> = fleet.iter().cloned().map(Prepared::new).collect();
        let refs: Vec<&Prepared> = prepared.iter().collect();
        let (all, _) = valid_entries(&refs, at(NOW));
        let everything = Encoding::Sha256Map
            .encode(&all, &(0..all.len()).collect::<Vec<_>>())
            .data;
        let observed = ObservedOutputs::from([("pinot-map", everything.as_slice())]);
        let r = render(&outputs(), &fleet, &observed, at(NOW), fake_line);
        let map = &r.outputs[1];
        assert!(map.data.len() <= MAX_OUTPUT_BYTES);
        let overflow = map.overflow.as_ref().unwrap();
        assert_eq!(overflow.left_out, 2000 - map.credentials);
        assert!(map.credentials > 1000, "{}", map.credentials);
        // One more would not fit.
        let one_more = Encoding::Sha256Map.encode(&all, &(0..=map.credentials).collect::<Vec<_>>());
        assert!(one_more.len() > MAX_OUTPUT_BYTES);
    }

    #[test]
    fn exclusions_name_the_same_tokens_in_the_same_order_whatever_the_input_order() {
        let mut entries: Vec<Entry> = [
            issued("alpha", "SAMEsameSAME0001"),
            issued("bravo", "SAMEsameSAME0001"),
            issued("charlie", "SAMEsameSAME0001"),
            issued("delta", "DDDDDDDDDDDDDDD1"),
        ]
        .iter()
        .flat_map(TokenCredentials::entries)
        .collect();
        let forward = render(
            &outputs(),
            &entries,
            &ObservedOutputs::new(),
            at(NOW),
            fake_line,
        );
        entries.reverse();
        let reversed = render(
            &outputs(),
            &entries,
            &ObservedOutputs::new(),
            at(NOW),
            fake_line,
        );
        assert_eq!(forward, reversed);
        assert_eq!(forward.tokens, 1, "{:?}", forward.excluded);
    }

    #[test]
    fn an_output_is_sized_exactly_without_encoding_it() {
        let mut fleet = fleet(50);
        fleet[3].not_after = Some(at(NOW + 60));
        fleet[4].previous = true;
        let prepared: Vec<Prepared> = fleet.iter().cloned().map(Prepared::new).collect();
        let refs: Vec<&Prepared> = prepared.iter().collect();
        let (all, _) = valid_entries(&refs, at(NOW));
        let lines: Vec<Option<String>> = all
            .iter()
            .enumerate()
            .map(|(i, p)| (i % 7 != 0).then(|| fake_line(&p.entry, LineHash::Trino)))
            .collect();
        for encoding in [Encoding::Sha256Map, Encoding::Htpasswd(&lines)] {
            for chosen in [vec![], vec![0], vec![1, 4, 9], (0..all.len()).collect()] {
                assert_eq!(
                    encoding.size(&all, &chosen),
                    encoding.encode(&all, &chosen).len(),
                    "{chosen:?}"
                );
            }
        }
    }

    /// A line of the length the real hash has: bcrypt `$2y$10$` + 53, sha256-crypt `$5$` + 16-char
    /// salt + `$` + 43 (default rounds, not written), ssha `{SSHA}` + base64 of 20 + 8 salt bytes.
    fn line_of_real_length(entry: &Entry, hash: LineHash) -> String {
        let len = match hash {
            LineHash::Htpasswd(HtpasswdHash::Bcrypt) => 60,
            LineHash::Htpasswd(HtpasswdHash::Sha256Crypt) => 63,
            LineHash::Htpasswd(HtpasswdHash::Ssha) => 46,
            // `1000:` + 32 hex salt + `:` + 40 hex hash.
            LineHash::Trino => 78,
        };
        format!("{}:{}", entry.access_key(), "h".repeat(len))
    }

    #[test]
    fn a_full_output_holds_the_documented_number_of_typical_credentials() {
        // Typical: a 16-character access key, `analytics/token-00042`, role `reader`, 3 scopes, an expiry.
        let fleet = fleet(1000);
        let base = run(&[]);
        for (hash, per_credential, capacity) in [
            (HtpasswdHash::Bcrypt, 78, 13_443),
            (HtpasswdHash::Sha256Crypt, 81, 12_945),
            (HtpasswdHash::Ssha, 64, 16_384),
        ] {
            let out = validate_outputs(&[Output {
                secret_name: "h".into(),
                format: OutputFormat::Htpasswd,
                key: None,
                hash: Some(hash),
                trino: None,
            }])
            .unwrap();
            let r = render(
                &out,
                &fleet,
                &ObservedOutputs::new(),
                at(NOW),
                line_of_real_length,
            );
            assert_eq!(r.outputs[0].data.len(), 1000 * per_credential, "{hash:?}");
            assert_eq!(MAX_OUTPUT_BYTES / per_credential, capacity, "{hash:?}");
        }
        let map = run(&fleet).outputs[1].data.len() - base.outputs[1].data.len();
        // Two keys of 64 hex characters per credential, each with the whole item; the first item
        // has no comma before it.
        assert_eq!(map + 1, 1000 * 574);
        assert_eq!((MAX_OUTPUT_BYTES - base.outputs[1].data.len()) / 574, 1826);
    }

    #[test]
    fn debug_output_never_shows_a_credential() {
        let mut t = issued("a", "AAAAAAAAAAAAAAA1");
        t.previous = Some((credential("AAAAAAAAAAAAAAA0"), at(60)));
        let r = run(&t.entries());
        let shown = format!("{t:?} {:?} {r:?}", t.entries());
        for credential in [&t.current, &t.previous.as_ref().unwrap().0] {
            assert!(!shown.contains(&credential.secret_key), "{shown}");
            assert!(!shown.contains(&credential.basic()), "{shown}");
            assert!(
                !shown.contains(&sha256_map::key(&credential.bearer())),
                "{shown}"
            );
        }
    }
}
