//! Staged credentials: published to the verifiers first, promoted on time or at once.

use super::*;

#[test]
fn a_scheduled_rotation_with_verifiers_is_staged_ahead_and_promoted_on_time() {
    let (t, secret) = issue(&overlapping(), at(0));
    // Steady until the staging instant (delay and lead ahead), which is the wake-up.
    let before = run_served(&t, Some(&secret), 90, None, at(100));
    assert!(matches!(before.write, SecretWrite::Nothing));
    assert_eq!(before.wake, Wake::At(at(3600 - 90) - STAGE_LEAD));
    // Then the next credential is minted into the Secret, the current one unchanged.
    let stage = run_served(&t, Some(&secret), 90, None, at(3500));
    assert!(stage.mints && stage.event.is_none());
    assert_eq!(stage.status.rotations, Some(0));
    assert_eq!(
        stage.status.fingerprint,
        t.status.as_ref().unwrap().fingerprint
    );
    assert_eq!(stage.wake, Wake::At(at(3600)));
    let (t, with_next) = applied(&t, stage, "2");
    assert_eq!(password(&with_next), password(&secret));
    let next = staged(&with_next).expect("a staged credential");
    assert_eq!(next.promote_at, at(3600));
    // Published at 3501: a second look writes nothing, mints nothing, and wakes at the instant.
    let again = run_served(&t, Some(&with_next), 90, Some(3501), at(3502));
    assert!(matches!(again.write, SecretWrite::Nothing) && !again.mints);
    assert_eq!(again.wake, Wake::At(at(3600)));
    // At 3600 the staged credential becomes current (no new mint), the old one previous for
    // the overlap.
    let promote = run_served(&t, Some(&with_next), 90, Some(3501), at(3600));
    assert!(!promote.mints);
    assert_eq!(promote.status.rotations, Some(1));
    assert_eq!(
        promote.event.as_ref().map(|e| e.reason),
        Some(Reason::Rotated)
    );
    assert_eq!(promote.status.issued_at, Some(Time(at(3600))));
    let (_, promoted) = applied(&t, promote, "3");
    assert_eq!(password(&promoted), next.credential.secret_key.as_bytes());
    let data = promoted.data.as_ref().unwrap();
    assert_eq!(data["previous-password"].0, password(&secret));
    assert!(!data.contains_key("next-password") && staged(&promoted).is_none());
}

#[test]
fn a_staged_credential_waits_the_delay_after_publication_or_the_timeout() {
    let (t, secret) = issue(&overlapping(), at(0));
    let manual = annotate(t, "r1");
    let stage = run_served(&manual, Some(&secret), 5, None, at(10));
    assert_eq!(stage.status.last_rotate_request, None);
    let (manual, with_next) = applied(&manual, stage, "2");
    assert_eq!(staged(&with_next).unwrap().promote_at, at(15));
    // Due but not published: wait, until the timeout.
    let waiting = run_served(&manual, Some(&with_next), 5, None, at(16));
    assert!(matches!(waiting.write, SecretWrite::Nothing));
    assert_eq!(waiting.wake, Wake::At(at(15) + PUBLISH_TIMEOUT));
    // Published late, at 14: the servers get their delay from then, not from staging.
    let early = run_served(&manual, Some(&with_next), 5, Some(14), at(16));
    assert!(matches!(early.write, SecretWrite::Nothing));
    assert_eq!(early.wake, Wake::At(at(19)));
    // Published at 11, and due: promoted, and the request is handled.
    let done = run_served(&manual, Some(&with_next), 5, Some(11), at(16));
    assert_eq!(done.status.rotations, Some(1));
    assert_eq!(done.status.last_rotate_request.as_deref(), Some("r1"));
    // Never published: promoted at the timeout all the same.
    let late = run_served(&manual, Some(&with_next), 5, None, at(15) + PUBLISH_TIMEOUT);
    assert_eq!(late.status.rotations, Some(1));
}

#[test]
fn a_leak_or_a_lost_verifier_promotes_a_staged_credential_at_once() {
    let (t, secret) = issue(&overlapping(), at(0));
    let (t, with_next) = applied(
        &t,
        run_served(&annotate(t.clone(), "r1"), Some(&secret), 60, None, at(10)),
        "2",
    );
    let next = staged(&with_next).unwrap();
    // Rotate and retire together: the staged credential replaces the current one now, with no
    // overlap.
    let leak = retire_annotate(annotate(t.clone(), "r2"), "leak-1");
    let p = run_served(&leak, Some(&with_next), 60, None, at(11));
    assert_eq!(p.status.rotations, Some(1));
    assert_eq!(p.status.previous, None);
    assert_eq!(
        p.status.access_key.as_deref(),
        Some(next.credential.access_key.as_str())
    );
    // No verifier accepts the token any more: its rotation is immediate, as without verifiers.
    let alone = run(&annotate(t, "r1"), Some(&with_next), at(11));
    assert_eq!(alone.status.rotations, Some(1));
    assert!(!alone.mints);
}

#[test]
fn a_manual_request_hurries_a_scheduled_staging_and_tampering_drops_it() {
    let (t, secret) = issue(&overlapping(), at(0));
    let (t, with_next) = applied(
        &t,
        run_served(&t.clone(), Some(&secret), 600, None, at(2990)),
        "2",
    );
    assert_eq!(staged(&with_next).unwrap().promote_at, at(3600));
    let hurry = run_served(
        &annotate(t.clone(), "r1"),
        Some(&with_next),
        60,
        None,
        at(3100),
    );
    assert!(!hurry.mints);
    let (_, hurried) = applied(&t, hurry, "3");
    assert_eq!(staged(&hurried).unwrap().promote_at, at(3160));
    // A planted next credential breaks the seal: a re-issue with neither previous nor next.
    let planted = edit(&with_next, "next-password", "planted");
    let p = run_served(&t, Some(&planted), 600, Some(2991), at(3001));
    assert!(p.mints && p.status.previous.is_none());
    let (_, reissued) = applied(&t, p, "4");
    assert!(staged(&reissued).is_none());
}
