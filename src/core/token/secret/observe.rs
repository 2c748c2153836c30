//! Reading a token's Secret back: its seal checked, what credentials it holds, or why it is
//! taken as tampered.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use crate::api::ApiToken;
use crate::core::credential::{Credential, fingerprint_of};
use crate::core::seal::{Field, SEAL_ANNOTATION, SEAL_KEY_ID_ANNOTATION, SealKey};

use super::*;

/// Classifies `secret` (the Secret named `token.secret_name()`, if any) relative to `token`, checking
/// its seal with `key`.
pub fn observe<'a>(token: &ApiToken, secret: Option<&'a Secret>, key: &SealKey) -> Observed<'a> {
    let Some(secret) = secret else {
        return Observed::Missing;
    };
    let uid = token.metadata.uid.as_deref();
    let controlled =
        secret.metadata.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true) && Some(o.uid.as_str()) == uid && o.kind == "ApiToken"
        });
    if !controlled {
        return Observed::Foreign;
    }
    let (held, seal) = match check_seal(secret, uid.unwrap_or_default(), key) {
        Ok(seal) => (read_held(secret), seal),
        Err(tampered) => (Err(tampered), Seal::Valid),
    };
    Observed::Owned { secret, held, seal }
}

/// Whether the Secret controlled by a token with `uid` carries a valid seal under `key`. A seal made
/// with the current key that does not match is tampering.
pub(super) fn check_seal(secret: &Secret, uid: &str, key: &SealKey) -> Result<Seal, Tampered> {
    let (Some(seal), Some(key_id)) = (
        annotation(secret, SEAL_ANNOTATION),
        annotation(secret, SEAL_KEY_ID_ANNOTATION),
    ) else {
        return Ok(Seal::Unverified);
    };
    if key_id != key.id() {
        return Ok(Seal::Unverified);
    }
    if key.verify(uid, sealed_fields(secret), seal) {
        Ok(Seal::Valid)
    } else {
        Err(Tampered(
            "its bookkeeping does not match the seal tokenmint wrote".to_owned(),
        ))
    }
}

/// The fields the seal covers, in a fixed order.
pub(super) fn sealed_fields(secret: &Secret) -> impl Iterator<Item = Field<'_>> {
    let data = CREDENTIAL_KEYS.into_iter().map(|name| Field {
        name,
        value: secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|v| v.0.as_slice()),
    });
    let annotations = SEALED_ANNOTATIONS.into_iter().map(|name| Field {
        name,
        value: annotation(secret, name).map(str::as_bytes),
    });
    // Fields added after the seal existed count only when present: older Secrets keep their seal,
    // and adding or removing such a field still breaks it.
    let next_data = NEXT_KEYS.into_iter().filter_map(|name| {
        let value = secret.data.as_ref()?.get(name)?;
        Some(Field {
            name,
            value: Some(value.0.as_slice()),
        })
    });
    let next_annotations = NEXT_ANNOTATIONS.into_iter().filter_map(|name| {
        Some(Field {
            name,
            value: Some(annotation(secret, name)?.as_bytes()),
        })
    });
    data.chain(annotations)
        .chain(next_data)
        .chain(next_annotations)
}

pub(super) fn data_str<'s>(secret: &'s Secret, key: &str) -> Result<&'s str, Tampered> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| Tampered(format!("key {key} is missing")))?;
    std::str::from_utf8(&value.0).map_err(|_| Tampered(format!("key {key} is not UTF-8")))
}

pub(super) fn annotation<'s>(secret: &'s Secret, key: &str) -> Option<&'s str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Reads the credential back and checks that every form agrees with every other and with the
/// fingerprint annotation. Any disagreement means someone else edited the Secret.
pub(super) fn read_held(secret: &Secret) -> Result<Held, Tampered> {
    let access_key = data_str(secret, "username")?;
    let secret_key = data_str(secret, "password")?;
    let bearer = data_str(secret, "token")?;
    let changed = |key: &str| Tampered(format!("key {key} no longer matches the credential"));
    let prefix = bearer
        .strip_suffix(&format!("{access_key}-{secret_key}"))
        .ok_or_else(|| changed("token"))?;
    let credential = Credential {
        prefix: prefix.to_owned(),
        access_key: access_key.to_owned(),
        secret_key: secret_key.to_owned(),
    };
    for (key, expected) in views(&credential) {
        if data_str(secret, key)? != expected {
            return Err(changed(key));
        }
    }
    if annotation(secret, FINGERPRINT_ANNOTATION) != Some(fingerprint_of(bearer).as_str()) {
        return Err(Tampered(
            "the credential no longer matches its fingerprint".to_owned(),
        ));
    }
    let issued_at = annotation(secret, ISSUED_AT_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| {
            Tampered(format!(
                "annotation {ISSUED_AT_ANNOTATION} is missing or invalid"
            ))
        })?;
    let rotations = annotation(secret, ROTATIONS_ANNOTATION)
        .map(str::parse::<u64>)
        .transpose()
        .map_err(|_| Tampered(format!("annotation {ROTATIONS_ANNOTATION} is invalid")))?
        .unwrap_or(0);
    Ok(Held {
        credential,
        issued_at,
        rotations,
        rotate_request: annotation(secret, ROTATE_REQUEST_ANNOTATION).map(str::to_owned),
        retire_request: annotation(secret, RETIRE_REQUEST_ANNOTATION).map(str::to_owned),
        previous: read_previous(secret)?,
        next: read_next(secret)?,
    })
}

/// A credential's three keys under `prefix` (`previous-` or `next-`), checked against the
/// fingerprint annotation `fingerprint_key`; `None` when none of the keys is there.
pub(super) fn read_extra(
    secret: &Secret,
    prefix: &str,
    fingerprint_key: &str,
) -> Result<Option<Credential>, Tampered> {
    let keys = ["username", "password", "token"].map(|k| format!("{prefix}{k}"));
    let has = |k: &str| secret.data.as_ref().is_some_and(|d| d.contains_key(k));
    let present = keys.iter().filter(|k| has(k)).count();
    if present == 0 && annotation(secret, fingerprint_key).is_none() {
        return Ok(None);
    }
    let what = prefix.trim_end_matches('-');
    if present != keys.len() {
        return Err(Tampered(format!("the {what} credential is incomplete")));
    }
    let access_key = data_str(secret, &keys[0])?;
    let secret_key = data_str(secret, &keys[1])?;
    let bearer = data_str(secret, &keys[2])?;
    let prefix_of_token = bearer
        .strip_suffix(&format!("{access_key}-{secret_key}"))
        .ok_or_else(|| Tampered(format!("key {} no longer matches", keys[2])))?;
    if annotation(secret, fingerprint_key) != Some(fingerprint_of(bearer).as_str()) {
        return Err(Tampered(format!(
            "the {what} credential no longer matches its fingerprint"
        )));
    }
    Ok(Some(Credential {
        prefix: prefix_of_token.to_owned(),
        access_key: access_key.to_owned(),
        secret_key: secret_key.to_owned(),
    }))
}

/// The staged next credential, if the Secret holds one.
pub(super) fn read_next(secret: &Secret) -> Result<Option<Next>, Tampered> {
    let Some(credential) = read_extra(secret, "next-", NEXT_FINGERPRINT_ANNOTATION)? else {
        return Ok(None);
    };
    let promote_at = annotation(secret, NEXT_PROMOTE_AT_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| Tampered("the next credential is incomplete".to_owned()))?;
    Ok(Some(Next {
        credential,
        promote_at,
    }))
}

/// The previous credential of an overlap, if the Secret holds one. Its keys and annotations come
/// together or not at all.
pub(super) fn read_previous(secret: &Secret) -> Result<Option<Previous>, Tampered> {
    let retires = annotation(secret, PREVIOUS_RETIRES_AT_ANNOTATION);
    let Some(credential) = read_extra(secret, "previous-", PREVIOUS_FINGERPRINT_ANNOTATION)? else {
        return match retires {
            None => Ok(None),
            Some(_) => Err(Tampered("the previous credential is incomplete".to_owned())),
        };
    };
    let retires_at = retires
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| Tampered("the previous credential is incomplete".to_owned()))?;
    Ok(Some(Previous {
        credential,
        retires_at,
    }))
}
