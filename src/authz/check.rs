//! One check: the `Authorization` header and the requested scope against the loaded map, at `now`.
//! Pure; the server turns a [`Decision`] into a response.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;

use super::map::{self, Credentials, Grant, GrantedScope};
use crate::core::scope::{self, Scope};

/// Longest `Authorization` value read; a longer one is refused before it is hashed. Credentials are
/// at most a few hundred bytes (a 16-character prefix, keys of up to 64 and 128 characters).
pub const MAX_AUTHORIZATION: usize = 4096;

/// The outcome of one check.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'m> {
    /// Let in; `scope` is the token's scope that covers the requested one, if a scope was asked for.
    Allowed {
        grant: &'m Grant,
        scope: Option<&'m GrantedScope>,
    },
    /// 401: no usable credential.
    Unauthorized(Unauthorized),
    /// 403: a valid credential without the requested scope.
    Forbidden(Forbidden),
}

/// Why a request has no usable credential. The variants are metric label values; none carries input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>` or `Basic <base64 of user:password>`: no or another scheme, bad base64,
    /// no colon, control characters, too long, or more than one header.
    Malformed,
    /// Well-formed, but in no valid entry of the map.
    Unknown,
    /// In the map, but its `notAfter` has come (retired, expired): refused before the map says so.
    Expired,
}

/// Why a valid credential is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// The token has no scope covering the requested one.
    Scope,
    /// The `scope` parameter is not one `TYPE[:resource]`: nothing can cover it.
    BadScope,
}

impl Unauthorized {
    pub fn as_str(self) -> &'static str {
        match self {
            Unauthorized::Missing => "missing",
            Unauthorized::Malformed => "malformed",
            Unauthorized::Unknown => "unknown",
            Unauthorized::Expired => "expired",
        }
    }
}

impl Forbidden {
    pub fn as_str(self) -> &'static str {
        match self {
            Forbidden::Scope => "scope",
            Forbidden::BadScope => "bad_scope",
        }
    }
}

/// A credential as presented: the exact string after the scheme, which the map's keys hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented<'h> {
    Bearer(&'h str),
    /// With the user name it decodes to.
    Basic {
        token: &'h str,
        user: String,
    },
}

impl Presented<'_> {
    fn text(&self) -> &str {
        match self {
            Presented::Bearer(text) | Presented::Basic { token: text, .. } => text,
        }
    }

    /// Whether this is the form of `grant`'s credential it claims to be. The map does not say which
    /// of a credential's two keys is which, so without this a Bearer header carrying the Basic token
    /// would pass: `<prefix><accessKey>-<secretKey>` holds the access key and a `-` (base64 has no
    /// `-`), and a Basic token decodes to the access key as user.
    fn is_form_of(&self, grant: &Grant) -> bool {
        match self {
            Presented::Bearer(text) => text
                .split('-')
                .any(|part| part.ends_with(grant.access_key.as_str())),
            Presented::Basic { user, .. } => *user == grant.access_key,
        }
    }
}

/// Reads `Authorization` values (all the request carried, so two are refused, not one picked).
pub fn presented<'h>(values: &[&'h [u8]]) -> Result<Presented<'h>, Unauthorized> {
    let value = match values {
        [] => return Err(Unauthorized::Missing),
        [value] => *value,
        _ => return Err(Unauthorized::Malformed),
    };
    if value.len() > MAX_AUTHORIZATION || !value.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
    {
        return Err(Unauthorized::Malformed);
    }
    // All ASCII, checked above.
    let text = std::str::from_utf8(value).map_err(|_| Unauthorized::Malformed)?;
    let (scheme, credential) = text.trim().split_once(' ').ok_or(Unauthorized::Malformed)?;
    let credential = credential.trim_start_matches(' ');
    if credential.is_empty() || credential.contains(' ') {
        return Err(Unauthorized::Malformed);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Presented::Bearer(credential))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64
            .decode(credential)
            .map_err(|_| Unauthorized::Malformed)?;
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or(Unauthorized::Malformed)?;
        let user =
            String::from_utf8(decoded[..colon].to_vec()).map_err(|_| Unauthorized::Malformed)?;
        Ok(Presented::Basic {
            token: credential,
            user,
        })
    } else {
        Err(Unauthorized::Malformed)
    }
}

/// The `scope` query parameter, if any: at most one, `TYPE[:resource]`, percent-decoded. More than one
/// is refused rather than combined, so a client appending `&scope=` to a gateway's URL cannot pick
/// which scope's row filter reaches the server.
pub fn requested_scope(query: Option<&str>) -> Result<Option<Scope>, Forbidden> {
    let mut found = None;
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "scope" {
            continue;
        }
        if found.is_some() {
            return Err(Forbidden::BadScope);
        }
        let value = percent_decode(value).ok_or(Forbidden::BadScope)?;
        match scope::parse(&value) {
            Ok(scope) if scope.filter.is_none() => found = Some(scope),
            _ => return Err(Forbidden::BadScope),
        }
    }
    Ok(found)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Decides one request: `authorization` holds every `Authorization` value it carried, `query` its
/// query string. Credential first (401), then scope (403).
pub fn check<'m>(
    credentials: &'m Credentials,
    authorization: &[&[u8]],
    query: Option<&str>,
    now: Timestamp,
) -> Decision<'m> {
    let presented = match presented(authorization) {
        Ok(presented) => presented,
        Err(why) => return Decision::Unauthorized(why),
    };
    let grant = credentials
        .get(&map::digest(presented.text()))
        .filter(|grant| presented.is_form_of(grant));
    let Some(grant) = grant else {
        return Decision::Unauthorized(Unauthorized::Unknown);
    };
    // The map is rewritten when a credential retires or expires, but checking here refuses it at
    // that instant, whatever the write or the kubelet's refresh takes.
    if grant.not_after.is_some_and(|t| t <= now) {
        return Decision::Unauthorized(Unauthorized::Expired);
    }
    let wanted = match requested_scope(query) {
        Ok(wanted) => wanted,
        Err(why) => return Decision::Forbidden(why),
    };
    let Some(wanted) = wanted else {
        return Decision::Allowed { grant, scope: None };
    };
    // The scope naming the resource wins over one covering the whole type: it carries the filter.
    let covering = |exact: bool| {
        grant
            .scopes
            .iter()
            .find(|g| scope::covers(&g.scope, &wanted) && (g.scope.resource.is_some() == exact))
    };
    match covering(true).or_else(|| covering(false)) {
        Some(scope) => Decision::Allowed {
            grant,
            scope: Some(scope),
        },
        None => Decision::Forbidden(Forbidden::Scope),
    }
}

#[cfg(test)]
mod tests {
    use super::super::map::tests::{BASIC, BEARER, item, map_of};
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2029-06-01T00:00:00Z";

    fn credentials(scopes: &[&str], not_after: Option<&str>) -> Credentials {
        map::parse(&map_of(item(scopes, not_after))).unwrap()
    }

    fn decide(creds: &Credentials, authorization: &str, query: Option<&str>) -> String {
        let values: &[&[u8]] = if authorization.is_empty() {
            &[]
        } else {
            &[authorization.as_bytes()]
        };
        describe(check(creds, values, query, at(NOW)))
    }

    fn describe(decision: Decision<'_>) -> String {
        match decision {
            Decision::Allowed { grant, scope } => format!(
                "allowed {} {}",
                grant.token.to_str().unwrap(),
                scope.map_or("-".into(), |s| format!(
                    "{} filter={:?}",
                    s.canonical.to_str().unwrap(),
                    s.filter.as_ref().map(|f| f.to_str().unwrap())
                ))
            ),
            Decision::Unauthorized(why) => format!("401 {}", why.as_str()),
            Decision::Forbidden(why) => format!("403 {}", why.as_str()),
        }
    }

    #[test]
    fn bearer_and_basic_credentials_are_let_in_with_their_grant() {
        let creds = credentials(&["ADMIN"], None);
        for header in [
            format!("Bearer {BEARER}"),
            format!("bearer  {BEARER}"),
            format!("Basic {BASIC}"),
            format!("BASIC {BASIC} "),
        ] {
            assert_eq!(
                decide(&creds, &header, None),
                "allowed data/app -",
                "{header}"
            );
        }
    }

    #[test]
    fn missing_unknown_and_malformed_credentials_are_refused_with_401() {
        let creds = credentials(&[], None);
        let long = format!("Bearer {}", "a".repeat(100 * 1024));
        let cases = [
            ("", "401 missing"),
            (BEARER, "401 malformed"),
            ("Token abc", "401 malformed"),
            ("Bearer", "401 malformed"),
            ("Bearer ", "401 malformed"),
            (&format!("Bearer {BEARER} extra"), "401 malformed"),
            ("Basic !!!notbase64", "401 malformed"),
            ("Basic QUFBQUFBQUFBQUFBQUFBMQ==", "401 malformed"),
            (&format!("Bearer {BEARER}\0"), "401 malformed"),
            (&format!("Bearer {BEARER}\t"), "401 malformed"),
            (&format!("Bearer {BEARER}é"), "401 malformed"),
            (&long, "401 malformed"),
            ("Bearer tm-AAAAAAAAAAAAAAA1", "401 unknown"),
            (
                &format!("Bearer {}", &BEARER[..BEARER.len() - 1]),
                "401 unknown",
            ),
            (&format!("Bearer {BEARER}0"), "401 unknown"),
            (&format!("Bearer {BASIC}"), "401 unknown"),
            ("Basic Zm9vOmJhcg==", "401 unknown"),
        ];
        for (header, expected) in cases {
            assert_eq!(
                decide(&creds, header, None),
                expected,
                "{:?}",
                &header[..header.len().min(60)]
            );
        }
        let two = [
            format!("Bearer {BEARER}").into_bytes(),
            b"Bearer x".to_vec(),
        ];
        let two: Vec<&[u8]> = two.iter().map(Vec::as_slice).collect();
        assert_eq!(
            describe(check(&creds, &two, None, at(NOW))),
            "401 malformed"
        );
    }

    #[test]
    fn a_credential_is_refused_from_its_not_after_on() {
        let creds = credentials(&[], Some("2029-06-01T00:00:00Z"));
        let header = format!("Bearer {BEARER}");
        let values = [header.as_bytes()];
        let before = at("2029-05-31T23:59:59.999Z");
        assert!(matches!(
            check(&creds, &values, None, before),
            Decision::Allowed { .. }
        ));
        assert_eq!(
            describe(check(&creds, &values, None, at(NOW))),
            "401 expired"
        );
    }

    #[test]
    fn a_scope_is_let_in_only_when_one_of_the_tokens_covers_it() {
        let creds = credentials(
            &[
                "PIPES:READ",
                "PIPES:READ:top_pages:tenant = 1",
                "DATASOURCES:APPEND:events",
            ],
            None,
        );
        let bearer = format!("Bearer {BEARER}");
        let d = |query| decide(&creds, &bearer, Some(query));
        assert_eq!(
            d("scope=PIPES:READ:top_pages"),
            "allowed data/app PIPES:READ:top_pages:tenant = 1 filter=Some(\"tenant = 1\")"
        );
        assert_eq!(
            d("scope=PIPES:READ:other"),
            "allowed data/app PIPES:READ filter=None"
        );
        assert_eq!(
            d("scope=PIPES%3AREAD"),
            "allowed data/app PIPES:READ filter=None"
        );
        assert_eq!(
            d("x=1&scope=DATASOURCES:APPEND:events"),
            "allowed data/app DATASOURCES:APPEND:events filter=None"
        );
        assert_eq!(d("scope=DATASOURCES:APPEND:other"), "403 scope");
        assert_eq!(d("scope=DATASOURCES:APPEND"), "403 scope");
        assert_eq!(d("scope=ADMIN"), "403 scope");
        assert_eq!(d("other=ADMIN"), "allowed data/app -");
        for bad in [
            "scope=",
            "scope=pipes:read",
            "scope=PIPES:READ:top_pages:tenant%20%3D%202",
            "scope=PIPES:READ&scope=ADMIN",
            "scope=%ZZ",
            "scope=%",
        ] {
            assert_eq!(d(bad), "403 bad_scope", "{bad}");
        }
        // The credential is judged first.
        assert_eq!(decide(&creds, "", Some("scope=ADMIN")), "401 missing");
    }

    #[test]
    fn a_one_segment_type_without_a_resource_covers_its_resources() {
        let creds = credentials(&["TOKENS"], None);
        let bearer = format!("Bearer {BEARER}");
        assert_eq!(
            decide(&creds, &bearer, Some("scope=TOKENS:mine")),
            "allowed data/app TOKENS filter=None"
        );
    }
}
