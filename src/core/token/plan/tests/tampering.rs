//! Edited, planted or forged credentials and bookkeeping, stripped seals and lost seal keys.

use super::*;

#[test]
fn edited_credential_key_is_treated_as_compromised() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    for key in [
        "password",
        "username",
        "token",
        "basic",
        "authorization-bearer",
        "authorization-basic",
    ] {
        let p = run(&t, Some(&edit(&secret, key, "tampered")), at(100));
        assert!(matches!(p.write, SecretWrite::Update { .. }), "{key}");
        assert_eq!(p.status.rotations, Some(1), "{key}");
        assert_ne!(
            p.status.fingerprint,
            t.status.as_ref().unwrap().fingerprint,
            "{key}"
        );
        let event = p.event.unwrap();
        assert!(
            event.warning && !event.note.contains("tampered"),
            "{key}: {}",
            event.note
        );
    }
}

#[test]
fn consistent_but_foreign_credential_is_treated_as_compromised() {
    // Someone rewrote every form and the fingerprint annotation consistently.
    let (t, secret) = issue(&token(|_| {}), at(0));
    let other = issue(&token(|s| s.role = "writer".into()), at(0)).1;
    let mut swapped = other.clone();
    swapped
        .data
        .as_mut()
        .unwrap()
        .insert("role".into(), ByteString(b"reader".to_vec()));
    swapped.metadata.resource_version = secret.metadata.resource_version.clone();
    let mut t2 = t.clone();
    t2.status.as_mut().unwrap().fingerprint = Some("sha256:0000000000000000".into());
    let p = run(&t2, Some(&swapped), at(5));
    assert!(matches!(p.write, SecretWrite::Update { .. }));
    assert!(p.event.unwrap().warning);
    // But a Secret that is newer than the status (status write not seen yet) is trusted.
    let fingerprint =
        swapped.metadata.annotations.as_ref().unwrap()[FINGERPRINT_ANNOTATION].clone();
    let mut stale = t.clone();
    stale.status.as_mut().unwrap().rotations = None;
    let p = run(&stale, Some(&swapped), at(5));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(p.status.fingerprint, Some(fingerprint));
}

#[test]
fn a_planted_credential_with_a_recomputed_fingerprint_is_compromised() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let planted = plant(&secret, "PLANTEDACCESSKEY", "PLANTEDSECRETKEY0123456789");
    // Status lost too, so only the seal stands between the plant and acceptance.
    let mut lost = t.clone();
    lost.status.as_mut().unwrap().fingerprint = None;
    for token in [&t, &lost] {
        let p = run(token, Some(&planted), at(10));
        expect_compromised(&p, &t, &secret);
    }
}

#[test]
fn a_forged_issued_at_or_rotation_count_is_compromised() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let later = annotate_secret(
        &secret,
        secret::ISSUED_AT_ANNOTATION,
        Some("2099-01-01T00:00:00Z"),
    );
    let p = run(&t, Some(&later), at(10));
    expect_compromised(&p, &t, &secret);
    assert_eq!(p.status.next_rotation_at, Some(Time(at(10 + 3600))));

    let counted = annotate_secret(&secret, secret::ROTATIONS_ANNOTATION, Some("1"));
    let p = run(&t, Some(&counted), at(10));
    expect_compromised(&p, &t, &secret);
}

#[test]
fn an_unsealed_secret_from_before_the_seal_is_sealed_without_a_new_credential() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let unsealed = annotate_secret(
        &annotate_secret(&secret, crate::core::seal::SEAL_ANNOTATION, None),
        crate::core::seal::SEAL_KEY_ID_ANNOTATION,
        None,
    );
    let p = run(&t, Some(&unsealed), at(10));
    let SecretWrite::Update { secret: sealed, .. } = &p.write else {
        panic!("expected a re-seal, got {:?}", p.write)
    };
    assert_eq!(password(sealed), password(&secret));
    assert_eq!(sealed.metadata.annotations, secret.metadata.annotations);
    assert_eq!(p.event, None);
    assert!(!p.mints);
    assert_eq!(p.status.fingerprint, t.status.as_ref().unwrap().fingerprint);
}

#[test]
fn a_secret_under_a_lost_key_is_resealed_only_when_status_vouches_for_it() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let new_key = Rules {
        key: SealKey::from_bytes(&[9; 32]).unwrap(),
        policy: Policy::default(),
    };
    let p = run_with(&t, Some(&secret), &new_key, at(10));
    let SecretWrite::Update {
        secret: resealed, ..
    } = &p.write
    else {
        panic!("expected a re-seal, got {:?}", p.write)
    };
    assert_eq!(password(resealed), password(&secret));
    let id =
        &resealed.metadata.annotations.as_ref().unwrap()[crate::core::seal::SEAL_KEY_ID_ANNOTATION];
    assert_eq!(id, new_key.key.id());
    assert_eq!(p.event, None);

    // Without the status to vouch for it (or with a status that disagrees), it is compromised.
    let mut lost = t.clone();
    lost.status = None;
    let p = run_with(&lost, Some(&secret), &new_key, at(10));
    assert!(p.mints && p.event.as_ref().unwrap().warning);
    let forged = annotate_secret(
        &secret,
        secret::ISSUED_AT_ANNOTATION,
        Some("2099-01-01T00:00:00Z"),
    );
    let p = run_with(&t, Some(&forged), &new_key, at(10));
    assert!(p.mints && p.event.as_ref().unwrap().warning);
}

#[test]
fn under_a_stripped_seal_only_the_staged_and_previous_credentials_status_records_are_believed() {
    // A legitimately staged rotation, recorded in status.
    let (t, secret) = issue(&overlapping(), at(0));
    let stage = run_served(&t, Some(&secret), 90, None, at(3500));
    let (staged_t, with_next) = applied(&t, stage, "2");
    let recorded = staged_t.status.as_ref().unwrap().next.clone().unwrap();
    assert_eq!(recorded.promote_at, Time(at(3600)));
    // A legitimate overlap, recorded in status.
    let promote = run_served(&staged_t, Some(&with_next), 90, Some(3501), at(3600));
    let (overlap_t, promoted) = applied(&staged_t, promote, "3");
    assert!(overlap_t.status.as_ref().unwrap().previous.is_some());
    assert_eq!(overlap_t.status.as_ref().unwrap().next, None);

    // What status records survives a stripped seal: re-sealed, nothing minted.
    for (t, secret, now) in [(&staged_t, &with_next, 3550), (&overlap_t, &promoted, 3601)] {
        let p = run_served(t, Some(&strip_seal(secret)), 90, Some(3501), at(now));
        assert!(!p.mints && p.event.is_none(), "{:?}", p.event);
        assert!(
            matches!(p.write, SecretWrite::Update { .. }),
            "{:?}",
            p.write
        );
    }

    // What a tenant plants under a stripped seal is tampering: re-issued, nothing kept.
    let retire_later = annotate_secret(
        &promoted,
        secret::PREVIOUS_RETIRES_AT_ANNOTATION,
        Some("8999-01-01T00:00:00Z"),
    );
    let promote_sooner = annotate_secret(
        &with_next,
        secret::NEXT_PROMOTE_AT_ANNOTATION,
        Some(&secret::rfc3339(at(3501))),
    );
    let handled = annotate_secret(&secret, secret::RETIRE_REQUEST_ANNOTATION, Some("leak-1"));
    let planted: [(&str, &ApiToken, Secret); 6] = [
        (
            "a staged credential status does not record",
            &t,
            transplant(&with_next, &secret, "next-"),
        ),
        (
            "a previous credential status does not record",
            &t,
            transplant(&promoted, &secret, "previous-"),
        ),
        (
            "a previous credential that retires later",
            &overlap_t,
            retire_later,
        ),
        (
            "a staged credential promoted sooner",
            &staged_t,
            promote_sooner,
        ),
        ("a retire request marked handled", &t, handled),
        (
            "another staged credential in place of the recorded one",
            &staged_t,
            plant_next(&with_next),
        ),
    ];
    for (what, t, secret) in planted {
        let unsealed = strip_seal(&secret);
        let p = run_served(t, Some(&unsealed), 90, Some(3501), at(3601));
        assert!(p.mints, "{what}: {:?}", p.write);
        expect_reissued_clean(&p, t, &unsealed);
    }
}

#[test]
fn a_reissue_after_tampering_or_deletion_has_no_overlap() {
    let (t, secret) = issue(&overlapping(), at(0));
    let tampered = run(&t, Some(&edit(&secret, "password", "x")), at(5));
    assert!(tampered.mints && tampered.status.previous.is_none());
    let deleted = run(&t, None, at(5));
    assert!(deleted.mints && deleted.status.previous.is_none());
}

#[test]
fn an_edited_previous_credential_is_tampering() {
    let (t, secret) = issue(&overlapping(), at(0));
    let (t, rotated) = applied(&t, run(&t, Some(&secret), at(3600)), "2");
    let later = annotate_secret(
        &rotated,
        secret::PREVIOUS_RETIRES_AT_ANNOTATION,
        Some("2099-01-01T00:00:00Z"),
    );
    let p = run(&t, Some(&later), at(3601));
    assert!(p.mints && p.event.unwrap().warning);
    assert_eq!(p.status.previous, None);
}
