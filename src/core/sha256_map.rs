//! The `sha256-map` output format, written once: the verifier writes it ([`write_encoded`]) and `tokenmint
//! authz` reads it ([`read_each`]), so the two cannot drift apart.
//!
//! A JSON document `{"tokens": {HEX: ITEM, ...}, "version": 1}` and a final newline. Each key is the
//! hex SHA-256 of a presented credential (the exact text after `Bearer ` or `Basic `), so the map
//! holds no secret and a lookup costs one hash and one probe; a credential has two keys (its Bearer
//! and its Basic form) with equal items. Keys are sorted at every level and the JSON is compact,
//! so equal inputs give equal bytes. A reader ignores fields it does not know.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The format's version; a reader refuses any other.
pub const VERSION: u32 = 1;

/// SHA-256 of a presented credential.
pub type Digest32 = [u8; 32];

/// What the map says of one credential. Fields are declared in sorted order, so they serialize
/// sorted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Item<'a> {
    /// Tells the Bearer form from the Basic form of one credential; never shown.
    pub access_key: Cow<'a, str>,
    /// RFC 3339; the credential is refused from this instant on. `null`: until it leaves the map.
    pub not_after: Option<String>,
    /// A previous credential still in its overlap.
    #[serde(default)]
    pub previous: bool,
    pub role: Cow<'a, str>,
    /// Canonical scope strings, `TYPE[:resource[:filter]]`.
    #[serde(default)]
    pub scopes: Cow<'a, [String]>,
    /// `namespace/name` of the token.
    pub token: Cow<'a, str>,
}

/// Why a map cannot be used at all. Never carries the map's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("not a sha256-map: {what} at line {line} column {column}")]
    NotJson {
        what: &'static str,
        line: usize,
        column: usize,
    },
    #[error("sha256-map version {found}, this authz reads version {VERSION}")]
    Version { found: u64 },
}

/// SHA-256 of a presented credential.
pub fn digest(presented: &str) -> Digest32 {
    Sha256::digest(presented.as_bytes()).into()
}

/// The map's key for a presented credential: its SHA-256 in lower-case hex.
pub fn key(presented: &str) -> String {
    hex::encode(digest(presented))
}

/// The digest a key spells, if it is 64 lower-case hex digits.
pub fn parse_key(text: &str) -> Option<Digest32> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut digest = [0; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        digest[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(digest)
}

/// One item as the document holds it, for [`write_encoded`].
pub fn encode_item(item: &Item<'_>) -> String {
    // Strings, bools and string lists cannot fail to serialize.
    serde_json::to_string(item).unwrap_or_default()
}

/// The document holding `items` (key, [`encode_item`] of its item), by key: compact JSON and a final
/// newline, exactly what serde_json makes of the map (a unit test pins it). A caller that keeps each
/// credential's encoded item pays only for the copy.
pub fn write_encoded<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let sorted: BTreeMap<&str, &str> = items.into_iter().collect();
    let bytes: usize = sorted.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut data = Vec::with_capacity(bytes + 32);
    data.extend_from_slice(b"{\"tokens\":{");
    for (i, (key, item)) in sorted.into_iter().enumerate() {
        if i > 0 {
            data.push(b',');
        }
        // A key is written as a JSON string (ours are hex digits; any other is escaped).
        let _ = serde_json::to_writer(&mut data, key);
        data.push(b':');
        data.extend_from_slice(item.as_bytes());
    }
    data.extend_from_slice(format!("}},\"version\":{VERSION}}}\n").as_bytes());
    data
}

/// Reads a document one item at a time: `each` gets every key and item as written, as it is
/// parsed, so a reader of a large map never holds all its items at once (`tokenmint authz` keeps only
/// what it needs of each). What each means (a key that is not hex, a `notAfter` that is no instant)
/// is for the caller to judge.
/// A key given twice is handed over twice, in document order. Items come before the version is
/// known (`tokens` sorts before `version`): on an error, discard what `each` built.
pub fn read_each(data: &[u8], each: impl FnMut(&str, Item<'static>)) -> Result<(), MapError> {
    read_document(serde_json::Deserializer::from_slice(data), each)
}

/// [`read_each`] from a reader (a file, buffered by the caller), so not even the document is held
/// whole: a large map read from a mounted file costs only what the caller keeps of each item.
pub fn read_each_from(
    reader: impl std::io::Read,
    each: impl FnMut(&str, Item<'static>),
) -> Result<(), MapError> {
    read_document(serde_json::Deserializer::from_reader(reader), each)
}

fn read_document<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    each: impl FnMut(&str, Item<'static>),
) -> Result<(), MapError> {
    let version = serde::de::DeserializeSeed::deserialize(Document { each }, &mut de)
        .and_then(|version| de.end().map(|()| version))
        .map_err(|e| MapError::NotJson {
            what: match e.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax => "invalid JSON",
                serde_json::error::Category::Data => "unexpected content",
                serde_json::error::Category::Eof => "truncated JSON",
            },
            line: e.line(),
            column: e.column(),
        })?;
    if version != u64::from(VERSION) {
        return Err(MapError::Version { found: version });
    }
    Ok(())
}

/// The document: `tokens` streamed into `each`, `version` returned, other fields ignored.
struct Document<F> {
    each: F,
}

impl<'de, F: FnMut(&str, Item<'static>)> serde::de::DeserializeSeed<'de> for Document<F> {
    type Value = u64;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<u64, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, F: FnMut(&str, Item<'static>)> serde::de::Visitor<'de> for Document<F> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sha256-map document")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<u64, A::Error> {
        let (mut version, mut tokens) = (None, false);
        while let Some(field) = map.next_key::<Cow<'de, str>>()? {
            match field.as_ref() {
                "tokens" if !tokens => {
                    map.next_value_seed(Tokens {
                        each: &mut self.each,
                    })?;
                    tokens = true;
                }
                "version" if version.is_none() => version = Some(map.next_value::<u64>()?),
                "tokens" | "version" => {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate field `{field}`"
                    )));
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if !tokens {
            return Err(serde::de::Error::missing_field("tokens"));
        }
        version.ok_or_else(|| serde::de::Error::missing_field("version"))
    }
}

/// The `tokens` object, each entry handed to `each`.
struct Tokens<'f, F> {
    each: &'f mut F,
}

impl<'de, F: FnMut(&str, Item<'static>)> serde::de::DeserializeSeed<'de> for Tokens<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, F: FnMut(&str, Item<'static>)> serde::de::Visitor<'de> for Tokens<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of items by key")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let item: Item<'static> = map.next_value()?;
            (self.each)(&key, item);
        }
        Ok(())
    }
}

/// Whether the document `data` (as [`write_encoded`] made it) has a key for the presented credential
/// `presented`, without parsing it: the compact form puts each key right before a `:`.
pub fn has_key(data: &[u8], presented: &str) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    text.contains(&format!("\"{}\":", key(presented)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item() -> impl Strategy<Value = Item<'static>> {
        (
            "[ -~]{1,24}",
            proptest::option::of("20[0-9]{2}-0[1-9]-1[0-9]T0[0-9]:00:00Z"),
            any::<bool>(),
            "[a-z0-9._-]{1,16}",
            proptest::collection::vec("[A-Z_:a-z0-9 ='\u{e9}]{1,40}", 0..4),
            "[a-z0-9-]{1,12}/[a-z0-9-]{1,12}",
        )
            .prop_map(
                |(access_key, not_after, previous, role, scopes, token)| Item {
                    access_key: access_key.into(),
                    not_after,
                    previous,
                    role: role.into(),
                    scopes: scopes.into(),
                    token: token.into(),
                },
            )
    }

    /// The document as serde_json makes it of the map: what [`write_encoded`] must equal byte for
    /// byte, so a build that writes it by hand rewrites no output written by one that did not.
    fn write(items: impl IntoIterator<Item = (String, Item<'static>)>) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Written {
            tokens: BTreeMap<String, Item<'static>>,
            version: u32,
        }
        let map = Written {
            tokens: items.into_iter().collect(),
            version: VERSION,
        };
        let mut data = serde_json::to_vec(&map).unwrap();
        data.push(b'\n');
        data
    }

    /// [`write_encoded`] of `items`, encoding each item on the way, in the order given.
    fn write_items<'a>(items: impl IntoIterator<Item = (&'a str, &'a Item<'static>)>) -> Vec<u8> {
        let encoded: Vec<(&str, String)> = items
            .into_iter()
            .map(|(k, v)| (k, encode_item(v)))
            .collect();
        write_encoded(encoded.iter().map(|(k, v)| (*k, v.as_str())))
    }

    proptest! {
        #[test]
        fn what_the_verifier_writes_authz_reads_back_exactly(
            items in proptest::collection::btree_map("[ -~]{1,32}", item(), 0..8)
        ) {
            let keys: Vec<String> = items.keys().map(|presented| key(presented)).collect();
            let data = write_items(keys.iter().map(String::as_str).zip(items.values()));
            prop_assert_eq!(data.last(), Some(&b'\n'));
            let mut read: BTreeMap<String, Item<'static>> = BTreeMap::new();
            read_each(&data, |key, item| { read.insert(key.to_owned(), item); }).unwrap();
            let written: BTreeMap<String, Item<'static>> = keys.into_iter().zip(items.values().cloned()).collect();
            prop_assert_eq!(&read, &written);
            for presented in items.keys() {
                prop_assert!(has_key(&data, presented));
                prop_assert_eq!(parse_key(&key(presented)), Some(digest(presented)));
            }
            // Equal inputs, equal bytes, in any order.
            let again = write_items(read.iter().rev().map(|(k, v)| (k.as_str(), v)));
            prop_assert_eq!(&again, &data);
            // Exactly serde_json's document, whatever the keys hold.
            let encoded = write_items(items.iter().rev().map(|(k, v)| (k.as_str(), v)));
            let plain = write(items.iter().map(|(k, v)| (k.clone(), v.clone())));
            prop_assert_eq!(encoded, plain);
        }
    }

    #[test]
    fn keys_are_lower_case_hex_of_the_presented_text() {
        let key = key("abc");
        assert_eq!(
            key,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_key(&key), Some(digest("abc")));
        assert_eq!(parse_key(&key.to_uppercase()), None);
        assert_eq!(parse_key("ABCDEF"), None);
    }
}
