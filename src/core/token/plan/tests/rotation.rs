//! Scheduled, overdue and manual rotations, overlaps and retiring the previous credential.

use super::*;

#[test]
fn scheduled_rotation_happens_at_the_instant_not_before() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let before = run(&t, Some(&secret), at(3599));
    assert!(matches!(before.write, SecretWrite::Nothing));
    assert_eq!(before.wake, Wake::At(at(3600)));

    let due = run(&t, Some(&secret), at(3600));
    let SecretWrite::Update {
        resource_version, ..
    } = &due.write
    else {
        panic!("{:?}", due.write)
    };
    assert_eq!(resource_version, "1");
    assert_eq!(due.status.rotations, Some(1));
    assert_eq!(due.status.issued_at, Some(Time(at(3600))));
    assert_eq!(due.status.next_rotation_at, Some(Time(at(7200))));
    assert_ne!(
        due.status.fingerprint,
        t.status.as_ref().unwrap().fingerprint
    );
    assert_eq!(
        due.event.as_ref().map(|e| (e.reason, e.warning)),
        Some((Reason::Rotated, false))
    );
}

#[test]
fn overdue_rotation_after_an_outage_happens_once() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let late = at(5 * 3600 + 17);
    let p = run(&t, Some(&secret), late);
    assert_eq!(p.status.rotations, Some(1));
    assert_eq!(
        p.status.next_rotation_at,
        Some(Time(late + SignedDuration::from_hours(1)))
    );
}

#[test]
fn token_without_rotation_never_rotates() {
    let (t, secret) = issue(&token(|s| s.rotation = None), at(0));
    let p = run(&t, Some(&secret), at(100 * 86_400));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(p.status.next_rotation_at, None);
    assert_eq!(p.wake, Wake::OnChange);
}

#[test]
fn manual_rotation_happens_once_per_new_value() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let t = annotate(t, "2026-11-23T10:00:00Z");
    let p = run(&t, Some(&secret), at(5));
    let SecretWrite::Update {
        secret: rotated, ..
    } = &p.write
    else {
        panic!("{:?}", p.write)
    };
    assert_eq!(
        p.status.last_rotate_request.as_deref(),
        Some("2026-11-23T10:00:00Z")
    );
    assert_eq!(p.status.rotations, Some(1));

    // The same value seen again, even with status lost, does not rotate again.
    let mut again = t.clone();
    again.status = None;
    let mut rotated = (**rotated).clone();
    rotated.metadata.resource_version = Some("2".into());
    rotated.metadata.uid = Some("secret-uid".into());
    let p2 = run(&again, Some(&rotated), at(6));
    assert!(matches!(p2.write, SecretWrite::Nothing));
    assert_eq!(p2.status.rotations, Some(1));
}

#[test]
fn rotate_annotation_present_at_creation_is_handled_by_the_first_issue() {
    let t = annotate(token(|_| {}), "first");
    let (t, secret) = issue(&t, at(0));
    assert_eq!(
        t.status.as_ref().unwrap().last_rotate_request.as_deref(),
        Some("first")
    );
    assert!(matches!(
        run(&t, Some(&secret), at(1)).write,
        SecretWrite::Nothing
    ));
}

#[test]
fn a_rotation_whose_status_write_failed_still_gets_its_event() {
    let (t, secret) = issue(&token(|_| {}), at(0));
    let rotated = run(&t, Some(&secret), at(3600));
    let SecretWrite::Update { secret: new, .. } = rotated.write else {
        panic!()
    };
    let mut new = *new;
    new.metadata.resource_version = Some("2".into());
    new.metadata.uid = secret.metadata.uid.clone();
    // The status still describes the first credential: the status write was lost.
    let p = run(&t, Some(&new), at(3601));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert_eq!(p.status.rotations, Some(1));
    assert_eq!(p.event.as_ref().map(|e| e.reason), Some(Reason::Rotated));
    // Once status caught up, no second Event.
    let mut caught_up = t.clone();
    caught_up.status = Some(p.status);
    assert_eq!(run(&caught_up, Some(&new), at(3602)).event, None);
}

#[test]
fn a_rotation_with_overlap_keeps_the_previous_credential_until_it_retires() {
    let (t, secret) = issue(&overlapping(), at(0));
    let old_password = password(&secret);
    let p = run(&t, Some(&secret), at(3600));
    let previous = p.status.previous.clone().expect("status.previous");
    assert_eq!(previous.retires_at, Time(at(3600 + 600)));
    assert_eq!(
        previous.fingerprint,
        t.status.as_ref().unwrap().fingerprint.clone().unwrap()
    );
    assert_eq!(p.wake, Wake::At(at(4200)));
    let (t, rotated) = applied(&t, p, "2");
    let data = rotated.data.as_ref().unwrap();
    assert_eq!(data["previous-password"].0, old_password);
    assert_ne!(password(&rotated), old_password);
    let notes = rotated.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        notes[secret::PREVIOUS_RETIRES_AT_ANNOTATION],
        secret::rfc3339(at(4200))
    );

    // During the overlap: steady, nothing written.
    let during = run(&t, Some(&rotated), at(4199));
    assert!(
        matches!(during.write, SecretWrite::Nothing),
        "{:?}",
        during.write
    );
    assert!(during.status.previous.is_some());
    // At retiresAt: the previous keys go, the current credential stays.
    let due = run(&t, Some(&rotated), at(4200));
    let SecretWrite::Update {
        secret: retired, ..
    } = &due.write
    else {
        panic!("{:?}", due.write)
    };
    let data = retired.data.as_ref().unwrap();
    assert!(!data.contains_key("previous-password") && !data.contains_key("previous-token"));
    assert_eq!(password(retired), password(&rotated));
    assert!(
        !retired
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(secret::PREVIOUS_FINGERPRINT_ANNOTATION)
    );
    assert_eq!(due.status.previous, None);
    assert!(!due.mints);
}

#[test]
fn retirement_waits_for_moving_consumers_at_most_one_more_overlap_then_warns() {
    let (t, secret) = issue(&overlapping(), at(0));
    let (mut t, mut current) = applied(&t, run(&t, Some(&secret), at(3600)), "2");
    // Not moving: retires at its instant (overlap 600 s), quietly.
    let quiet = run(&t, Some(&current), at(4200));
    assert_eq!(quiet.status.previous, None);
    assert!(quiet.event.is_none());
    // Moving: ten seconds ahead of the instant it steps a minute on, and the next look comes
    // before the next step is due.
    let held = run_moving(&t, Some(&current), at(4190));
    assert_eq!(
        held.status.previous.as_ref().unwrap().retires_at,
        Time(at(4260))
    );
    assert_eq!(held.wake, Wake::At(at(4250)));
    // Follow the wake-ups while consumers stay stuck: never past one more overlap (4800), then
    // retired with a Warning.
    let mut now = at(4190);
    for version in 3.. {
        let p = run_moving(&t, Some(&current), now);
        if p.status.previous.is_none() {
            assert_eq!(now, at(4800));
            let event = p.event.expect("a Warning");
            assert!(event.warning);
            assert_eq!(event.reason, Reason::RetiredBeforeConsumers);
            break;
        }
        let retires = p.status.previous.as_ref().unwrap().retires_at.0;
        assert!(retires <= at(4800), "never past one more overlap");
        let Wake::At(wake) = p.wake else {
            panic!("{:?}", p.wake)
        };
        assert!(
            wake < retires || retires == at(4800),
            "looks before the step is due"
        );
        now = if retires == at(4800) { retires } else { wake };
        (t, current) = applied(&t, p, &version.to_string());
        assert!(version < 30, "the hold ends");
    }
}

#[test]
fn retire_previous_retires_at_once_and_only_once() {
    let (t, secret) = issue(&overlapping(), at(0));
    let (t, rotated) = applied(&t, run(&t, Some(&secret), at(3600)), "2");
    let asked = retire_annotate(t.clone(), "leak-1");
    let p = run(&asked, Some(&rotated), at(3610));
    assert_eq!(p.status.previous, None);
    assert_eq!(p.status.last_retire_request.as_deref(), Some("leak-1"));
    let (after, retired) = applied(&asked, p, "3");
    assert!(
        !retired
            .data
            .as_ref()
            .unwrap()
            .contains_key("previous-password")
    );
    // The same value again (even with status lost) changes nothing.
    let mut lost = after.clone();
    lost.status = None;
    assert!(matches!(
        run(&lost, Some(&retired), at(3620)).write,
        SecretWrite::Nothing
    ));
}

#[test]
fn rotate_and_retire_together_rotate_without_an_overlap() {
    let (t, secret) = issue(&overlapping(), at(0));
    let both = retire_annotate(annotate(t, "r1"), "leak-1");
    let p = run(&both, Some(&secret), at(5));
    assert_eq!(p.status.rotations, Some(1));
    assert_eq!(p.status.previous, None);
    assert_eq!(p.status.last_retire_request.as_deref(), Some("leak-1"));
    let (_, rotated) = applied(&both, p, "2");
    assert!(
        !rotated
            .data
            .as_ref()
            .unwrap()
            .contains_key("previous-password")
    );
}

#[test]
fn revocation_removes_the_previous_credential_too() {
    let (t, secret) = issue(&overlapping(), at(0));
    let (mut t, rotated) = applied(&t, run(&t, Some(&secret), at(3600)), "2");
    t.spec.revoked = Some(true);
    let p = run(&t, Some(&rotated), at(3601));
    assert!(matches!(p.write, SecretWrite::Delete { .. }));
    assert_eq!(p.status.previous, None);
}

#[test]
fn an_overlap_not_shorter_than_the_period_is_invalid() {
    let t = token(|s| {
        s.rotation = Some(Rotation {
            period: "1h".into(),
            overlap: Some("60m".into()),
        })
    });
    let p = run(&t, None, at(0));
    assert!(matches!(p.write, SecretWrite::Nothing));
    assert!(
        p.status.conditions[0]
            .message
            .contains("spec.rotation.overlap")
    );
}
