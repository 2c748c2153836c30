//! Issue, steady state, revocation, expiry, a foreign or deleted Secret, invalid specs, status.

use super::*;

#[test]
fn new_token_gets_a_secret_and_active_status() {
    let t = token(|_| {});
    let p = run(&t, None, at(0));
    let SecretWrite::Create(secret) = &p.write else {
        panic!("{:?}", p.write)
    };
    let data = secret.data.as_ref().unwrap();
    for key in [
        "username",
        "password",
        "token",
        "basic",
        "authorization-bearer",
        "authorization-basic",
        "role",
        "scopes",
    ] {
        assert!(data.contains_key(key), "missing {key}");
    }
    assert_eq!(p.status.phase, Some(Phase::Active));
    assert_eq!(p.status.rotations, Some(0));
    assert_eq!(p.status.next_rotation_at, Some(Time(at(3600))));
    assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Issued));
    assert_eq!(p.wake, Wake::At(at(3600)));
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("uid-1", Some(true))
    );
}

#[test]
fn status_never_holds_the_secret_key() {
    let t = token(|_| {});
    let (t, secret) = issue(&t, at(0));
    let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    let status = serde_json::to_string(&t.status).unwrap();
    assert!(!status.contains(&password));
}

#[test]
fn steady_state_writes_nothing() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let p = run(&t, Some(&secret), at(10));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(Some(&p.status), t.status.as_ref());
    assert_eq!(p.event, None);
}

#[test]
fn lost_status_is_rebuilt_from_the_secret_without_a_new_credential() {
    let (issued, secret) = issue(&token(|_| {}), at(0));
    let mut t = issued.clone();
    t.status = None;
    let p = run(&t, Some(&secret), at(10));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(
        p.status.fingerprint,
        issued.status.as_ref().unwrap().fingerprint
    );
    assert_eq!(p.status.issued_at, Some(Time(at(0))));
    assert_eq!(p.event, None);
}

#[test]
fn revoked_token_loses_its_secret_and_keeps_the_record() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let mut revoked = t.clone();
    revoked.spec.revoked = Some(true);
    let p = run(&revoked, Some(&secret), at(30));
    let SecretWrite::Delete {
        uid,
        resource_version,
        wipe: false,
    } = &p.write
    else {
        panic!("{:?}", p.write)
    };
    assert_eq!(
        (uid.as_str(), resource_version.as_str()),
        ("secret-uid", "1")
    );
    assert_eq!(p.status.phase, Some(Phase::Revoked));
    assert_eq!(p.status.revoked_at, Some(Time(at(30))));
    assert_eq!(p.status.next_rotation_at, None);
    assert_eq!(p.status.access_key, t.status.as_ref().unwrap().access_key);
    assert_eq!(p.status.conditions[0].status, "False");
    assert_eq!(p.status.conditions[0].reason, "Revoked");
    assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Revoked));

    // Once carried out, nothing more happens and no second Event is recorded.
    let mut after = revoked.clone();
    after.status = Some(p.status.clone());
    let p2 = run(&after, None, at(60));
    assert!(matches!(p2.write, SecretWrite::Nothing));
    assert_eq!(p2.event, None);
    assert_eq!(p2.status.revoked_at, Some(Time(at(30))));
}

#[test]
fn expiry_removes_the_secret_at_the_instant() {
    let expires = at(1800);
    let (t, secret) = issue(&token(|s| s.expires_at = Some(Time(expires))), at(0));
    assert_eq!(run(&t, Some(&secret), at(0)).wake, Wake::At(expires));
    let p = run(&t, Some(&secret), expires);
    assert!(matches!(p.write, SecretWrite::Delete { .. }));
    assert_eq!(p.status.phase, Some(Phase::Expired));
    assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Expired));
}

#[test]
fn past_expiry_on_create_expires_at_once_without_minting() {
    let t = token(|s| s.expires_at = Some(Time(at(-1))));
    let p = run(&t, None, at(0));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(p.status.phase, Some(Phase::Expired));
    assert_eq!(p.status.access_key, None);
}

#[test]
fn deleted_secret_is_replaced_and_counted_as_a_rotation_with_a_warning() {
    let (t, _) = issue(&token(|_| {}), at(0));
    let p = run(&t, None, at(100));
    assert!(matches!(p.write, SecretWrite::Create(_)));
    assert_eq!(p.status.rotations, Some(1));
    assert_eq!(
        p.event.as_ref().map(|e| (e.reason, e.warning)),
        Some((Reason::Rotated, true))
    );
}

#[test]
fn foreign_secret_is_never_touched() {
    let t = token(|_| {});
    let mut foreign = issue(&t, at(0)).1;
    foreign.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "other".into(),
        uid: "other-uid".into(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    let p = run(&t, Some(&foreign), at(0));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(p.status.conditions[0].reason, "SecretConflict");
    assert_eq!(p.wake, Wake::After(CONFLICT_RETRY));
    assert!(p.event.is_some());
    // No second Event while the conflict persists.
    let mut t2 = t.clone();
    t2.status = Some(p.status);
    assert_eq!(run(&t2, Some(&foreign), at(30)).event, None);
    // A Secret with no owner at all is foreign too.
    let mut bare = foreign.clone();
    bare.metadata = ObjectMeta {
        name: bare.metadata.name.clone(),
        ..ObjectMeta::default()
    };
    assert!(matches!(
        run(&t, Some(&bare), at(0)).write,
        SecretWrite::Nothing
    ));
}

#[test]
fn invalid_spec_changes_no_credential() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let mut bad = t.clone();
    bad.spec.rotation = Some(Rotation {
        period: "10s".into(),
        overlap: None,
    });
    let p = run(&bad, Some(&secret), at(7200));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(p.status.fingerprint, t.status.as_ref().unwrap().fingerprint);
    let ready = &p.status.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(ready.message.contains("spec.rotation.period"));
    // And nothing is minted for a new token with an invalid spec.
    let p = run(
        &token(|s| {
            s.rotation = Some(Rotation {
                period: "10s".into(),
                overlap: None,
            })
        }),
        None,
        at(0),
    );
    assert!(matches!(p.write, SecretWrite::Nothing));
}

#[test]
fn role_and_scope_changes_update_the_secret_in_place() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let mut changed = t.clone();
    changed.spec.role = "writer".into();
    changed.metadata.generation = Some(2);
    let p = run(&changed, Some(&secret), at(10));
    let SecretWrite::Update {
        secret: updated, ..
    } = &p.write
    else {
        panic!("{:?}", p.write)
    };
    let data = updated.data.as_ref().unwrap();
    assert_eq!(data["role"].0, b"writer");
    assert_eq!(data["password"], secret.data.as_ref().unwrap()["password"]);
    assert_eq!(p.status.fingerprint, t.status.as_ref().unwrap().fingerprint);
    assert_eq!(p.status.observed_generation, Some(2));
    assert_eq!(p.event, None);
}

#[test]
fn ready_transition_time_moves_only_when_readiness_flips() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let rotated = run(&t, Some(&secret), at(3600));
    assert_eq!(
        rotated.status.conditions[0].last_transition_time,
        Time(at(0))
    );
    let mut revoked = t.clone();
    revoked.spec.revoked = Some(true);
    let p = run(&revoked, Some(&secret), at(4000));
    assert_eq!(p.status.conditions[0].last_transition_time, Time(at(4000)));
}

#[test]
fn invalid_spec_and_conflict_are_stalled_and_issued_tokens_are_not() {
    let bad = token(|s| {
        s.rotation = Some(Rotation {
            period: "10s".into(),
            overlap: None,
        })
    });
    let p = run(&bad, None, at(0));
    let stalled = p.status.conditions.iter().find(|c| c.type_ == "Stalled");
    assert_eq!(
        stalled.map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("True", "InvalidSpec"))
    );
    let (t, secret) = issue(&token(|_| {}), at(0));
    let p = run(&t, Some(&secret), at(1));
    assert!(p.status.conditions.iter().all(|c| c.type_ != "Stalled"));
}

#[test]
fn revocation_wipes_first_when_a_finalizer_would_keep_the_secret() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let mut held = secret.clone();
    held.metadata.finalizers = Some(vec!["example.com/backup".into()]);
    let mut revoked = t.clone();
    revoked.spec.revoked = Some(true);
    let p = run(&revoked, Some(&held), at(5));
    assert!(
        matches!(p.write, SecretWrite::Delete { wipe: true, .. }),
        "{:?}",
        p.write
    );
    // Terminating and already empty: nothing left to do but wait for it to go.
    let mut going = held.clone();
    going.metadata.deletion_timestamp = Some(Time(at(5)));
    going.data = Some(BTreeMap::from([(
        "role".into(),
        ByteString(b"reader".to_vec()),
    )]));
    assert!(matches!(
        run(&revoked, Some(&going), at(6)).write,
        SecretWrite::Nothing
    ));
}

#[test]
fn a_label_removed_from_the_template_is_removed_from_the_secret() {
    let templated = token(|s| {
        s.secret_template = Some(crate::api::SecretTemplate {
            labels: Some(BTreeMap::from([("team".into(), "a".into())])),
            annotations: None,
        })
    });
    let (t, secret) = issue(&templated, at(0));
    let mut plain = t.clone();
    plain.spec.secret_template = None;
    let p = run(&plain, Some(&secret), at(5));
    let SecretWrite::Update {
        removed,
        secret: new,
        ..
    } = &p.write
    else {
        panic!("{:?}", p.write)
    };
    assert_eq!(removed.labels, vec!["team".to_owned()]);
    assert!(!new.metadata.labels.as_ref().unwrap().contains_key("team"));
    assert_eq!(password(new), password(&secret));
}

#[test]
fn debug_output_shows_keys_never_values() {
    let t = token(|_| {});
    let p = run(&t, None, at(0));
    let SecretWrite::Create(secret) = &p.write else {
        panic!()
    };
    let password = String::from_utf8(password(secret)).unwrap();
    let shown = format!("{p:?} {:?}", observe(&t, Some(secret), &rules().key));
    assert!(shown.contains("password"), "{shown}");
    assert!(!shown.contains(&password), "{shown}");
}

#[test]
fn an_unused_token_is_warned_then_revoked_for_good_and_only_where_use_is_seen() {
    let (mut t, secret) = issue(&inactive_one_and_three_days(), at(0));
    // No authz reports use: nothing happens, however long.
    let blind = run(&t, Some(&secret), at(30 * DAY));
    let unused = |p: &Plan| {
        p.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Unused")
            .cloned()
    };
    assert_eq!(unused(&blind).unwrap().status, "Unknown");
    assert_eq!(blind.status.phase, Some(Phase::Active));
    assert!(blind.event.is_none());

    t.status.as_mut().unwrap().usage_tracked = true;
    // Day 0.5: used recently enough (never used, but created half a day ago); wakes at day 1.
    let fresh = run(&t, Some(&secret), at(DAY / 2));
    assert_eq!(unused(&fresh).unwrap().status, "False");
    assert_eq!(fresh.wake, Wake::At(at(DAY)));
    // Day 1: Unused, a Warning, revocation planned two days after the Warning.
    let warned = run(&t, Some(&secret), at(DAY));
    let condition = unused(&warned).unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Unused")
    );
    let event = warned.event.clone().expect("a Warning");
    assert!(event.warning && event.reason == Reason::Unused);
    assert_eq!(warned.wake, Wake::At(at(3 * DAY)));
    assert_eq!(warned.status.phase, Some(Phase::Active));
    t.status = Some(warned.status);
    // Day 2: still warned, no second Event.
    assert!(run(&t, Some(&secret), at(2 * DAY)).event.is_none());
    // Day 3: revoked, its Secret deleted, Ready=False reason Unused.
    let revoked = run(&t, Some(&secret), at(3 * DAY));
    assert_eq!(revoked.status.phase, Some(Phase::Revoked));
    assert!(matches!(revoked.write, SecretWrite::Delete { .. }));
    let ready = revoked
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "Unused");
    let why = unused(&revoked).unwrap();
    assert!(
        why.message.contains("spec.inactivity.revokeAfter (3d)"),
        "{}",
        why.message
    );
    // For good: later, with the Secret gone and whatever use is recorded, it stays revoked, and
    // its status does not change again.
    t.status = Some(revoked.status.clone());
    let later = run(&t, None, at(5 * DAY));
    assert_eq!(later.status, revoked.status);
    assert!(matches!(later.write, SecretWrite::Nothing));
    t.status.as_mut().unwrap().last_used_at = Some(Time(at(4 * DAY)));
    let used = run(&t, None, at(5 * DAY));
    assert_eq!(used.status.phase, Some(Phase::Revoked));
    assert!(!used.mints);
}

#[test]
fn a_use_after_the_warning_keeps_the_token() {
    let (mut t, secret) = issue(&inactive_one_and_three_days(), at(0));
    t.status.as_mut().unwrap().usage_tracked = true;
    t.status = Some(run(&t, Some(&secret), at(DAY)).status);
    t.status.as_mut().unwrap().last_used_at = Some(Time(at(2 * DAY)));
    let p = run(&t, Some(&secret), at(3 * DAY));
    assert_eq!(p.status.phase, Some(Phase::Active));
    let unused = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Unused")
        .unwrap();
    assert_eq!(unused.status, "True", "unused again a day after that use");
    // Revoked no sooner than revokeAfter after that use (nor than the warning period after the
    // Warning): day 5.
    assert_eq!(p.wake, Wake::At(at(5 * DAY)));
}

const DAY: i64 = 86_400;

/// A token created at 0 with `inactivity: {warnAfter: 1d, revokeAfter: 3d}` and no rotation.
fn inactive_one_and_three_days() -> ApiToken {
    let mut t = token(|s| {
        s.rotation = None;
        s.inactivity = Some(crate::api::Inactivity {
            warn_after: Some("1d".into()),
            revoke_after: Some("3d".into()),
        });
    });
    t.metadata.creation_timestamp = Some(Time(at(0)));
    t
}
