//! The `sha256-map` output of an ApiTokenVerifier, loaded for lookups: pure, no I/O.
//!
//! The map's keys are hex SHA-256 digests of presented credentials (the Bearer token, the Basic
//! token), so the map holds no secret and a lookup costs one hash and one probe whatever its size.
//! The two keys of one credential share one [`Grant`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::http::HeaderValue;
use jiff::Timestamp;

use crate::core::scope::{self, Scope};
use crate::core::sha256_map::{self, Item};
pub use crate::core::sha256_map::{Digest32, MapError, digest};
use crate::core::usage::Minute;

/// What one credential may do, as the map says, with its response headers made once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The credential's access key: to tell its Bearer form from its Basic form, never shown.
    pub access_key: String,
    /// `namespace/name` of the token.
    pub token: HeaderValue,
    pub role: HeaderValue,
    /// In the map's order; one list shared by every grant that carries it.
    pub scopes: Arc<[GrantedScope]>,
    /// The credential is refused from this instant on; `None`: until it leaves the map.
    pub not_after: Option<Timestamp>,
    /// Where [`Credentials::note_use`] records it.
    slot: usize,
}

/// One scope of a grant: its canonical string (the `X-Tokenmint-Scope` value) and its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantedScope {
    pub canonical: HeaderValue,
    pub scope: Scope,
    /// The row filter, as a header value.
    pub filter: Option<HeaderValue>,
}

/// Every credential of one map, by the SHA-256 of its presented form.
#[derive(Debug, Default)]
pub struct Credentials {
    by_digest: HashMap<Digest32, Arc<Grant>>,
    /// Each credential's grant, by its slot.
    grants: Vec<Arc<Grant>>,
    /// The minute each credential was last let in (0: not since loaded), by slot.
    used: Box<[AtomicU32]>,
    /// Distinct credentials (each has a Bearer and a Basic key).
    credentials: usize,
    /// Items left out because they could not be read (a credential refused, never one let in).
    skipped: usize,
}

impl Credentials {
    /// The grant of the credential whose presented form hashes to `digest`.
    ///
    /// Timing: the probe compares digests, not credentials, so how long it takes tells a caller
    /// only about the SHA-256 of what it sent, which it knows already; no constant-time compare is
    /// needed.
    pub fn get(&self, digest: &Digest32) -> Option<&Grant> {
        self.by_digest.get(digest).map(Arc::as_ref)
    }

    /// Distinct credentials loaded.
    pub fn credentials(&self) -> usize {
        self.credentials
    }

    /// Items that could not be read and were left out.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// `grant`'s credential was let in during `minute`. On the hot path: one relaxed load, and a
    /// store only the first time in a minute, so checks never wait on each other.
    pub fn note_use(&self, grant: &Grant, minute: Minute) {
        if let Some(slot) = self.used.get(grant.slot)
            && slot.load(Ordering::Relaxed) < minute
        {
            slot.fetch_max(minute, Ordering::Relaxed);
        }
    }

    /// Every credential let in since this map was loaded, with the last minute it was.
    pub fn uses(&self) -> impl Iterator<Item = (&Grant, Minute)> {
        self.grants
            .iter()
            .zip(self.used.iter())
            .filter_map(|(grant, used)| {
                let minute = used.load(Ordering::Relaxed);
                (minute > 0).then_some((grant.as_ref(), minute))
            })
    }
}

/// Reads a `sha256-map` document. An item that cannot be read (a key that is not 64 hex digits, a
/// `notAfter` that is no RFC 3339 instant, a value that cannot be a header) is left out and counted in
/// [`Credentials::skipped`]: its credential is refused.
///
/// Items are taken one at a time as they are parsed ([`sha256_map::read_each`]) and only the grant is
/// kept, so a load holds the document and the result, never a parsed copy of every item; equal role
/// and scope lists are held once, whichever tokens carry them.
pub fn parse(data: &[u8]) -> Result<Credentials, MapError> {
    load(|each| sha256_map::read_each(data, each))
}

/// [`parse`] from a reader (a mounted file), which is never held whole.
pub fn parse_from(reader: impl std::io::Read) -> Result<Credentials, MapError> {
    load(|each| sha256_map::read_each_from(reader, each))
}

/// The credentials `read` hands over item by item.
fn load(
    read: impl FnOnce(&mut dyn FnMut(&str, Item<'static>)) -> Result<(), MapError>,
) -> Result<Credentials, MapError> {
    let mut credentials = Credentials::default();
    // The Bearer and the Basic key of a credential carry equal items: one grant serves both. Grants
    // are found again by access key, and shared only when everything else is equal too.
    let mut by_access_key: HashMap<String, Vec<Arc<Grant>>> = HashMap::new();
    let mut held = Held::default();
    read(&mut |key, item| {
        let Some(digest) = sha256_map::parse_key(key) else {
            credentials.skipped += 1;
            return;
        };
        let Some(candidate) = grant(&item, credentials.grants.len(), &mut held) else {
            credentials.skipped += 1;
            return;
        };
        let same = by_access_key
            .entry(candidate.access_key.clone())
            .or_default();
        let shared = match same.iter().find(|g| g.same_credential(&candidate)) {
            Some(existing) => existing.clone(),
            None => {
                let grant = Arc::new(candidate);
                same.push(grant.clone());
                credentials.grants.push(grant.clone());
                grant
            }
        };
        credentials.by_digest.insert(digest, shared);
    })?;
    credentials.by_digest.shrink_to_fit();
    credentials.grants.shrink_to_fit();
    credentials.credentials = credentials.grants.len();
    credentials.used = credentials
        .grants
        .iter()
        .map(|_| AtomicU32::new(0))
        .collect();
    Ok(credentials)
}

/// Values many grants share, held once per load: roles and whole scope lists.
#[derive(Default)]
struct Held {
    roles: HashMap<String, HeaderValue>,
    scopes: HashMap<Vec<String>, Arc<[GrantedScope]>>,
}

impl Held {
    fn role(&mut self, text: &str) -> Option<HeaderValue> {
        if let Some(role) = self.roles.get(text) {
            return Some(role.clone());
        }
        let role = header(text)?;
        self.roles.insert(text.to_owned(), role.clone());
        Some(role)
    }

    fn scopes(&mut self, texts: &[String]) -> Option<Arc<[GrantedScope]>> {
        if let Some(scopes) = self.scopes.get(texts) {
            return Some(scopes.clone());
        }
        let scopes: Arc<[GrantedScope]> = texts
            .iter()
            .map(|text| {
                // Held once, as a header value; the scope keeps its type and resource.
                let mut scope = scope::parse(text).ok()?;
                let filter = scope.filter.take();
                Some(GrantedScope {
                    canonical: header(text)?,
                    scope,
                    filter: match filter {
                        Some(filter) => Some(header(&filter)?),
                        None => None,
                    },
                })
            })
            .collect::<Option<Vec<_>>>()?
            .into();
        self.scopes.insert(texts.to_vec(), scopes.clone());
        Some(scopes)
    }
}

impl Grant {
    /// Whether `other` says the same of the same credential (its slot aside).
    fn same_credential(&self, other: &Grant) -> bool {
        self.access_key == other.access_key
            && self.token == other.token
            && self.role == other.role
            && self.scopes == other.scopes
            && self.not_after == other.not_after
    }
}

fn grant(item: &Item, slot: usize, held: &mut Held) -> Option<Grant> {
    let not_after = match &item.not_after {
        Some(text) => Some(text.parse::<Timestamp>().ok()?),
        None => None,
    };
    Some(Grant {
        access_key: item.access_key.to_string(),
        token: header(&item.token)?,
        role: held.role(&item.role)?,
        scopes: held.scopes(&item.scopes)?,
        not_after,
        slot,
    })
}

/// A header value of `text`: UTF-8 goes through as bytes (nginx and Envoy pass them on), control
/// characters never do.
fn header(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::sha256_map::key as presented_hash;
    use serde_json::json;

    pub(crate) const BEARER: &str = "tm-AAAAAAAAAAAAAAA1-secretsecretsecretsecretsecret01";
    /// base64 of `AAAAAAAAAAAAAAA1:secretsecretsecretsecretsecret01`.
    pub(crate) const BASIC: &str =
        "QUFBQUFBQUFBQUFBQUFBMTpzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXQwMQ==";

    pub(crate) fn item(scopes: &[&str], not_after: Option<&str>) -> serde_json::Value {
        json!({"accessKey": "AAAAAAAAAAAAAAA1", "token": "data/app", "role": "reader",
               "scopes": scopes, "notAfter": not_after, "previous": false})
    }

    pub(crate) fn map_of(item: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"version": 1, "tokens": {
            presented_hash(BEARER): item.clone(),
            presented_hash(BASIC): item,
        }}))
        .unwrap()
    }

    #[test]
    fn both_presented_forms_find_one_shared_grant() {
        let creds = parse(&map_of(item(
            &[
                "PIPES:READ:top_pages",
                "DATASOURCES:READ:events:tenant_id = 42",
            ],
            Some("2030-01-01T00:00:00Z"),
        )))
        .unwrap();
        assert_eq!((creds.credentials(), creds.skipped()), (1, 0));
        let bearer = creds.get(&digest(BEARER)).unwrap();
        let basic = creds.get(&digest(BASIC)).unwrap();
        assert!(std::ptr::eq(bearer, basic));
        assert_eq!(bearer.token, "data/app");
        assert_eq!(bearer.role, "reader");
        assert_eq!(
            bearer.not_after,
            Some("2030-01-01T00:00:00Z".parse().unwrap())
        );
        let events = &bearer.scopes[1];
        assert_eq!(events.canonical, "DATASOURCES:READ:events:tenant_id = 42");
        assert_eq!(events.scope.type_, "DATASOURCES:READ");
        assert_eq!(events.scope.resource.as_deref(), Some("events"));
        assert_eq!(events.filter.as_ref().unwrap(), "tenant_id = 42");
        assert!(creds.get(&digest("tm-AAAAAAAAAAAAAAA1")).is_none());
    }

    #[test]
    fn a_use_is_noted_per_credential_and_never_moves_back() {
        let creds = parse(&map_of(item(&[], None))).unwrap();
        assert_eq!(creds.uses().count(), 0);
        let grant = creds.get(&digest(BEARER)).unwrap();
        creds.note_use(grant, 100);
        creds.note_use(creds.get(&digest(BASIC)).unwrap(), 99);
        let uses: Vec<_> = creds
            .uses()
            .map(|(g, m)| (g.access_key.clone(), m))
            .collect();
        assert_eq!(uses, [("AAAAAAAAAAAAAAA1".to_owned(), 100)]);
    }

    #[test]
    fn the_empty_map_the_verifier_writes_loads_with_nothing_in_it() {
        let creds = parse(b"{\"tokens\":{},\"version\":1}\n").unwrap();
        assert_eq!(creds.credentials(), 0);
    }

    #[test]
    fn fields_a_later_verifier_adds_are_ignored() {
        let mut extra = item(&[], None);
        extra["notBefore"] = json!("2020-01-01T00:00:00Z");
        let mut doc: serde_json::Value = serde_json::from_slice(&map_of(extra)).unwrap();
        doc["generatedAt"] = json!("now");
        let creds = parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(creds.credentials(), 1);
    }

    #[test]
    fn a_malformed_map_is_an_error_that_does_not_quote_it() {
        let secretish = "tm-AAAAAAAAAAAAAAA1-secretsecret";
        for (data, starts) in [
            (b"{\"tokens\":".to_vec(), "not a sha256-map: truncated JSON"),
            (b"not json".to_vec(), "not a sha256-map: invalid JSON"),
            (
                format!("{{\"version\":1,\"tokens\":\"{secretish}\"}}").into_bytes(),
                "not a sha256-map: unexpected content",
            ),
            (b"{\"version\":1}".to_vec(), "not a sha256-map"),
            (
                b"{\"version\":2,\"tokens\":{}}".to_vec(),
                "sha256-map version 2, this authz reads version 1",
            ),
            (Vec::new(), "not a sha256-map"),
        ] {
            let err = parse(&data).unwrap_err().to_string();
            assert!(err.starts_with(starts), "{err}");
            assert!(!err.contains(secretish), "{err}");
        }
    }

    #[test]
    fn unreadable_items_are_left_out_and_counted() {
        let good = item(&["ADMIN"], None);
        let doc = json!({"version": 1, "tokens": {
            presented_hash(BEARER): good,
            "ABCDEF": item(&[], None),
            presented_hash("b"): item(&[], Some("yesterday")),
            presented_hash("c"): item(&["lower:case"], None),
            presented_hash("d"): {"accessKey": "X", "token": "a\nb", "role": "r", "notAfter": null},
        }});
        let creds = parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!((creds.credentials(), creds.skipped()), (1, 4));
        assert!(creds.get(&digest(BEARER)).is_some());
        assert!(creds.get(&digest("b")).is_none());
    }

    #[test]
    fn grants_are_shared_only_when_the_items_say_the_same_and_lists_are_held_once() {
        let mut other = item(&["ADMIN"], None);
        other["token"] = json!("data/other");
        let doc = json!({"version": 1, "tokens": {
            presented_hash(BEARER): item(&["PIPES:READ"], None),
            presented_hash(BASIC): item(&["PIPES:READ"], None),
            // The same access key saying something else: a grant of its own, never merged.
            presented_hash("forged"): other,
            presented_hash("second"): {"accessKey": "B", "token": "data/b", "role": "reader",
                                       "scopes": ["PIPES:READ"], "notAfter": null},
        }});
        let creds = parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!((creds.credentials(), creds.skipped()), (3, 0));
        let (a, forged) = (
            creds.get(&digest(BEARER)).unwrap(),
            creds.get(&digest("forged")).unwrap(),
        );
        assert!(std::ptr::eq(a, creds.get(&digest(BASIC)).unwrap()));
        assert_eq!(forged.token, "data/other");
        assert_eq!(forged.scopes[0].canonical, "ADMIN");
        let b = creds.get(&digest("second")).unwrap();
        assert!(Arc::ptr_eq(&a.scopes, &b.scopes), "one scope list for both");
    }

    #[test]
    fn a_document_is_read_whole_before_it_is_believed() {
        for data in [
            &b"{\"tokens\":{},\"tokens\":{},\"version\":1}"[..],
            b"{\"tokens\":{}}",
            b"{\"version\":1,\"version\":1,\"tokens\":{}}",
            b"{\"tokens\":{},\"version\":1} trailing",
        ] {
            assert!(parse(data).is_err(), "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn a_map_read_from_a_reader_is_the_map_read_from_bytes() {
        let data = map_of(item(&["PIPES:READ"], Some("2030-01-01T00:00:00Z")));
        let (from_bytes, from_reader) = (parse(&data).unwrap(), parse_from(&data[..]).unwrap());
        assert_eq!(from_reader.credentials(), from_bytes.credentials());
        assert_eq!(
            from_reader.get(&digest(BEARER)),
            from_bytes.get(&digest(BEARER))
        );
        let cut = &data[..data.len() / 2];
        assert_eq!(
            parse_from(cut).unwrap_err().to_string(),
            parse(cut).unwrap_err().to_string()
        );
    }
}
