//! The seal: an HMAC-SHA-256 over a Secret's bookkeeping, so only what tokenmint wrote is believed.
//!
//! Anyone who may edit a token's Secret could otherwise plant a credential of their choice (every form
//! consistent, fingerprint recomputed, a rotation count one higher) or move `issued-at` into the future to
//! postpone rotation. The seal binds the credential keys, `issued-at`, the rotation count, the handled
//! requests and the `previous-*` keys to the token's UID under a key only the operator holds. Pure: the
//! key comes in, nothing here talks to the API server (see [`crate::controller::token`] for loading the key).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Annotation on a token's Secret: the hex HMAC-SHA-256 of its bookkeeping.
pub const SEAL_ANNOTATION: &str = "tokenmint.dev/seal";
/// Annotation on a token's Secret: the id of the key that made the seal.
pub const SEAL_KEY_ID_ANNOTATION: &str = "tokenmint.dev/seal-key-id";
/// Default name of the Secret, in the operator's namespace, that holds the key.
pub const DEFAULT_KEY_SECRET: &str = "tokenmint-seal-key";
/// Data key of the key Secret.
pub const KEY_DATA_KEY: &str = "key";
/// Bytes of a key the operator generates.
pub const KEY_LENGTH: usize = 32;
/// The shortest key accepted from an existing Secret (a key shorter than the hash is weaker than it).
pub const MIN_KEY_LENGTH: usize = 32;

/// A seal key. `Debug` shows the id, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey {
    id: String,
    key: Vec<u8>,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A key Secret that cannot be used. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seal key: data key {KEY_DATA_KEY} must hold at least {MIN_KEY_LENGTH} bytes, found {0}")]
pub struct BadKey(pub usize);

impl SealKey {
    /// A key from the bytes stored in the key Secret. Its id is derived from the bytes, so the id
    /// cannot be edited apart from the key.
    pub fn from_bytes(key: &[u8]) -> Result<SealKey, BadKey> {
        if key.len() < MIN_KEY_LENGTH {
            return Err(BadKey(key.len()));
        }
        let digest = Sha256::new()
            .chain_update(b"tokenmint seal key id\0")
            .chain_update(key)
            .finalize();
        let id = hex::encode(&digest[..8]);
        Ok(SealKey {
            id,
            key: key.to_vec(),
        })
    }

    /// A fresh key from `rng` (the OS CSPRNG in production).
    pub fn generate(rng: &mut impl rand::RngCore) -> SealKey {
        let mut key = vec![0u8; KEY_LENGTH];
        rng.fill_bytes(&mut key);
        // A 32-byte key always passes the length check.
        SealKey::from_bytes(&key)
            .unwrap_or_else(|_| unreachable!("generated key has KEY_LENGTH bytes"))
    }

    /// The key's bytes, for storing in the key Secret.
    pub fn bytes(&self) -> &[u8] {
        &self.key
    }

    /// The id written to `tokenmint.dev/seal-key-id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The seal of `fields` for the token with `uid`: lowercase hex HMAC-SHA-256.
    ///
    /// Each field is its name, then either a marker for "absent" or its length and bytes, so no two
    /// different sets of fields encode the same way (a value cannot run into the next field).
    pub fn seal<'a>(&self, uid: &str, fields: impl IntoIterator<Item = Field<'a>>) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(b"tokenmint seal v1\0");
        put(&mut mac, Some(uid.as_bytes()));
        for field in fields {
            put(&mut mac, Some(field.name.as_bytes()));
            put(&mut mac, field.value);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `seal` is the seal of `fields` for `uid`, compared in constant time.
    pub fn verify<'a>(
        &self,
        uid: &str,
        fields: impl IntoIterator<Item = Field<'a>>,
        seal: &str,
    ) -> bool {
        let expected = self.seal(uid, fields);
        expected.len() == seal.len()
            && expected
                .bytes()
                .zip(seal.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn put(mac: &mut Hmac<Sha256>, value: Option<&[u8]>) {
    match value {
        None => mac.update(&[0]),
        Some(bytes) => {
            mac.update(&[1]);
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        }
    }
}

/// One sealed field: a Secret data key or annotation, present or absent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a str,
    pub value: Option<&'a [u8]>,
}

impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Field values are credential material.
        f.debug_struct("Field")
            .field("name", &self.name)
            .field("present", &self.value.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealKey {
        SealKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn field<'a>(name: &'a str, value: &'a str) -> Field<'a> {
        Field {
            name,
            value: Some(value.as_bytes()),
        }
    }

    #[test]
    fn a_seal_verifies_only_with_the_same_key_uid_and_fields() {
        let k = key(1);
        let fields = [field("password", "secret"), field("rotations", "3")];
        let seal = k.seal("uid-1", fields);
        assert_eq!(seal.len(), 64);
        assert!(k.verify("uid-1", fields, &seal));
        assert!(!key(2).verify("uid-1", fields, &seal));
        assert!(!k.verify("uid-2", fields, &seal));
        assert!(!k.verify(
            "uid-1",
            [field("password", "secret"), field("rotations", "4")],
            &seal
        ));
        assert!(!k.verify("uid-1", fields, &seal[..63]));
    }

    #[test]
    fn absent_and_empty_fields_and_shifted_boundaries_seal_differently() {
        let k = key(1);
        let absent = Field {
            name: "previous-password",
            value: None,
        };
        let empty = field("previous-password", "");
        assert_ne!(k.seal("u", [absent]), k.seal("u", [empty]));
        assert_ne!(
            k.seal("u", [field("a", "bc"), field("d", "")]),
            k.seal("u", [field("a", "b"), field("cd", "")])
        );
    }

    #[test]
    fn the_key_id_follows_the_key_and_debug_hides_the_key() {
        assert_eq!(key(1).id(), key(1).id());
        assert_ne!(key(1).id(), key(2).id());
        assert_eq!(key(1).id().len(), 16);
        let shown = format!("{:?}", key(7));
        assert!(shown.contains(key(7).id()) && !shown.contains("7, 7"));
        assert_eq!(SealKey::from_bytes(&[0; 31]), Err(BadKey(31)));
    }

    #[test]
    fn generated_keys_differ() {
        let mut rng = crate::core::credential::os_rng();
        assert_ne!(SealKey::generate(&mut rng), SealKey::generate(&mut rng));
    }
}
