//! ApiTokenVerifier against the local control plane, with credentials checked by a real nginx:
//! the harness keeps nginx's `auth_basic_user_file` equal to the verifier's htpasswd output (it
//! stands in for the kubelet, which refreshes a mounted Secret in place), and requests go through it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::nginx::{Nginx, basic};
use common::tokens::*;
use common::verifiers::create_verifier;
use common::{Operator, TestNs, apply_yaml, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokenmint::api::verifier::ApiTokenVerifier;
use tokenmint::api::{ApiToken, Phase};

/// Copies the verifier output `name` (data key `key`) into nginx's htpasswd file whenever it changes,
/// as the kubelet would for a mounted Secret, until dropped.
struct Mirror {
    stop: Arc<AtomicBool>,
}

impl Mirror {
    fn start(ns: &TestNs, name: &str, key: &str, nginx: &Nginx) -> Mirror {
        let stop = Arc::new(AtomicBool::new(false));
        let (secrets, name, key) = (ns.api::<Secret>(), name.to_owned(), key.to_owned());
        let file = nginx.htpasswd_writer();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut last = None;
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(Some(secret)) = secrets.get_opt(&name).await {
                    let data = secret
                        .data
                        .and_then(|d| d.get(&key).cloned())
                        .map(|b| String::from_utf8(b.0).unwrap_or_default());
                    if data != last {
                        file(data.as_deref().unwrap_or_default());
                        last = data;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Mirror { stop }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An operator for `ns`, nginx, the mirror of the output `web-htpasswd` into nginx's file, and the
/// verifier `web` that renders it.
async fn serve(ns: &TestNs) -> (Operator, Nginx, Mirror) {
    let op = Operator::start(ns).await;
    let nginx = Nginx::start();
    let mirror = Mirror::start(ns, "web-htpasswd", "htpasswd", &nginx);
    create_verifier(ns, "web", htpasswd_spec()).await;
    (op, nginx, mirror)
}

/// The user and password of `token`'s current credential, from its Secret.
async fn userpass(ns: &TestNs, token: &str) -> (String, String) {
    let creds = creds(ns, token).await;
    (creds.access_key, creds.password)
}

/// Creates token `name` with `fields` (JSON of its spec), waits until it is Active and nginx lets
/// its credential in; returns the credential's user and password.
async fn let_in(
    ns: &TestNs,
    nginx: &Nginx,
    name: &str,
    fields: serde_json::Value,
) -> (String, String) {
    let creds = issue(ns, name, spec_of(fields)).await;
    wait_status(nginx, &creds.access_key, &creds.password, 200, name).await;
    (creds.access_key, creds.password)
}

/// Waits until nginx answers `expected` for `user:password`.
async fn wait_status(nginx: &Nginx, user: &str, password: &str, expected: u16, what: &str) {
    let header = basic(user, password);
    wait_for(what, Duration::from_secs(20), || async {
        (nginx.status("/protected/ok.txt", Some(&header)) == expected).then_some(())
    })
    .await
}

fn status(nginx: &Nginx, user: &str, password: &str) -> u16 {
    nginx.status("/protected/ok.txt", Some(&basic(user, password)))
}

/// One htpasswd output. The mirror copies it within 50 ms of a change; the publish delay (counted
/// from staging) is 2 s rather than the kubelet's minute, with room for a loaded CI machine.
fn htpasswd_spec() -> serde_json::Value {
    json!({"publishDelay": "2s",
           "outputs": [{"secretName": "web-htpasswd", "format": "htpasswd", "hash": "ssha"}]})
}

#[tokio::test]
async fn nginx_lets_in_the_current_credential_and_refuses_wrong_ones() {
    let ns = TestNs::new("verify-basic").await;
    let (_op, nginx, _mirror) = serve(&ns).await;
    create(
        &ns,
        "app",
        spec_of(json!({"role": "reader", "audiences": ["web"]})),
    )
    .await;
    let t = active(&ns, "app").await;
    let (user, password) = userpass(&ns, "app").await;

    wait_status(&nginx, &user, &password, 200, "the credential let in").await;
    assert_eq!(status(&nginx, &user, "wrong-password-0000000000"), 401);
    assert_eq!(status(&nginx, "nobody", &password), 401);
    assert_eq!(nginx.status("/protected/ok.txt", None), 401);
    let now = token(&ns, "app").await;
    let audiences = &status_of(&now).audiences;
    assert_eq!(audiences.len(), 1);
    assert!(audiences[0].accepted, "{audiences:?}");
    let _ = t;

    // The output holds hashes only, never the secret key; the verifier counts the token.
    let out = data(&secret(&ns, "web-htpasswd").await.unwrap());
    assert!(!out["htpasswd"].contains(&password));
    assert!(out["htpasswd"].starts_with(&format!("{user}:{{SSHA}}")));
    let v = wait_for("verifier status", WAIT, || async {
        let v = ns.api::<ApiTokenVerifier>().get("web").await.ok()?;
        (v.status.as_ref()?.tokens == Some(1)).then_some(v)
    })
    .await;
    let ready = &v.status.unwrap().conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "True")
    );

    // Revocation refuses it.
    set_spec(&ns, "app", json!({"revoked": true}))
        .await
        .unwrap();
    wait_phase(&ns, "app", Phase::Revoked, |_| true).await;
    wait_status(
        &nginx,
        &user,
        &password,
        401,
        "the revoked credential refused",
    )
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn during_an_overlap_both_credentials_are_let_in_and_the_old_one_retires() {
    let ns = TestNs::new("verify-overlap").await;
    let (_op, nginx, _mirror) = serve(&ns).await;
    create(
        &ns,
        "app",
        spec_of(json!({"role": "reader", "audiences": ["web"],
            "rotation": {"period": "1h", "overlap": "8s"}})),
    )
    .await;
    active(&ns, "app").await;
    let (old_user, old_password) = userpass(&ns, "app").await;
    wait_status(
        &nginx,
        &old_user,
        &old_password,
        200,
        "the first credential",
    )
    .await;

    annotate(&ns, "app", "tokenmint.dev/rotate", "r1").await;
    let t = wait_phase(&ns, "app", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    let (new_user, new_password) = userpass(&ns, "app").await;
    wait_status(&nginx, &new_user, &new_password, 200, "the new credential").await;
    assert_eq!(
        status(&nginx, &old_user, &old_password),
        200,
        "the previous credential is still valid during the overlap"
    );
    let retires = status_of(&t).previous.as_ref().unwrap().retires_at.0;
    wait_status(
        &nginx,
        &old_user,
        &old_password,
        401,
        "the old credential retired",
    )
    .await;
    let late = jiff::Timestamp::now().duration_since(retires);
    eprintln!("old credential refused by nginx {late:?} after retiresAt");
    assert_eq!(status(&nginx, &new_user, &new_password), 200);

    // retire-previous refuses the replaced credential at once.
    annotate(&ns, "app", "tokenmint.dev/rotate", "r2").await;
    wait_phase(&ns, "app", Phase::Active, |t| {
        status_of(t).rotations == Some(2)
    })
    .await;
    wait_status(
        &nginx,
        &new_user,
        &new_password,
        200,
        "the second credential, in overlap",
    )
    .await;
    annotate(&ns, "app", "tokenmint.dev/retire-previous", "leak").await;
    wait_status(&nginx, &new_user, &new_password, 401, "retired on request").await;
    ns.cleanup().await;
}

#[tokio::test]
async fn untrusted_namespaces_and_roles_are_never_let_in() {
    let ns = TestNs::new("verify-trust").await;
    let other = TestNs::new("verify-elsewhere").await;
    let _op = Operator::start(&ns).await;
    let _op_other = Operator::start(&other).await;
    let nginx = Nginx::start();
    let _mirror = Mirror::start(&ns, "web-htpasswd", "htpasswd", &nginx);
    create_verifier(
        &ns,
        "web",
        json!({"trust": [{"roles": ["reader"]}], "publishDelay": "2s",
               "outputs": [{"secretName": "web-htpasswd", "format": "htpasswd", "hash": "ssha"}]}),
    )
    .await;
    create(
        &ns,
        "reader",
        spec_of(json!({"role": "reader", "audiences": ["web"]})),
    )
    .await;
    create(
        &ns,
        "admin",
        spec_of(json!({"role": "admin", "audiences": ["web"]})),
    )
    .await;
    let outside = format!("{}/web", ns.name);
    create(
        &other,
        "stranger",
        spec_of(json!({"role": "reader", "audiences": [outside]})),
    )
    .await;
    create(&ns, "bystander", spec("reader")).await;
    for name in ["reader", "admin", "bystander"] {
        active(&ns, name).await;
    }
    active(&other, "stranger").await;
    let (user, password) = userpass(&ns, "reader").await;
    wait_status(&nginx, &user, &password, 200, "the trusted token").await;

    let admin = wait_phase(&ns, "admin", Phase::Active, |t| {
        status_of(t).audiences.first().is_some_and(|a| !a.accepted)
    })
    .await;
    assert_eq!(status_of(&admin).audiences[0].reason, "RoleNotTrusted");
    let (admin_user, admin_password) = userpass(&ns, "admin").await;
    assert_eq!(status(&nginx, &admin_user, &admin_password), 401);
    let (b_user, b_password) = userpass(&ns, "bystander").await;
    assert_eq!(
        status(&nginx, &b_user, &b_password),
        401,
        "no audience, no entry"
    );
    let out = data(&secret(&ns, "web-htpasswd").await.unwrap())["htpasswd"].clone();
    assert_eq!(out.lines().count(), 1, "only the trusted token: {out}");
    wait_for("verifier counts", WAIT, || async {
        let v = ns.api::<ApiTokenVerifier>().get("web").await.ok()?;
        let s = v.status?;
        (s.tokens == Some(1) && s.rejected == Some(1)).then_some(())
    })
    .await;
    ns.cleanup().await;
    other.cleanup().await;
}

/// Issue 19: the server's owner decides which scopes a trusted token may claim. A token that asks
/// for more than its trust entry grants is not accepted (never trimmed), says which scope in its
/// status, and is counted; a tenant that widens its own token's scopes loses its place in the output.
#[tokio::test]
async fn a_token_claiming_scopes_its_trust_entry_does_not_grant_is_not_let_in() {
    let ns = TestNs::new("verify-scopes").await;
    let _op = Operator::start(&ns).await;
    let nginx = Nginx::start();
    let _mirror = Mirror::start(&ns, "web-htpasswd", "htpasswd", &nginx);
    create_verifier(
        &ns,
        "web",
        json!({"trust": [{"roles": ["reader"], "scopes": [
                    {"type": "PIPES:READ", "resources": ["top_pages"]},
                    {"type": "DATASOURCES:READ", "resources": ["events"], "requireFilter": true}]}],
               "publishDelay": "2s",
               "outputs": [{"secretName": "web-htpasswd", "format": "htpasswd", "hash": "ssha"}]}),
    )
    .await;
    let scoped = |scopes: serde_json::Value| {
        spec_of(json!({"role": "reader", "audiences": ["web"], "scopes": scopes}))
    };
    create(
        &ns,
        "granted",
        scoped(json!([{"type": "PIPES:READ", "resource": "top_pages"},
            {"type": "DATASOURCES:READ", "resource": "events", "filter": "tenant_id = 42"}])),
    )
    .await;
    create(
        &ns,
        "widened",
        scoped(json!([{"type": "PIPES:READ", "resource": "top_pages"}, {"type": "ADMIN"}])),
    )
    .await;
    create(
        &ns,
        "unfiltered",
        scoped(json!([{"type": "DATASOURCES:READ", "resource": "events"}])),
    )
    .await;
    for name in ["granted", "widened", "unfiltered"] {
        active(&ns, name).await;
    }
    let (user, password) = userpass(&ns, "granted").await;
    wait_status(&nginx, &user, &password, 200, "the granted token").await;
    for (name, message) in [
        ("widened", "spec.scopes[1] (ADMIN) is not granted"),
        (
            "unfiltered",
            "spec.scopes[0] (DATASOURCES:READ:events) is not granted",
        ),
    ] {
        let t = wait_phase(&ns, name, Phase::Active, |t| {
            status_of(t).audiences.first().is_some_and(|a| !a.accepted)
        })
        .await;
        let audience = &status_of(&t).audiences[0];
        assert_eq!(audience.reason, "ScopeNotTrusted", "{name}");
        let shown = audience.message.as_deref().unwrap_or_default();
        assert!(shown.starts_with(message), "{name}: {shown}");
        let (user, password) = userpass(&ns, name).await;
        assert_eq!(status(&nginx, &user, &password), 401, "{name}");
    }
    wait_for("verifier counts", WAIT, || async {
        let s = ns.api::<ApiTokenVerifier>().get("web").await.ok()?.status?;
        (s.tokens == Some(1) && s.rejected == Some(2)).then_some(())
    })
    .await;

    // The tenant widens its own token: it leaves the output, it does not gain ADMIN there.
    set_spec(
        &ns,
        "granted",
        json!({"scopes": [{"type": "PIPES:READ", "resource": "top_pages"}, {"type": "ADMIN"}]}),
    )
    .await
    .unwrap();
    wait_status(&nginx, &user, &password, 401, "the widened token refused").await;

    // `PIPES` with resource `READ` would read back as the type `PIPES:READ`: refused at apply.
    let ambiguous = "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiToken\nmetadata: {name: twin}\n\
        spec: {role: reader, scopes: [{type: PIPES, resource: READ}]}\n";
    let out = apply_yaml(&ns.name, ambiguous);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reads as part of the type"));
    ns.cleanup().await;
}

#[tokio::test]
async fn the_sha256_map_holds_hashes_of_both_forms_and_nothing_secret() {
    let ns = TestNs::new("verify-map").await;
    let _op = Operator::start(&ns).await;
    create_verifier(
        &ns,
        "api",
        json!({"outputs": [{"secretName": "api-tokens", "format": "sha256-map"}]}),
    )
    .await;
    create(
        &ns,
        "app",
        spec_of(json!({"role": "reader", "audiences": ["api"],
            "scopes": [{"type": "PIPES:READ", "resource": "top_pages"}]})),
    )
    .await;
    active(&ns, "app").await;
    let d = data(&secret(&ns, "app").await.unwrap());
    let map = wait_for("the map", WAIT, || async {
        let s = secret(&ns, "api-tokens").await?;
        let text = data(&s).get("tokens.json")?.clone();
        text.contains(&d["username"]).then_some(text)
    })
    .await;
    let json: serde_json::Value = serde_json::from_str(&map).unwrap();
    let hex = |s: &str| format!("{:x}", Sha256::digest(s.as_bytes()));
    let bearer = &json["tokens"][hex(&d["token"])];
    assert_eq!(bearer["token"], format!("{}/app", ns.name));
    assert_eq!(bearer["role"], "reader");
    assert_eq!(bearer["scopes"], json!(["PIPES:READ:top_pages"]));
    assert_eq!(bearer["previous"], false);
    assert!(json["tokens"][hex(&d["basic"])].is_object());
    for secret_value in [&d["password"], &d["token"], &d["basic"]] {
        assert!(!map.contains(secret_value.as_str()));
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn a_foreign_secret_of_an_output_name_is_left_untouched() {
    let ns = TestNs::new("verify-conflict").await;
    let _op = Operator::start(&ns).await;
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("web-htpasswd".into()),
            ..Default::default()
        },
        string_data: Some([("htpasswd".to_owned(), "someone:else".to_owned())].into()),
        ..Default::default()
    };
    let before = ns
        .api::<Secret>()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    create_verifier(&ns, "web", htpasswd_spec()).await;
    create(
        &ns,
        "app",
        spec_of(json!({"role": "reader", "audiences": ["web"]})),
    )
    .await;
    active(&ns, "app").await;
    wait_for("SecretConflict", WAIT, || async {
        let v = ns.api::<ApiTokenVerifier>().get("web").await.ok()?;
        let ready = v
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.reason == "SecretConflict").then_some(())
    })
    .await;
    let after = secret(&ns, "web-htpasswd").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.data, before.data);
    ns.cleanup().await;
}

#[tokio::test]
async fn bad_verifier_and_audience_input_is_rejected_at_apply() {
    let ns = TestNs::new("verify-bad").await;
    common::ensure_crds();
    let twins = "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiTokenVerifier\nmetadata: {name: twins}\n\
        spec:\n  outputs:\n  - {secretName: same, format: htpasswd}\n  - {secretName: same, format: sha256-map}\n";
    let out = apply_yaml(&ns.name, twins);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secretName"));
    let empty = "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiTokenVerifier\nmetadata: {name: empty}\nspec: {outputs: []}\n";
    assert!(!apply_yaml(&ns.name, empty).status.success());
    let many: Vec<String> = (0..17).map(|i| format!("v{i}")).collect();
    let token = format!(
        "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiToken\nmetadata: {{name: crowd}}\nspec: {{role: r, audiences: {}}}\n",
        serde_json::to_string(&many).unwrap()
    );
    let out = apply_yaml(&ns.name, &token);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("audiences"));
    ns.cleanup().await;
}

/// A client as the issue describes it: re-reads its Secret every 100 ms and switches to the new
/// credential at once, while sending requests through nginx without pause. Across several rotations
/// not one request may be refused: each new credential is staged in the token's Secret, published
/// into the output (and mirrored to nginx's file), and only then handed to the client; the old one
/// stays valid for the overlap.
#[tokio::test]
async fn a_client_that_switches_at_once_is_never_refused_across_rotations() {
    const ROTATIONS: u64 = 4;
    let ns = TestNs::new("verify-seamless").await;
    let (_op, nginx, _mirror) = serve(&ns).await;
    create(
        &ns,
        "app",
        spec_of(json!({"role": "reader", "audiences": ["web"],
            "rotation": {"period": "1h", "overlap": "1m"}})),
    )
    .await;
    active(&ns, "app").await;
    let first = userpass(&ns, "app").await;
    wait_status(&nginx, &first.0, &first.1, 200, "the first credential").await;

    // The client's view of its Secret, refreshed every 100 ms.
    let held = Arc::new(std::sync::Mutex::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (held, stop, ns_secrets) = (held.clone(), stop.clone(), ns.api::<Secret>());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(s)) = ns_secrets.get_opt("app").await {
                    let d = data(&s);
                    *held.lock().unwrap() = (d["username"].clone(), d["password"].clone());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The requests, on a keep-alive connection, from a thread of their own.
    let client = {
        let (held, stop, mut conn) = (held.clone(), stop.clone(), nginx.connect());
        std::thread::spawn(move || {
            let (mut sent, mut refused, mut users) = (0u64, Vec::new(), Vec::<String>::new());
            while !stop.load(Ordering::Relaxed) {
                let (user, password) = held.lock().unwrap().clone();
                let code = conn.get("/protected/ok.txt", Some(&basic(&user, &password)));
                sent += 1;
                if code != 200 {
                    refused.push((code, user.clone()));
                }
                if users.last() != Some(&user) {
                    users.push(user);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (sent, refused, users)
        })
    };

    for n in 1..=ROTATIONS {
        annotate(&ns, "app", "tokenmint.dev/rotate", &format!("r{n}")).await;
        wait_phase(&ns, "app", Phase::Active, |t| {
            status_of(t).rotations == Some(n)
        })
        .await;
        // Let the client switch and run on the new credential a while.
        let now = userpass(&ns, "app").await;
        wait_for("the client switched", WAIT, || async {
            (held.lock().unwrap().0 == now.0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let (sent, refused, users) = client.join().unwrap();
    eprintln!(
        "{sent} requests across {ROTATIONS} rotations, {} refused, {} credentials used",
        refused.len(),
        users.len()
    );
    assert!(
        refused.is_empty(),
        "refused requests: {refused:?}, credentials in order: {users:?}"
    );
    assert_eq!(
        users.len() as u64,
        ROTATIONS + 1,
        "the client used every credential"
    );
    assert!(sent >= 1000, "only {sent} requests");
    ns.cleanup().await;
}

/// Expiry, deletion of the ApiToken and tampering with its Secret each take the credential out of
/// the output, so nginx refuses it; a planted credential is never let in.
#[tokio::test]
async fn expiry_deletion_and_tampering_refuse_the_credential() {
    let ns = TestNs::new("verify-refuse").await;
    let (_op, nginx, _mirror) = serve(&ns).await;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(8);
    create(
        &ns,
        "expiring",
        spec_of(json!({"role": "reader", "audiences": ["web"],
            "expiresAt": jiff::Timestamp::from_second(expires.as_second()).unwrap().to_string()})),
    )
    .await;
    for name in ["deleted", "tampered"] {
        create(
            &ns,
            name,
            spec_of(json!({"role": "reader", "audiences": ["web"]})),
        )
        .await;
    }
    let mut creds = std::collections::BTreeMap::new();
    for name in ["expiring", "deleted", "tampered"] {
        active(&ns, name).await;
        let (user, password) = userpass(&ns, name).await;
        wait_status(&nginx, &user, &password, 200, name).await;
        creds.insert(name, (user, password));
    }

    // Deletion: the ApiToken goes, its credential with it.
    ns.api::<ApiToken>()
        .delete("deleted", &Default::default())
        .await
        .unwrap();
    let (user, password) = &creds["deleted"];
    wait_status(
        &nginx,
        user,
        password,
        401,
        "the deleted token's credential refused",
    )
    .await;

    // Tampering: a password written into the Secret by someone else is never let in; the operator
    // re-issues, and the credential it replaced (taken as compromised) is refused too.
    let (user, password) = &creds["tampered"];
    let planted = "planted-by-someone-else-0000000000";
    ns.api::<Secret>()
        .patch(
            "tampered",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"password": planted}})),
        )
        .await
        .unwrap();
    let t = wait_phase(&ns, "tampered", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    let (new_user, new_password) = userpass(&ns, "tampered").await;
    assert_ne!(&new_user, user);
    wait_status(
        &nginx,
        &new_user,
        &new_password,
        200,
        "the re-issued credential",
    )
    .await;
    assert_eq!(
        status(&nginx, user, password),
        401,
        "the replaced credential"
    );
    assert_eq!(status(&nginx, user, planted), 401, "the planted password");
    assert!(
        status_of(&t).previous.is_none(),
        "a re-issue has no overlap"
    );

    // Expiry: refused once expiresAt has passed.
    let (user, password) = &creds["expiring"];
    wait_phase(&ns, "expiring", Phase::Expired, |_| true).await;
    wait_status(
        &nginx,
        user,
        password,
        401,
        "the expired credential refused",
    )
    .await;
    let late = jiff::Timestamp::now().duration_since(expires);
    eprintln!("expired credential refused by nginx {late:?} after expiresAt");
    ns.cleanup().await;
}

/// What only the operator can judge ends as a condition naming the field; nothing is written.
#[tokio::test]
async fn bad_references_end_as_conditions_naming_the_field() {
    let ns = TestNs::new("verify-badref").await;
    let _op = Operator::start(&ns).await;
    // A token that names no existing verifier says so in its status and stays Active.
    create(
        &ns,
        "lost",
        spec_of(json!({"role": "reader", "audiences": ["nowhere"]})),
    )
    .await;
    let lost = wait_phase(&ns, "lost", Phase::Active, |t| {
        !status_of(t).audiences.is_empty()
    })
    .await;
    let audience = &status_of(&lost).audiences[0];
    assert_eq!(
        (audience.accepted, audience.reason.as_str()),
        (false, "VerifierNotFound")
    );
    // An output that would overwrite a token's Secret: the verifier refuses, the Secret stays.
    let before = secret(&ns, "lost").await.unwrap();
    create_verifier(
        &ns,
        "greedy",
        json!({"outputs": [{"secretName": "lost", "format": "htpasswd"}]}),
    )
    .await;
    let ready = wait_for("verifier InvalidSpec", WAIT, || async {
        let v = ns.api::<ApiTokenVerifier>().get("greedy").await.ok()?;
        let c = v
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.reason == "InvalidSpec").then_some(c)
    })
    .await;
    assert!(
        ready.message.contains("spec.outputs[0].secretName"),
        "{}",
        ready.message
    );
    let after = secret(&ns, "lost").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    // An overlap not shorter than the period is the token's InvalidSpec; nothing is minted.
    create(
        &ns,
        "overlong",
        spec_of(json!({"role": "reader", "rotation": {"period": "1h", "overlap": "1h"}})),
    )
    .await;
    let t = wait_phase(&ns, "overlong", Phase::Failed, |_| true).await;
    let c = &status_of(&t).conditions[0];
    assert_eq!(c.reason, "InvalidSpec");
    assert!(c.message.contains("rotation.overlap"), "{}", c.message);
    assert!(secret(&ns, "overlong").await.is_none());
    ns.cleanup().await;
}

/// Issue 19: a tenant who may edit its own Secret strips the seal and plants a staged credential
/// (promoted a second later) and a previous one (retiring in the year 8999), each consistent in all
/// its forms. Neither may reach the verifier's output, not even for one render: the operator takes
/// the Secret as tampered with and re-issues, with a Warning, and nginx lets in only the new credential.
#[tokio::test]
async fn planted_staged_and_previous_credentials_under_a_stripped_seal_never_reach_an_output() {
    use tokenmint::core::credential::{Credential, fingerprint_of};

    let ns = TestNs::new("verify-planted").await;
    let (_op, nginx, _mirror) = serve(&ns).await;
    let fields = json!({"role": "reader", "audiences": ["web"],
        "rotation": {"period": "1h", "overlap": "10m"}});
    let (user, password) = let_in(&ns, &nginx, "tenant", fields).await;

    // Every version of the output from here on.
    let (versions, recorder) = record_output(&ns, "web-htpasswd", "htpasswd");
    wait_for("the output recorded", Duration::from_secs(20), || async {
        (!versions.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    let planted = |access_key: &str| Credential {
        prefix: "tm_".into(),
        access_key: access_key.into(),
        secret_key: "plantedplantedplantedplanted0000".into(),
    };
    let (next, previous) = (planted("PLANTEDNEXT00001"), planted("PLANTEDPREV00001"));
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let soon = jiff::Timestamp::from_second(soon.as_second())
        .unwrap()
        .to_string();
    ns.api::<Secret>()
        .patch(
            "tenant",
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "metadata": {"annotations": {
                    "tokenmint.dev/seal": null,
                    "tokenmint.dev/seal-key-id": null,
                    "tokenmint.dev/next-fingerprint": fingerprint_of(&next.bearer()),
                    "tokenmint.dev/next-promote-at": soon,
                    "tokenmint.dev/previous-fingerprint": fingerprint_of(&previous.bearer()),
                    "tokenmint.dev/previous-retires-at": "8999-01-01T00:00:00Z",
                }},
                "stringData": {
                    "next-username": next.access_key, "next-password": next.secret_key,
                    "next-token": next.bearer(),
                    "previous-username": previous.access_key,
                    "previous-password": previous.secret_key, "previous-token": previous.bearer(),
                },
            })),
        )
        .await
        .unwrap();

    let t = wait_phase(&ns, "tenant", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    wait_event(&ns, "tenant", "Rotated", "Warning").await;
    assert_eq!(
        (&status_of(&t).previous, &status_of(&t).next),
        (&None, &None)
    );
    let (new_user, new_password) = userpass(&ns, "tenant").await;
    assert_ne!(new_user, user);
    wait_status(
        &nginx,
        &new_user,
        &new_password,
        200,
        "the re-issued credential",
    )
    .await;
    for (who, user, password) in [
        ("the replaced credential", &user, &password),
        (
            "the planted staged credential",
            &next.access_key,
            &next.secret_key,
        ),
        (
            "the planted previous credential",
            &previous.access_key,
            &previous.secret_key,
        ),
    ] {
        assert_eq!(status(&nginx, user, password), 401, "{who}");
    }
    // The output as the re-issue left it was recorded too; no version ever held a planted key.
    wait_for("the re-issue recorded", Duration::from_secs(20), || async {
        let versions = versions.lock().unwrap();
        versions
            .last()
            .is_some_and(|v| v.contains(&new_user))
            .then_some(())
    })
    .await;
    recorder.abort();
    let versions = versions.lock().unwrap().clone();
    for version in &versions {
        assert!(
            !version.contains("PLANTED"),
            "a planted credential reached the output in one of {} versions",
            versions.len()
        );
    }
    ns.cleanup().await;
}

/// Records every version of the data key `key` of output `name`, as its watch delivers them, until
/// the task is aborted.
fn record_output(
    ns: &TestNs,
    name: &str,
    key: &str,
) -> (
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let versions = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (recorded, secrets) = (versions.clone(), ns.api::<Secret>());
    let (config, key) = (
        watcher::Config::default().fields(&format!("metadata.name={name}")),
        key.to_owned(),
    );
    let task = tokio::spawn(async move {
        let mut outputs = std::pin::pin!(watcher(secrets, config).applied_objects());
        while let Some(Ok(secret)) = outputs.next().await {
            let data = secret.data.unwrap_or_default();
            let text = data
                .get(&key)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            recorded.lock().unwrap().push(text.unwrap_or_default());
        }
    });
    (versions, task)
}

/// Issue 19: replacing the seal key (the documented procedure: delete its Secret, restart the
/// operator) under live traffic refuses no request and never writes an output missing a valid
/// credential: under the new key each Secret is believed where its token's status vouches for it,
/// in the outputs as in the planner, until it is re-sealed.
#[tokio::test]
async fn replacing_the_seal_key_under_traffic_refuses_no_request() {
    let ns = TestNs::new("verify-rekey").await;
    let (mut op, nginx, _mirror) = serve(&ns).await;
    let names = ["a", "b", "c"];
    let mut users = Vec::new();
    for name in names {
        let fields = json!({"role": "reader", "audiences": ["web"]});
        users.push(let_in(&ns, &nginx, name, fields).await);
    }
    let (versions, recorder) = record_output(&ns, "web-htpasswd", "htpasswd");
    wait_for("the output recorded", WAIT, || async {
        (!versions.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let old_id = common::tokens::secret(&ns, "a")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap()["tokenmint.dev/seal-key-id"]
        .clone();

    // A client for every token, without pause, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, users, addr) = (stop.clone(), users.clone(), nginx.addr());
        tokio::task::spawn_blocking(move || {
            let (mut sent, mut refused) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                for (user, password) in &users {
                    let header = basic(user, password);
                    let status = common::nginx::Connection::open(addr)
                        .get("/protected/ok.txt", Some(&header));
                    sent += 1;
                    refused += u32::from(status != 200);
                }
            }
            (sent, refused)
        })
    };

    op.stop();
    ns.api::<Secret>()
        .delete("tokenmint-seal-key", &Default::default())
        .await
        .unwrap();
    op.restart().await;
    for name in names {
        wait_for("re-sealed under the new key", WAIT, || async {
            let s = common::tokens::secret(&ns, name).await?;
            let id = s
                .metadata
                .annotations?
                .get("tokenmint.dev/seal-key-id")
                .cloned();
            (id.as_deref() != Some(old_id.as_str())).then_some(())
        })
        .await;
    }
    // Barrier: the operator looked at every token since (its status is unchanged: nothing minted).
    for name in names {
        barrier(&op, &ns, name).await;
        assert_eq!(
            status_of(&token(&ns, name).await).rotations,
            Some(0),
            "{name}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, refused) = client.await.unwrap();
    recorder.abort();
    eprintln!("seal key replaced under traffic: {sent} requests, {refused} refused");
    assert!(sent > 0);
    assert_eq!(
        refused, 0,
        "requests refused while the seal key was replaced"
    );
    let versions = versions.lock().unwrap().clone();
    for version in &versions {
        for (user, _) in &users {
            assert!(
                version.lines().any(|l| l.starts_with(&format!("{user}:"))),
                "an output version of {} missed a valid credential",
                versions.len()
            );
        }
    }
    ns.cleanup().await;
}

/// Issue 19: an operator restart writes nothing to an output whose content did not change, and
/// never an output missing a credential still valid (a render from caches not yet listed once did
/// both). Barrier: a token created after the restart reaches the output; that is its only write.
#[tokio::test]
async fn an_operator_restart_rewrites_no_output() {
    let ns = TestNs::new("verify-restart").await;
    let (mut op, nginx, _mirror) = serve(&ns).await;
    let mut users = Vec::new();
    for name in ["a", "b"] {
        let fields = json!({"role": "reader", "audiences": ["web"]});
        users.push(let_in(&ns, &nginx, name, fields).await.0);
    }
    let (versions, recorder) = record_output(&ns, "web-htpasswd", "htpasswd");
    wait_for("the output recorded", WAIT, || async {
        (!versions.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    op.restart().await;
    let fields = json!({"role": "reader", "audiences": ["web"]});
    let (c_user, _) = let_in(&ns, &nginx, "c", fields).await;
    wait_for("its write recorded", WAIT, || async {
        let v = versions.lock().unwrap();
        v.last()
            .is_some_and(|last| last.contains(&c_user))
            .then_some(())
    })
    .await;
    recorder.abort();
    let versions = versions.lock().unwrap().clone();
    assert_eq!(
        versions.len(),
        2,
        "the output before the restart, then only the write that added c: {} versions",
        versions.len()
    );
    for version in &versions {
        for user in &users {
            assert!(
                version.contains(&format!("{user}:")),
                "a version missed a valid credential"
            );
        }
    }
    ns.cleanup().await;
}

/// Issue 19: a token whose scopes take more than its share of an output is left out alone: its
/// own status says so, the verifier counts it, every other token stays in; trimmed, it is back.
#[tokio::test]
async fn a_token_over_its_byte_budget_is_left_out_alone_and_says_so() {
    let ns = TestNs::new("verify-budget").await;
    let (_op, nginx, _mirror) = serve(&ns).await;
    let filter = "tenant_id = 42 AND ".repeat(50) + "1 = 1";
    let scopes = |n: usize| -> serde_json::Value {
        (0..n)
            .map(|i| json!({"type": "DATASOURCES:READ", "resource": format!("t{i}"), "filter": filter}))
            .collect()
    };
    create(
        &ns,
        "modest",
        spec_of(json!({"role": "reader", "audiences": ["web"]})),
    )
    .await;
    create(
        &ns,
        "greedy",
        spec_of(json!({"role": "reader", "audiences": ["web"], "scopes": scopes(3)})),
    )
    .await;
    for name in ["modest", "greedy"] {
        active(&ns, name).await;
    }
    let (user, password) = userpass(&ns, "modest").await;
    wait_status(&nginx, &user, &password, 200, "the modest token").await;
    let greedy = wait_phase(&ns, "greedy", Phase::Active, |t| {
        status_of(t)
            .audiences
            .first()
            .is_some_and(|a| a.reason == "Excluded")
    })
    .await;
    let audience = &status_of(&greedy).audiences[0];
    assert!(!audience.accepted);
    assert!(
        audience
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("OverBudget"),
        "{audience:?}"
    );
    let (g_user, g_password) = userpass(&ns, "greedy").await;
    assert_eq!(status(&nginx, &g_user, &g_password), 401);
    wait_for("the verifier counts it", WAIT, || async {
        let s = ns.api::<ApiTokenVerifier>().get("web").await.ok()?.status?;
        (s.tokens == Some(1) && s.excluded == Some(1)).then_some(())
    })
    .await;

    set_spec(&ns, "greedy", json!({"scopes": scopes(1)}))
        .await
        .unwrap();
    wait_status(
        &nginx,
        &g_user,
        &g_password,
        200,
        "the trimmed token let in",
    )
    .await;
    wait_phase(&ns, "greedy", Phase::Active, |t| {
        status_of(t).audiences.first().is_some_and(|a| a.accepted)
    })
    .await;
    ns.cleanup().await;
}
