//! Minting credentials and their three forms (username/password, Bearer, Basic). Pure: randomness comes in.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::distr::{Alphanumeric, Distribution};
use sha2::{Digest, Sha256};

/// Bearer prefix when `spec.format.prefix` is unset.
pub const DEFAULT_PREFIX: &str = "tm-";
/// Access key length when unset.
pub const DEFAULT_ACCESS_KEY_LENGTH: usize = 16;
/// Secret key length when unset.
pub const DEFAULT_SECRET_KEY_LENGTH: usize = 32;

/// The shape of credentials to mint, with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub prefix: String,
    pub access_key_length: usize,
    pub secret_key_length: usize,
}

impl Default for Format {
    fn default() -> Self {
        Format {
            prefix: DEFAULT_PREFIX.to_owned(),
            access_key_length: DEFAULT_ACCESS_KEY_LENGTH,
            secret_key_length: DEFAULT_SECRET_KEY_LENGTH,
        }
    }
}

impl From<Option<&crate::api::TokenFormat>> for Format {
    fn from(spec: Option<&crate::api::TokenFormat>) -> Self {
        let default = Format::default();
        let Some(spec) = spec else { return default };
        Format {
            prefix: spec.prefix.clone().unwrap_or(default.prefix),
            access_key_length: spec
                .access_key_length
                .map_or(default.access_key_length, usize::from),
            secret_key_length: spec
                .secret_key_length
                .map_or(default.secret_key_length, usize::from),
        }
    }
}

/// One credential: an access key (public) and a secret key, plus the Bearer prefix it was minted with.
///
/// `Debug` never shows the secret key, so a stray `{:?}` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("prefix", &self.prefix)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Mints a credential of `format` from `rng`. In production `rng` is the OS CSPRNG ([`os_rng`]).
///
/// Characters are drawn uniformly from `[A-Za-z0-9]`: `Alphanumeric` rejects out-of-range
/// samples instead of reducing them modulo 62, so there is no bias.
pub fn mint_credential(format: &Format, rng: &mut impl rand::RngCore) -> Credential {
    let mut draw = |len: usize| -> String {
        Alphanumeric
            .sample_iter(&mut *rng)
            .take(len)
            .map(char::from)
            .collect()
    };
    let access_key = draw(format.access_key_length);
    let secret_key = draw(format.secret_key_length);
    Credential {
        prefix: format.prefix.clone(),
        access_key,
        secret_key,
    }
}

/// The operating system's CSPRNG; panics only if the OS cannot provide randomness at all.
pub fn os_rng() -> impl rand::RngCore {
    use rand::TryRngCore as _;
    rand::rngs::OsRng.unwrap_err()
}

impl Credential {
    /// `<prefix><accessKey>-<secretKey>`, StarTree's Bearer layout.
    pub fn bearer(&self) -> String {
        format!("{}{}-{}", self.prefix, self.access_key, self.secret_key)
    }

    /// `base64("<accessKey>:<secretKey>")`, standard alphabet with padding.
    pub fn basic(&self) -> String {
        BASE64.encode(format!("{}:{}", self.access_key, self.secret_key))
    }

    /// `sha256:` + the first 16 hex characters of SHA-256 of the Bearer token.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.bearer())
    }
}

/// Fingerprint of a Bearer token as shown in status and on the Secret.
pub fn fingerprint_of(bearer: &str) -> String {
    let digest = Sha256::digest(bearer.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..8]))
}

/// Username and password recovered from a token string.
#[derive(Clone, PartialEq, Eq)]
pub struct Decoded {
    pub username: String,
    pub password: String,
    /// Which form the input was in.
    pub form: DecodedForm,
}

impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("form", &self.form)
            .finish()
    }
}

/// The form a decoded token was given in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedForm {
    Basic,
    Bearer,
}

/// Why a string could not be decoded. Never carries the input, which may be a credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "not a token: expected a Basic token (base64 of \"username:password\", optionally after \"Basic \") \
         or a Bearer token shaped <prefix><accessKey>-<secretKey>"
    )]
    Unrecognised,
}

/// Turns a Basic token (with or without `Basic `) or a Bearer token (with or without `Bearer `)
/// into username and password, as the StarTree documents describe for Superset and Trino.
pub fn decode(input: &str) -> Result<Decoded, DecodeError> {
    let input = input.trim();
    if let Some(rest) = strip_scheme(input, "Basic") {
        return decode_basic(rest).ok_or(DecodeError::Unrecognised);
    }
    if let Some(rest) = strip_scheme(input, "Bearer") {
        return decode_bearer(rest).ok_or(DecodeError::Unrecognised);
    }
    decode_basic(input)
        .or_else(|| decode_bearer(input))
        .ok_or(DecodeError::Unrecognised)
}

fn strip_scheme<'a>(input: &'a str, scheme: &str) -> Option<&'a str> {
    let head = input.get(..scheme.len())?;
    let rest = input[scheme.len()..].strip_prefix(' ')?;
    head.eq_ignore_ascii_case(scheme).then(|| rest.trim_start())
}

fn decode_basic(input: &str) -> Option<Decoded> {
    let bytes = BASE64.decode(input).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    (!username.is_empty() && !password.is_empty()).then(|| Decoded {
        username: username.to_owned(),
        password: password.to_owned(),
        form: DecodedForm::Basic,
    })
}

/// The secret key is the alphanumeric run after the last `-`; the access key is the alphanumeric
/// run before it; whatever comes first is the prefix (which may itself contain `-`).
fn decode_bearer(input: &str) -> Option<Decoded> {
    let (head, secret) = input.rsplit_once('-')?;
    let alnum = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !alnum(secret) {
        return None;
    }
    let access_start = head
        .rfind(|c: char| !c.is_ascii_alphanumeric())
        .map_or(0, |i| i + 1);
    let (prefix, access) = head.split_at(access_start);
    let prefix_ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (alnum(access) && prefix_ok && prefix.len() <= 16).then(|| Decoded {
        username: access.to_owned(),
        password: secret.to_owned(),
        form: DecodedForm::Bearer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn seeded() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn minted_credential_has_requested_shape_and_alphabet() {
        let format = Format {
            prefix: "st-".into(),
            access_key_length: 16,
            secret_key_length: 32,
        };
        let cred = mint_credential(&format, &mut seeded());
        assert_eq!(cred.access_key.len(), 16);
        assert_eq!(cred.secret_key.len(), 32);
        assert!(cred.access_key.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(cred.secret_key.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(
            cred.bearer(),
            format!("st-{}-{}", cred.access_key, cred.secret_key)
        );
    }

    #[test]
    fn minting_twice_gives_different_credentials() {
        let mut rng = seeded();
        let format = Format::default();
        assert_ne!(
            mint_credential(&format, &mut rng),
            mint_credential(&format, &mut rng)
        );
    }

    #[test]
    fn alphabet_is_uniform() {
        // 62 symbols, 620k draws: each count should sit near 10k. A modulo-biased draw from a byte
        // (256 % 62 = 8) would give the first 8 symbols about 5/4 of the others' share.
        let format = Format {
            prefix: String::new(),
            access_key_length: 64,
            secret_key_length: 128,
        };
        let mut rng = seeded();
        let mut counts = std::collections::HashMap::<u8, u32>::new();
        let mut total = 0u32;
        while total < 620_000 {
            let cred = mint_credential(&format, &mut rng);
            for b in cred.access_key.bytes().chain(cred.secret_key.bytes()) {
                *counts.entry(b).or_default() += 1;
                total += 1;
            }
        }
        assert_eq!(counts.len(), 62);
        let expected = f64::from(total) / 62.0;
        let chi2: f64 = counts
            .values()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // 61 degrees of freedom: p = 0.001 critical value is about 100.9.
        assert!(
            chi2 < 100.9,
            "chi-square {chi2} says the alphabet is not uniform"
        );
    }

    #[test]
    fn os_rng_mints_full_length_credentials() {
        let cred = mint_credential(&Format::default(), &mut os_rng());
        assert_eq!(cred.access_key.len(), DEFAULT_ACCESS_KEY_LENGTH);
        assert_eq!(cred.secret_key.len(), DEFAULT_SECRET_KEY_LENGTH);
    }

    #[test]
    fn basic_is_base64_of_username_colon_password() {
        let cred = Credential {
            prefix: "st-".into(),
            access_key: "XkQBXKr652MV1VF9".into(),
            secret_key: "5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg".into(),
        };
        let decoded = decode(&cred.basic()).unwrap();
        assert_eq!(decoded.username, cred.access_key);
        assert_eq!(decoded.password, cred.secret_key);
        assert_eq!(decoded.form, DecodedForm::Basic);
    }

    #[test]
    fn fingerprint_is_prefixed_sixteen_hex_chars_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(fingerprint_of("abc"), "sha256:ba7816bf8f01cfea");
    }

    #[test]
    fn decodes_the_startree_bearer_example() {
        let decoded = decode("st-XkQBXKr652MV1VF9-5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg").unwrap();
        assert_eq!(decoded.username, "XkQBXKr652MV1VF9");
        assert_eq!(decoded.password, "5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg");
        assert_eq!(decoded.form, DecodedForm::Bearer);
        let with_scheme =
            decode("Bearer st-XkQBXKr652MV1VF9-5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg").unwrap();
        assert_eq!(with_scheme, decoded);
    }

    #[test]
    fn decodes_the_startree_basic_example() {
        let token = "NGNlZmI4NDgwZjhmNGE3ODg2YTVjOWRhMTA1NmE3YjU6eVlHVVlsV1BVaU5OTjQ2bkZaY09vM2FUT3FJQ1AyYUFrMXF4VDVCOEFKUT0=";
        for input in [token.to_owned(), format!("Basic {token}")] {
            let decoded = decode(&input).unwrap();
            assert_eq!(decoded.username, "4cefb8480f8f4a7886a5c9da1056a7b5");
            assert_eq!(
                decoded.password,
                "yYGUYlWPUiNNN46nFZcOo3aTOqICP2aAk1qxT5B8AJQ="
            );
        }
    }

    #[test]
    fn rejects_strings_that_are_neither_form() {
        for input in ["", "hello", "Basic !!!", "a b-c", "st--x", "Bearer nodash"] {
            assert_eq!(decode(input), Err(DecodeError::Unrecognised), "{input:?}");
        }
    }
}
