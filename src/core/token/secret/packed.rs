//! A Secret's credential keys packed once, for the cache: each credential kept as its parts, its
//! forms rebuilt on demand.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use crate::core::credential::Credential;

/// A Secret's credential keys reduced to the credentials they are forms of, for the Secret cache:
/// a token Secret's six current keys and the three of each `previous-` and `next-` credential are
/// all derived from (prefix, access key, secret key), so the cache keeps those three strings per
/// credential and rebuilds the keys byte for byte when a reconcile reads the Secret. A group whose
/// keys are not exactly the forms of one credential (edited, revoked, incomplete) is left in the
/// data as it is, so the planner's checks see every byte anyone wrote. `Debug` shows no value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Packed(Box<[u8]>);

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} bytes)", self.0.len())
    }
}

/// Key prefixes of the credentials a Secret can hold: current, previous, staged next.
const CREDENTIAL_GROUPS: [&str; 3] = ["", "previous-", "next-"];

/// The keys and values of the credential under `prefix`, as tokenmint writes them.
pub(super) fn group_forms(prefix: &str, credential: &Credential) -> Vec<(String, String)> {
    let mut forms = vec![
        (format!("{prefix}username"), credential.access_key.clone()),
        (format!("{prefix}password"), credential.secret_key.clone()),
    ];
    if prefix.is_empty() {
        forms.extend(views(credential).map(|(k, v)| (k.to_owned(), v)));
    } else {
        forms.push((format!("{prefix}token"), credential.bearer()));
    }
    forms
}

impl Packed {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes out of `data` every credential group that is exactly the forms of one credential.
    pub fn take(data: &mut BTreeMap<String, ByteString>) -> Packed {
        let mut packed = Vec::new();
        for (tag, prefix) in CREDENTIAL_GROUPS.into_iter().enumerate() {
            let text = |key: &str| {
                let value = data.get(&format!("{prefix}{key}"))?;
                std::str::from_utf8(&value.0).ok()
            };
            let (Some(access_key), Some(secret_key), Some(bearer)) =
                (text("username"), text("password"), text("token"))
            else {
                continue;
            };
            let Some(token_prefix) = bearer.strip_suffix(&format!("{access_key}-{secret_key}"))
            else {
                continue;
            };
            let credential = Credential {
                prefix: token_prefix.to_owned(),
                access_key: access_key.to_owned(),
                secret_key: secret_key.to_owned(),
            };
            let forms = group_forms(prefix, &credential);
            if !forms
                .iter()
                .all(|(k, v)| data.get(k).is_some_and(|held| held.0 == v.as_bytes()))
            {
                continue;
            }
            for (key, _) in &forms {
                data.remove(key);
            }
            packed.push(tag as u8);
            for part in [
                &credential.prefix,
                &credential.access_key,
                &credential.secret_key,
            ] {
                packed.extend_from_slice(&(part.len() as u32).to_le_bytes());
                packed.extend_from_slice(part.as_bytes());
            }
        }
        Packed(packed.into_boxed_slice())
    }

    /// Puts the packed credential keys back into `data`.
    pub fn restore(&self, data: &mut BTreeMap<String, ByteString>) {
        let mut rest = &self.0[..];
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            let mut part = || {
                let (len, tail) = rest.split_first_chunk::<4>()?;
                let (text, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
                rest = tail;
                String::from_utf8(text.to_vec()).ok()
            };
            let (Some(prefix), Some(access_key), Some(secret_key)) = (part(), part(), part())
            else {
                return;
            };
            let Some(group) = CREDENTIAL_GROUPS.get(usize::from(tag)) else {
                return;
            };
            let credential = Credential {
                prefix,
                access_key,
                secret_key,
            };
            for (key, value) in group_forms(group, &credential) {
                data.insert(key, ByteString(value.into_bytes()));
            }
        }
    }
}

/// The derived forms of a credential, keyed by Secret key (username and password excluded).
pub(super) fn views(credential: &Credential) -> [(&'static str, String); 4] {
    let bearer = credential.bearer();
    let basic = credential.basic();
    [
        ("authorization-bearer", format!("Bearer {bearer}")),
        ("authorization-basic", format!("Basic {basic}")),
        ("token", bearer),
        ("basic", basic),
    ]
}
