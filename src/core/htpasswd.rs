//! htpasswd lines (`accessKey:hash`) for servers that check Basic credentials against a file: nginx
//! `auth_basic_user_file`, ingress-nginx `auth`, Traefik BasicAuth, Caddy `basic_auth`, Trino's password
//! file. Pure: the salt comes in as a seed, nothing here reads a clock, a file or the OS's randomness.
//!
//! The hash only has to be one-way. A secret key is 20..128 characters drawn uniformly from
//! `[A-Za-z0-9]` (at least 119 bits), so guessing it is hopeless even at billions of fast hashes per
//! second; a slow hash buys nothing and every server pays it again on every request (nginx caches
//! nothing). Work factors are therefore the lowest each format's readers accept; see
//! `docs/htpasswd.md` for the measurements behind them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha_crypt::{CustomizedPasswordHasher as _, PasswordVerifier as _, ShaCrypt};
use sha1::Digest as _;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

pub use crate::api::verifier::HtpasswdHash as Hash;

/// bcrypt cost: 8 is the lowest Trino accepts (its file authenticator rejects the whole file for a
/// lower one); every other reader accepts 4 and up.
pub const BCRYPT_COST: u32 = 8;
/// sha256-crypt rounds: the minimum of the format (glibc's default is 5000).
pub const SHA256_CRYPT_ROUNDS: u32 = 1000;
/// sha256-crypt salt: 12 bytes encode to 16 characters, the most glibc reads (it drops the rest).
const SHA256_CRYPT_SALT_BYTES: usize = 12;
/// SSHA salt bytes: twice OpenLDAP's `slappasswd`; nginx takes whatever follows the SHA-1 digest.
const SSHA_SALT_BYTES: usize = 8;
/// Length of a SHA-1 digest, the part of an SSHA value before its salt.
const SHA1_LEN: usize = 20;

/// Whether `access_key` can stand as the user of an htpasswd line: not empty, and no `:` (which ends
/// the user) nor control character (a newline would start a line of its own). Minted access keys are
/// alphanumeric and always pass; check anything else before handing it to [`line`].
pub fn valid_access_key(access_key: &str) -> bool {
    !access_key.is_empty() && !access_key.contains(|c: char| c == ':' || c.is_control())
}

/// One htpasswd line, `accessKey:hash`, without a line break.
///
/// The salt is derived from `salt_seed`, so the same inputs give the same bytes and an unchanged
/// credential never rewrites its output. Pass a keyed digest of the credential (an HMAC under a key
/// only the operator holds), never an unkeyed function of the secret key: the salt is public, and a
/// salt that is a fast hash of the secret would publish that fast hash. `access_key` must pass
/// [`valid_access_key`].
pub fn line(access_key: &str, secret_key: &str, hash: Hash, salt_seed: &[u8]) -> String {
    let salt = derive_salt(hash, salt_seed);
    format!("{access_key}:{}", hash_with_salt(hash, secret_key, &salt))
}

/// Whether `line` (`user:hash`, a trailing line break allowed) lets `access_key` in with `secret_key`.
/// Reads bcrypt (`$2a$`, `$2b$`, `$2y$`), sha256-crypt (`$5$`, with or without `rounds=`) and `{SSHA}`;
/// anything else, or a malformed hash, is `false`.
pub fn verify(line: &str, access_key: &str, secret_key: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    let Some((user, hash)) = line.split_once(':') else {
        return false;
    };
    if user != access_key {
        return false;
    }
    if hash.starts_with("$2") {
        bcrypt::verify(secret_key, hash).unwrap_or(false)
    } else if hash.starts_with("$5$") {
        ShaCrypt::SHA256
            .verify_password(secret_key.as_bytes(), hash)
            .is_ok()
    } else if let Some(encoded) = hash.strip_prefix("{SSHA}") {
        verify_ssha(encoded, secret_key)
    } else {
        false
    }
}

/// 16 salt bytes for `hash` from the caller's seed; each format takes what it needs from the front.
/// The format's name is mixed in so the formats of one credential do not share a salt.
fn derive_salt(hash: Hash, seed: &[u8]) -> [u8; 16] {
    let digest = sha2::Sha256::new()
        .chain_update(b"tokenmint htpasswd salt v1\0")
        .chain_update(hash.name().as_bytes())
        .chain_update([0])
        .chain_update(seed)
        .finalize();
    let mut salt = [0; 16];
    salt.copy_from_slice(&digest[..16]);
    salt
}

/// The hash part of a line for `secret_key` under `salt`.
fn hash_with_salt(hash: Hash, secret_key: &str, salt: &[u8; 16]) -> String {
    match hash {
        // bcrypt only fails for a cost outside 4..=31.
        Hash::Bcrypt => bcrypt::hash_with_salt(secret_key, BCRYPT_COST, *salt)
            .unwrap_or_else(|_| unreachable!("BCRYPT_COST is a valid bcrypt cost"))
            .format_for_version(bcrypt::Version::TwoY),
        Hash::Sha256Crypt => {
            let params = sha_crypt::Params::new(SHA256_CRYPT_ROUNDS)
                .unwrap_or_else(|_| unreachable!("SHA256_CRYPT_ROUNDS is within 1000..=999999999"));
            // The crate encodes the salt bytes in crypt's alphabet (16 characters) and always writes
            // `rounds=`, so the line says its rounds whatever the default of the reader.
            ShaCrypt::SHA256
                .hash_password_customized(
                    secret_key.as_bytes(),
                    &salt[..SHA256_CRYPT_SALT_BYTES],
                    None,
                    None,
                    params,
                )
                .unwrap_or_else(|_| unreachable!("a 12-byte salt always encodes"))
                .to_string()
        }
        Hash::Ssha => {
            let salt = &salt[..SSHA_SALT_BYTES];
            let mut value = ssha_digest(secret_key, salt).to_vec();
            value.extend_from_slice(salt);
            format!("{{SSHA}}{}", BASE64.encode(value))
        }
    }
}

fn ssha_digest(secret_key: &str, salt: &[u8]) -> [u8; SHA1_LEN] {
    sha1::Sha1::new()
        .chain_update(secret_key.as_bytes())
        .chain_update(salt)
        .finalize()
        .into()
}

fn verify_ssha(encoded: &str, secret_key: &str) -> bool {
    let Ok(value) = BASE64.decode(encoded) else {
        return false;
    };
    // nginx, like OpenLDAP, requires a salt after the digest.
    if value.len() <= SHA1_LEN {
        return false;
    }
    let (digest, salt) = value.split_at(SHA1_LEN);
    ssha_digest(secret_key, salt).ct_eq(digest).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Hash; 3] = [Hash::Bcrypt, Hash::Sha256Crypt, Hash::Ssha];
    const SECRET: &str = "s3cretKeyOfTwentyFour0123";

    #[test]
    fn the_same_seed_gives_the_same_line_and_another_seed_another_salt() {
        for hash in ALL {
            let first = line("AK1", SECRET, hash, b"seed-1");
            assert_eq!(first, line("AK1", SECRET, hash, b"seed-1"), "{hash:?}");
            let other = line("AK1", SECRET, hash, b"seed-2");
            assert_ne!(first, other, "{hash:?}");
            assert!(verify(&other, "AK1", SECRET), "{hash:?}");
        }
    }

    #[test]
    fn each_format_lets_in_its_own_secret_and_refuses_another_or_another_user() {
        for hash in ALL {
            let l = line("AK1", SECRET, hash, b"seed");
            assert!(l.starts_with("AK1:"), "{l}");
            assert!(verify(&l, "AK1", SECRET), "{hash:?}");
            assert!(verify(&format!("{l}\n"), "AK1", SECRET), "{hash:?}");
            assert!(!verify(&l, "AK1", "s3cretKeyOfTwentyFour0124"), "{hash:?}");
            assert!(!verify(&l, "AK1", ""), "{hash:?}");
            assert!(!verify(&l, "AK2", SECRET), "{hash:?}");
            assert!(!verify(&l, "AK", SECRET), "{hash:?}");
        }
    }

    #[test]
    fn lines_have_the_standard_shapes() {
        let bcrypt = line("AK1", SECRET, Hash::Bcrypt, b"seed");
        assert!(bcrypt.starts_with("AK1:$2y$08$"), "{bcrypt}");
        assert_eq!(bcrypt.len(), "AK1:".len() + 60);

        let sha = line("AK1", SECRET, Hash::Sha256Crypt, b"seed");
        let fields: Vec<&str> = sha.trim_start_matches("AK1:").split('$').collect();
        assert_eq!(fields[..3], ["", "5", "rounds=1000"], "{sha}");
        assert_eq!(fields[3].len(), 16, "glibc reads 16 salt characters: {sha}");
        assert_eq!(fields[4].len(), 43, "{sha}");
        let crypt_alphabet = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "./".contains(c))
        };
        assert!(
            crypt_alphabet(fields[3]) && crypt_alphabet(fields[4]),
            "{sha}"
        );

        let ssha = line("AK1", SECRET, Hash::Ssha, b"seed");
        let raw = BASE64
            .decode(ssha.trim_start_matches("AK1:{SSHA}"))
            .unwrap();
        assert_eq!(raw.len(), SHA1_LEN + SSHA_SALT_BYTES, "{ssha}");
    }

    // Known answers from independent implementations, for KAT_SECRET and the salt b"tokenmint-salt16"
    // (each format takes the first 16, 12 or 8 bytes):
    // - bcrypt: python 3.11 `crypt.crypt` on Debian 12 (libxcrypt), setting `$2y$08$` + the salt in
    //   bcrypt's base64.
    // - sha256-crypt: the same `crypt.crypt` with `$5$rounds=1000$oxqOZtKPdt4RhALM$`, and passlib 1.7.4
    //   `sha256_crypt.using(rounds=1000, salt=...)` agrees; the salt characters are passlib's
    //   `h64.encode_bytes(salt[:12])`.
    // - ssha: passlib 1.7.4 `ldap_salted_sha1.using(salt=salt[:8])`.
    const KAT_SECRET: &str = "Zq4VnR8mXw2LkT6pHs0JcY3bFd7GeA1u";
    const KAT_SALT: &[u8; 16] = b"tokenmint-salt16";

    #[test]
    fn hashes_match_independent_implementations_for_the_same_salt() {
        assert_eq!(
            hash_with_salt(Hash::Bcrypt, KAT_SECRET, KAT_SALT),
            "$2y$08$bE7pXU3rYU3yJVLfZFOvLeO82cm9KM.BpVAx58ELuFamfL5NSZ32a"
        );
        assert_eq!(
            hash_with_salt(Hash::Sha256Crypt, KAT_SECRET, KAT_SALT),
            "$5$rounds=1000$oxqOZtKPdt4RhALM$y1EaDqSNAelHpB6sF/fi7MpN7E/7ijgEblvbgRLUVr."
        );
        assert_eq!(
            hash_with_salt(Hash::Ssha, KAT_SECRET, KAT_SALT),
            "{SSHA}pMNRVMYY2YhGn33IdkLaqoz1erJ0b2tlbm1pbg=="
        );
    }

    #[test]
    fn verify_reads_lines_written_by_other_tools() {
        for line in [
            // `htpasswd -nbB -C 8` and `htpasswd -nbB` (cost 5), apache2-utils 2.4.71: random salts.
            "AK1:$2y$08$kunJh1Kfv/Ikl3yShch6tuoz1UzpfxjETkCC2BdMOTd2Fh9uxBYpq",
            "AK1:$2y$05$t57tuOQik5.A625wnmoRCuSqjkDaLoat0NbfwpVLfTkj52iQ9xV4C",
            // `openssl passwd -5 -salt oxqOZtKPdt4RhALM` (OpenSSL 3.0): default 5000 rounds, no `rounds=`.
            "AK1:$5$oxqOZtKPdt4RhALM$pRcgII6i7z.Juw3xmbsb5OtiYZD/aJoThjl90usReB9",
            // passlib `ldap_salted_sha1` with a 4-byte salt, as `slappasswd` writes.
            "AK1:{SSHA}95lnxYsbK7bkAuHgT+M7HbqWANYBAgME",
        ] {
            assert!(verify(line, "AK1", KAT_SECRET), "{line}");
            assert!(!verify(line, "AK1", SECRET), "{line}");
        }
    }

    #[test]
    fn the_formats_of_one_credential_do_not_share_a_salt() {
        let salts: Vec<[u8; 16]> = ALL.iter().map(|&h| derive_salt(h, b"seed")).collect();
        assert_ne!(salts[0], salts[1]);
        assert_ne!(salts[1], salts[2]);
        assert_ne!(salts[0], salts[2]);
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            "",
            "AK1",
            "AK1:",
            "AK1:plain",
            "AK1:{SSHA}",
            "AK1:{SSHA}not base64!",
            // A bare SHA-1 without salt: nginx refuses it too.
            "AK1:{SSHA}AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "AK1:$2y$08$short",
            "AK1:$5$rounds=1000$salt",
            "AK1:$6$salt$hash",
            "AK1:$1$salt$hash",
        ] {
            assert!(!verify(bad, "AK1", SECRET), "{bad:?}");
        }
    }

    #[test]
    fn access_keys_that_would_break_a_line_are_invalid() {
        assert!(valid_access_key("AbC123"));
        for bad in ["", "a:b", "a\nb", "a\rb", "a\0b"] {
            assert!(!valid_access_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_default_is_the_hash_every_reader_accepts() {
        assert_eq!(Hash::default(), Hash::Bcrypt);
    }

    #[test]
    fn serde_names_match_the_api() {
        for hash in ALL {
            let json = serde_json::to_string(&hash).unwrap();
            assert_eq!(json, format!("\"{}\"", hash.name()));
            assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), hash);
        }
    }
}
