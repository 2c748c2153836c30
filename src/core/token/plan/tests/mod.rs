//! The planner's table tests, grouped by behaviour; the helpers every group uses are here.

mod lifecycle;
mod rotation;
mod staging;
mod tampering;

use super::*;
use crate::api::{ApiTokenSpec, Rotation};
use crate::core::credential::Credential;
use crate::core::seal::SealKey;
use crate::core::token::secret::{self, FINGERPRINT_ANNOTATION, observe};
use crate::core::token::validate::Policy;
use jiff::SignedDuration;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;

const T0: i64 = 1_800_000_000;

fn at(offset_secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + offset_secs).unwrap()
}

/// A fresh seed per call, as every real mint draws new randomness.
fn rng() -> StdRng {
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    StdRng::seed_from_u64(SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn token(spec: impl FnOnce(&mut ApiTokenSpec)) -> ApiToken {
    let mut t = ApiToken::new(
        "reader",
        ApiTokenSpec {
            role: "reader".into(),
            rotation: Some(Rotation {
                period: "1h".into(),
                overlap: None,
            }),
            ..ApiTokenSpec::default()
        },
    );
    t.metadata.namespace = Some("team".into());
    t.metadata.uid = Some("uid-1".into());
    t.metadata.generation = Some(1);
    spec(&mut t.spec);
    t
}

fn annotate(mut t: ApiToken, value: &str) -> ApiToken {
    t.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(crate::api::ROTATE_ANNOTATION.into(), value.into());
    t
}

fn rules() -> Rules {
    Rules {
        key: SealKey::from_bytes(&[7; 32]).unwrap(),
        policy: Policy::default(),
    }
}

/// Runs the plan and, as the controller would, "applies" its Secret and status.
fn issue(t: &ApiToken, now: Timestamp) -> (ApiToken, Secret) {
    let p = run(t, None, now);
    let SecretWrite::Create(secret) = p.write else {
        panic!("expected a create, got {:?}", p.write)
    };
    let mut secret = *secret;
    secret.metadata.resource_version = Some("1".into());
    secret.metadata.uid = Some("secret-uid".into());
    let mut t = t.clone();
    t.status = Some(p.status);
    (t, secret)
}

fn run(t: &ApiToken, secret: Option<&Secret>, now: Timestamp) -> Plan {
    run_with(t, secret, &rules(), now)
}

fn run_with(t: &ApiToken, secret: Option<&Secret>, rules: &Rules, now: Timestamp) -> Plan {
    plan(
        t,
        &observe(t, secret, &rules.key),
        &Servers::NONE,
        rules,
        now,
        &mut rng(),
    )
}

/// Plans for a token without verifiers while a consumer has not moved to its current credential.
fn run_moving(t: &ApiToken, secret: Option<&Secret>, now: Timestamp) -> Plan {
    let servers = Servers {
        consumers_moving: true,
        ..Servers::NONE
    };
    run_for(t, secret, &servers, now)
}

fn edit(secret: &Secret, key: &str, value: &str) -> Secret {
    let mut s = secret.clone();
    s.data
        .as_mut()
        .unwrap()
        .insert(key.into(), ByteString(value.as_bytes().to_vec()));
    s
}

fn annotate_secret(secret: &Secret, key: &str, value: Option<&str>) -> Secret {
    let mut s = secret.clone();
    let annotations = s.metadata.annotations.get_or_insert_default();
    match value {
        Some(v) => annotations.insert(key.into(), v.into()),
        None => annotations.remove(key),
    };
    s
}

fn password(secret: &Secret) -> Vec<u8> {
    secret.data.as_ref().unwrap()["password"].0.clone()
}

fn expect_compromised(p: &Plan, t: &ApiToken, secret: &Secret) {
    let SecretWrite::Update { secret: new, .. } = &p.write else {
        panic!("expected a new credential, got {:?}", p.write)
    };
    assert_ne!(password(new), password(secret));
    assert_eq!(
        p.status.rotations,
        Some(t.status.as_ref().unwrap().rotations.unwrap() + 1)
    );
    let event = p.event.as_ref().unwrap();
    assert!(
        event.warning && event.reason == Reason::Rotated,
        "{event:?}"
    );
    assert!(p.mints);
}

/// Every form rewritten consistently and the fingerprint recomputed: what someone with write access
/// to the Secret can do without the seal key.
fn plant(secret: &Secret, access_key: &str, secret_key: &str) -> Secret {
    let credential = crate::core::credential::Credential {
        prefix: "tm-".into(),
        access_key: access_key.into(),
        secret_key: secret_key.into(),
    };
    let mut s = secret.clone();
    for (k, v) in [
        ("username", access_key.to_owned()),
        ("password", secret_key.to_owned()),
        ("token", credential.bearer()),
        ("basic", credential.basic()),
        (
            "authorization-bearer",
            format!("Bearer {}", credential.bearer()),
        ),
        (
            "authorization-basic",
            format!("Basic {}", credential.basic()),
        ),
    ] {
        s = edit(&s, k, &v);
    }
    annotate_secret(&s, FINGERPRINT_ANNOTATION, Some(&credential.fingerprint()))
}

fn overlapping() -> ApiToken {
    token(|s| {
        s.rotation = Some(Rotation {
            period: "1h".into(),
            overlap: Some("10m".into()),
        })
    })
}

/// Applies a plan's Secret write and status, as the controller would.
fn applied(t: &ApiToken, p: Plan, version: &str) -> (ApiToken, Secret) {
    let mut secret = match p.write {
        SecretWrite::Update { secret, .. } | SecretWrite::Create(secret) => *secret,
        other => panic!("expected a Secret write, got {other:?}"),
    };
    secret.metadata.resource_version = Some(version.into());
    secret.metadata.uid = Some("secret-uid".into());
    let mut t = t.clone();
    t.status = Some(p.status);
    (t, secret)
}

fn retire_annotate(mut t: ApiToken, value: &str) -> ApiToken {
    t.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(crate::api::RETIRE_ANNOTATION.into(), value.into());
    t
}

/// Plans with verifiers whose publish delay is `delay` seconds and whose outputs have held any
/// staged credential since `published` (seconds), if set.
fn run_served(
    t: &ApiToken,
    secret: Option<&Secret>,
    delay: i64,
    published: Option<i64>,
    now: Timestamp,
) -> Plan {
    let held = move |_: &Credential| published.map(at);
    let servers = Servers {
        publish_delay: Some(SignedDuration::from_secs(delay)),
        published: &held,
        consumers_moving: false,
        usage_granularity: None,
    };
    run_for(t, secret, &servers, now)
}

/// Plans with `servers`, under the test rules.
fn run_for(t: &ApiToken, secret: Option<&Secret>, servers: &Servers<'_>, now: Timestamp) -> Plan {
    let rules = rules();
    plan(
        t,
        &observe(t, secret, &rules.key),
        servers,
        &rules,
        now,
        &mut rng(),
    )
}

fn staged(secret: &Secret) -> Option<Next> {
    match secret::observe(&overlapping(), Some(secret), &rules().key) {
        Observed::Owned { held: Ok(h), .. } => h.next,
        other => panic!("{other:?}"),
    }
}

/// The Secret without its seal: what a tenant who may edit it can always do.
fn strip_seal(secret: &Secret) -> Secret {
    let unsealed = annotate_secret(secret, crate::core::seal::SEAL_ANNOTATION, None);
    annotate_secret(&unsealed, crate::core::seal::SEAL_KEY_ID_ANNOTATION, None)
}

/// `into` with the data keys and annotations of `from` whose names start with `prefix` (the
/// `previous-` or `next-` credential), as a tenant copying them in would write them.
fn transplant(from: &Secret, into: &Secret, prefix: &str) -> Secret {
    let mut s = into.clone();
    let data = s.data.get_or_insert_with(BTreeMap::new);
    for (k, v) in from.data.iter().flatten() {
        if k.starts_with(prefix) {
            data.insert(k.clone(), v.clone());
        }
    }
    let annotations = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in from.metadata.annotations.iter().flatten() {
        if k.starts_with(&format!("tokenmint.dev/{prefix}")) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    s
}

/// `secret` with a consistent staged credential that tokenmint never minted.
fn plant_next(secret: &Secret) -> Secret {
    let credential = crate::core::credential::Credential {
        prefix: "tm-".into(),
        access_key: "PLANTED".into(),
        secret_key: "x".repeat(32),
    };
    let mut s = secret.clone();
    let data = s.data.get_or_insert_with(BTreeMap::new);
    for (k, v) in [
        ("next-username", credential.access_key.clone()),
        ("next-password", credential.secret_key.clone()),
        ("next-token", credential.bearer()),
    ] {
        data.insert(k.into(), ByteString(v.into_bytes()));
    }
    annotate_secret(
        &s,
        secret::NEXT_FINGERPRINT_ANNOTATION,
        Some(&credential.fingerprint()),
    )
}

/// A re-issue after tampering carries neither a staged nor a previous credential.
fn expect_reissued_clean(p: &Plan, t: &ApiToken, secret: &Secret) {
    expect_compromised(p, t, secret);
    let SecretWrite::Update { secret: new, .. } = &p.write else {
        unreachable!()
    };
    // Apply would keep what another field manager planted: the write removes it after.
    let left = secret::leftover_keys(secret, new);
    for (key, _) in secret.data.iter().flatten() {
        if key.starts_with("next-") || key.starts_with("previous-") {
            assert!(left.data.contains(key), "{key} stays: {left:?}");
        }
    }
    for (name, _) in secret.metadata.annotations.iter().flatten() {
        if name.starts_with("tokenmint.dev/next-") || name.starts_with("tokenmint.dev/previous-") {
            assert!(left.annotations.contains(name), "{name} stays: {left:?}");
        }
    }
    let data = new.data.as_ref().unwrap();
    assert!(
        data.keys()
            .all(|k| !k.starts_with("next-") && !k.starts_with("previous-")),
        "{:?}",
        data.keys()
    );
    assert_eq!((&p.status.previous, &p.status.next), (&None, &None));
}
