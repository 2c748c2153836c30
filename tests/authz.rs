//! `tokenmint authz` behind a real nginx (`auth_request`), serving a real verifier's `sha256-map`
//! output written by the real operator: what reaches the upstream, which credentials are refused and
//! when, and how it fails closed. The file-mode and bad-input tests need nginx but no cluster.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::authz::{APP, Authz, OPEN, TOP_PAGES, rendered_map, site, upstream_saw};
use common::nginx::{Connection, Nginx, Reply};
use common::tokens::*;
use common::verifiers::create_map_verifier;
use common::{Operator, TestNs, free_addr, wait_for};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokenmint::api::{ApiToken, Phase};
use tokenmint::core::credential::Credential;
use tokenmint::core::verifier::render::{TokenCredentials, TokenRef};

const VERIFIER: &str = "api";
const OUTPUT: &str = "api-tokens";

/// A cluster-backed setup: the operator, verifier `api` with output `api-tokens`, authz on it and
/// nginx in front.
struct Gateway {
    ns: TestNs,
    op: Operator,
    authz: Authz,
    nginx: Nginx,
}

impl Gateway {
    async fn start(prefix: &str) -> Gateway {
        let ns = TestNs::new(prefix).await;
        let op = Operator::start(&ns).await;
        create_map_verifier(&ns, VERIFIER, OUTPUT).await;
        let authz = Authz::for_output(&ns.name, VERIFIER, OUTPUT).await;
        let nginx = Nginx::start_with(&site(authz.addr(), free_addr()));
        Gateway {
            ns,
            op,
            authz,
            nginx,
        }
    }

    /// Creates token `name` naming the verifier, with `fields` added to its spec, and waits until it
    /// is Active.
    async fn token(&self, name: &str, fields: serde_json::Value) -> Creds {
        let mut spec = json!({"role": "reader", "audiences": [VERIFIER]});
        spec.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        issue(&self.ns, name, spec_of(spec)).await
    }

    /// Waits until nginx answers `status` at `path` for `authorization`; returns when it first did.
    async fn wait_status(
        &self,
        path: &str,
        authorization: &str,
        status: u16,
        what: &str,
    ) -> Instant {
        wait_until(&self.nginx, path, authorization, status, what).await
    }

    async fn cleanup(self, secrets: &[String]) {
        self.authz.assert_never_shows(secrets);
        drop(self.op);
        self.ns.cleanup().await;
    }
}

/// Polls nginx every 10 ms (fast enough to time a refusal) until `path` answers `status`.
async fn wait_until(
    nginx: &Nginx,
    path: &str,
    authorization: &str,
    status: u16,
    what: &str,
) -> Instant {
    let poll = async {
        let mut connection = nginx.connect();
        loop {
            if connection.get(path, Some(authorization)) == status {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, poll)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what} ({status} at {path})"))
}

fn get(nginx: &Nginx, path: &str, headers: &str) -> Reply {
    nginx.connect().request(path, headers.as_bytes())
}

fn auth(value: &str) -> String {
    format!("Authorization: {value}\r\n")
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn bearer_and_basic_are_let_in_and_the_upstream_gets_token_role_scopes_and_filter() {
    let gw = Gateway::start("authz-headers").await;
    let app = gw
        .token(
            "app",
            json!({"scopes": [
                {"type": "PIPES:READ", "resource": "top_pages", "filter": "tenant_id = 42"},
                {"type": "DATASOURCES:APPEND", "resource": "events"}]}),
        )
        .await;
    gw.wait_status(APP, &app.bearer(), 200, "the Bearer credential let in")
        .await;
    let token = format!("{}/app", gw.ns.name);
    let first_scope = "PIPES:READ:top_pages:tenant_id = 42";
    for credential in [app.bearer(), app.basic()] {
        let reply = get(&gw.nginx, APP, &auth(&credential));
        assert_eq!(reply.status, 200, "{}", reply.body);
        // nginx 1.22's $upstream_http_ variables hold the first of repeated headers.
        assert_eq!(
            upstream_saw(&reply),
            pairs(&[
                ("token", &token),
                ("role", "reader"),
                ("scope", first_scope)
            ])
        );
        let reply = get(&gw.nginx, TOP_PAGES, &auth(&credential));
        assert_eq!(reply.status, 200);
        assert_eq!(
            upstream_saw(&reply),
            pairs(&[
                ("token", &token),
                ("role", "reader"),
                ("scope", first_scope),
                ("filter", "tenant_id = 42")
            ])
        );
    }

    // What a client sends under those names never reaches the upstream.
    let spoofed = format!(
        "{}X-Tokenmint-Role: admin\r\nX-Tokenmint-Filter: 1 = 1\r\nX-Tokenmint-Token: x/y\r\n",
        auth(&app.bearer())
    );
    assert_eq!(
        upstream_saw(&get(&gw.nginx, APP, &spoofed)),
        pairs(&[
            ("token", &token),
            ("role", "reader"),
            ("scope", first_scope)
        ])
    );
    assert_eq!(
        get(&gw.nginx, APP, "X-Tokenmint-Role: admin\r\n").status,
        401
    );

    // authz itself answers one X-Tokenmint-Scope per scope.
    let direct = gw.authz.verify("", Some(&app.bearer()));
    assert_eq!(direct.status, 200);
    assert_eq!(
        direct.all("x-tokenmint-scope"),
        [first_scope, "DATASOURCES:APPEND:events"]
    );
    assert_eq!(direct.header("x-tokenmint-filter"), None);

    // Missing and unknown credentials: 401 with a challenge, and nothing of the token.
    let wrong = format!("Bearer {}x", app.bearer);
    for headers in [String::new(), auth(&wrong)] {
        let reply = get(&gw.nginx, APP, &headers);
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer realm=")),
            "{:?}",
            reply.headers
        );
        assert!(
            reply
                .headers
                .iter()
                .all(|(n, _)| !n.starts_with("x-tokenmint"))
        );
    }
    assert_eq!(get(&gw.nginx, OPEN, "").status, 200, "the open location");
    assert!(
        gw.authz
            .metric(r#"tokenmint_authz_checks_total{result="allowed",reason="ok"}"#)
            >= 6.0
    );
    assert!(
        gw.authz
            .metric(r#"tokenmint_authz_checks_total{result="unauthorized",reason="unknown"}"#)
            >= 1.0
    );
    gw.cleanup(&app.secrets()).await;
}

#[tokio::test]
async fn a_scope_protected_location_lets_in_only_tokens_whose_scope_covers_it() {
    let gw = Gateway::start("authz-scopes").await;
    let exact = gw
        .token(
            "exact",
            json!({"scopes": [{"type": "PIPES:READ", "resource": "top_pages"}]}),
        )
        .await;
    let whole_type = gw
        .token("whole-type", json!({"scopes": [{"type": "PIPES:READ"}]}))
        .await;
    let other = gw
        .token(
            "other",
            json!({"scopes": [{"type": "PIPES:READ", "resource": "other_pipe"},
                              {"type": "PIPES:DROP", "resource": "top_pages"}]}),
        )
        .await;
    let none = gw.token("none", json!({})).await;
    for creds in [&exact, &whole_type, &other, &none] {
        gw.wait_status(
            APP,
            &creds.bearer(),
            200,
            "every token let in where no scope is asked",
        )
        .await;
    }
    for (creds, expected) in [
        (&exact, 200),
        (&whole_type, 200),
        (&other, 403),
        (&none, 403),
    ] {
        for credential in [creds.bearer(), creds.basic()] {
            let reply = get(&gw.nginx, TOP_PAGES, &auth(&credential));
            assert_eq!(reply.status, expected, "{}", creds.access_key.len());
            if expected == 403 {
                assert!(
                    reply
                        .headers
                        .iter()
                        .all(|(n, _)| !n.starts_with("x-tokenmint"))
                );
            }
        }
    }
    let whole = upstream_saw(&get(&gw.nginx, TOP_PAGES, &auth(&whole_type.bearer())));
    assert!(
        whole.contains(&("scope".into(), "PIPES:READ".into())),
        "{whole:?}"
    );
    let secrets: Vec<String> = [exact, whole_type, other, none]
        .iter()
        .flat_map(Creds::secrets)
        .collect();
    gw.cleanup(&secrets).await;
}

#[tokio::test]
async fn revoked_deleted_and_tampered_credentials_are_refused() {
    let gw = Gateway::start("authz-refuse").await;
    let revoked = gw.token("revoked", json!({})).await;
    let deleted = gw.token("deleted", json!({})).await;
    let tampered = gw.token("tampered", json!({})).await;
    let bystander = gw.token("bystander", json!({})).await;
    for creds in [&revoked, &deleted, &tampered, &bystander] {
        gw.wait_status(APP, &creds.bearer(), 200, "let in").await;
    }

    let asked = Instant::now();
    set_spec(&gw.ns, "revoked", json!({"revoked": true}))
        .await
        .unwrap();
    let refused = gw
        .wait_status(
            APP,
            &revoked.bearer(),
            401,
            "the revoked credential refused",
        )
        .await;
    eprintln!(
        "revocation refused at nginx {:?} after the patch",
        refused - asked
    );
    assert_eq!(get(&gw.nginx, APP, &auth(&revoked.basic())).status, 401);
    wait_phase(&gw.ns, "revoked", Phase::Revoked, |_| true).await;

    gw.ns
        .api::<ApiToken>()
        .delete("deleted", &DeleteParams::default())
        .await
        .unwrap();
    gw.wait_status(
        APP,
        &deleted.bearer(),
        401,
        "the deleted token's credential refused",
    )
    .await;
    assert_eq!(get(&gw.nginx, APP, &auth(&deleted.basic())).status, 401);

    // Someone edits the token's Secret: the operator replaces the credential, and neither the old
    // one nor the edited-in password is let in.
    let patch = json!({"stringData": {"password": "hunter2hunter2hunter2hunter2"}});
    gw.ns
        .api::<Secret>()
        .patch("tampered", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_phase(&gw.ns, "tampered", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    gw.wait_status(
        APP,
        &tampered.bearer(),
        401,
        "the tampered token's old credential refused",
    )
    .await;
    let edited = common::nginx::basic(&tampered.access_key, "hunter2hunter2hunter2hunter2");
    assert_eq!(get(&gw.nginx, APP, &auth(&edited)).status, 401);
    let replaced = creds(&gw.ns, "tampered").await;
    assert_ne!(replaced.bearer, tampered.bearer);
    gw.wait_status(APP, &replaced.bearer(), 200, "the replacement credential")
        .await;

    assert_eq!(get(&gw.nginx, APP, &auth(&bystander.bearer())).status, 200);
    let secrets: Vec<String> = [revoked, deleted, tampered, bystander, replaced]
        .iter()
        .flat_map(Creds::secrets)
        .collect();
    gw.cleanup(&secrets).await;
}

#[tokio::test]
async fn expired_and_retired_credentials_are_refused_from_their_instant() {
    let gw = Gateway::start("authz-time").await;
    let expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 8).unwrap();
    let brief = gw
        .token("brief", json!({"expiresAt": expires.to_string()}))
        .await;
    let rotating = gw
        .token(
            "rotating",
            json!({"rotation": {"period": "1h", "overlap": "4s"}}),
        )
        .await;
    gw.wait_status(APP, &brief.bearer(), 200, "let in before expiry")
        .await;
    gw.wait_status(APP, &rotating.bearer(), 200, "let in").await;

    annotate(&gw.ns, "rotating", "tokenmint.dev/rotate", "r1").await;
    let t = wait_phase(&gw.ns, "rotating", Phase::Active, |t| {
        status_of(t).rotations == Some(1)
    })
    .await;
    let retires = status_of(&t).previous.as_ref().unwrap().retires_at.0;
    let second = creds(&gw.ns, "rotating").await;
    gw.wait_status(APP, &second.bearer(), 200, "the new credential")
        .await;
    assert_eq!(
        get(&gw.nginx, APP, &auth(&rotating.bearer())).status,
        200,
        "the previous credential is let in during the overlap"
    );

    let mut instants = [
        (&brief, expires, "expiry"),
        (&rotating, retires, "retirement"),
    ];
    instants.sort_by_key(|(_, at, _)| *at);
    for (creds, at, what) in instants {
        assert!(
            jiff::Timestamp::now() < at,
            "{what}: watched from before the instant"
        );
        gw.wait_status(APP, &creds.bearer(), 401, what).await;
        let late = jiff::Timestamp::now().duration_since(at);
        eprintln!("{what}: refused at nginx {late:?} after the instant");
        // authz checks notAfter itself, so the refusal does not wait for the map to be rewritten.
        assert!(
            late.as_millis() >= 0 && late.as_millis() < 1000,
            "{what}: {late:?}"
        );
        assert_eq!(get(&gw.nginx, APP, &auth(&creds.basic())).status, 401);
    }

    // retire-previous refuses the replaced credential at once.
    annotate(&gw.ns, "rotating", "tokenmint.dev/rotate", "r2").await;
    wait_phase(&gw.ns, "rotating", Phase::Active, |t| {
        status_of(t).rotations == Some(2)
    })
    .await;
    let third = creds(&gw.ns, "rotating").await;
    gw.wait_status(APP, &third.bearer(), 200, "the third credential")
        .await;
    annotate(&gw.ns, "rotating", "tokenmint.dev/retire-previous", "leak").await;
    gw.wait_status(
        APP,
        &second.bearer(),
        401,
        "the second credential retired on request",
    )
    .await;
    assert_eq!(get(&gw.nginx, APP, &auth(&third.bearer())).status, 200);
    let secrets: Vec<String> = [brief, rotating, second, third]
        .iter()
        .flat_map(Creds::secrets)
        .collect();
    gw.cleanup(&secrets).await;
}

#[tokio::test]
async fn authz_waits_for_its_output_and_fails_closed_when_it_is_malformed_or_deleted() {
    let ns = TestNs::new("authz-closed").await;
    let mut op = Operator::start(&ns).await;
    let authz = Authz::for_output(&ns.name, VERIFIER, OUTPUT).await;
    let nginx = Nginx::start_with(&site(authz.addr(), free_addr()));
    create(
        &ns,
        "app",
        spec_of(json!({"role": "reader", "audiences": [VERIFIER]})),
    )
    .await;
    active(&ns, "app").await;
    let app = creds(&ns, "app").await;
    assert_eq!(authz.readyz(), 503, "no output yet");
    // authz answers 503; nginx makes any other status than 401/403 of auth_request a 500.
    assert_eq!(authz.verify("", Some(&app.bearer())).status, 503);
    assert_eq!(get(&nginx, APP, &auth(&app.bearer())).status, 500);

    create_map_verifier(&ns, VERIFIER, OUTPUT).await;
    authz
        .wait_readyz(200, "ready once the output appears")
        .await;
    wait_until(&nginx, APP, &app.bearer(), 200, "let in").await;

    // Without the operator nothing rewrites the output: what the test writes stays.
    op.stop();
    let secrets = ns.api::<Secret>();
    let good = secrets.get(OUTPUT).await.unwrap().data.unwrap()["tokens.json"].clone();
    let write = |data: &[u8]| {
        let patch = json!({"data": {"tokens.json": ByteString(data.to_vec())}});
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(OUTPUT, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    for (bad, what) in [
        (&b"{\"tokens\": {"[..], "truncated JSON"),
        (b"{\"tokens\":{},\"version\":2}\n", "another version"),
    ] {
        write(bad).await;
        authz.wait_readyz(503, what).await;
        assert_eq!(get(&nginx, APP, &auth(&app.bearer())).status, 500, "{what}");
        write(&good.0).await;
        authz.wait_readyz(200, "the good map again").await;
        assert_eq!(get(&nginx, APP, &auth(&app.bearer())).status, 200);
    }

    secrets
        .delete(OUTPUT, &DeleteParams::default())
        .await
        .unwrap();
    authz
        .wait_readyz(503, "not ready once the output is deleted")
        .await;
    assert_eq!(authz.verify("", Some(&app.bearer())).status, 503);
    assert_eq!(get(&nginx, APP, &auth(&app.bearer())).status, 500);
    assert!(
        authz.metric(r#"tokenmint_authz_checks_total{result="unavailable",reason="not_ready"}"#)
            >= 3.0
    );
    authz.assert_never_shows(&app.secrets());
    ns.cleanup().await;
}

/// A TCP proxy to the API server that can go silent: while frozen it forwards nothing and closes
/// nothing, as a NAT or load balancer that dropped the connection's state does.
struct FreezableProxy {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    async fn to(upstream: String) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Self::pump(client_read, server_write, watch.clone()));
                tokio::spawn(Self::pump(server_read, client_write, watch.clone()));
            }
        });
        FreezableProxy { addr, frozen, task }
    }

    /// Copies `from` to `to`; while frozen, holds what it read and waits.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let Ok(n) = from.read(&mut buffer).await else {
                return;
            };
            if n == 0 || frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection to the API server that goes silent without a reset (no error, no close) must not
/// keep authz serving: it refuses within `--max-stale`, and serves again once the path is back.
#[tokio::test]
async fn a_silent_connection_to_the_api_server_ends_in_refusal_within_max_stale() {
    const MAX_STALE: Duration = Duration::from_secs(6);
    let ns = TestNs::new("authz-silent").await;
    let op = Operator::start(&ns).await;
    create_map_verifier(&ns, VERIFIER, OUTPUT).await;
    create(
        &ns,
        "app",
        spec_of(json!({"role": "reader", "audiences": [VERIFIER]})),
    )
    .await;
    active(&ns, "app").await;
    let app = creds(&ns, "app").await;

    let (server, _) = common::admin_server_and_ca();
    let upstream = server.trim_start_matches("https://").to_owned();
    let proxy = FreezableProxy::to(upstream.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("proxied.kubeconfig");
    let admin = std::fs::read_to_string(common::kubeconfig_path()).unwrap();
    std::fs::write(
        &kubeconfig,
        admin.replace(&upstream, &proxy.addr.to_string()),
    )
    .unwrap();
    let verifier = format!("{}/{VERIFIER}", ns.name);
    let max_stale = format!("{}s", MAX_STALE.as_secs());
    let authz = Authz::start(
        &[
            "--verifier",
            &verifier,
            "--output",
            OUTPUT,
            "--max-stale",
            &max_stale,
        ],
        &kubeconfig,
    )
    .await;
    wait_for("let in through the proxy", WAIT, || async {
        (authz.verify("", Some(&app.bearer())).status == 200).then_some(())
    })
    .await;

    proxy.freeze(true);
    let frozen_at = Instant::now();
    wait_for(
        "refused while the API server is silent",
        MAX_STALE * 3,
        || async { (authz.verify("", Some(&app.bearer())).status == 503).then_some(()) },
    )
    .await;
    let refused_after = frozen_at.elapsed();
    eprintln!(
        "authz refused {refused_after:?} after its connection went silent (max-stale {MAX_STALE:?})"
    );
    assert_eq!(authz.readyz(), 503);
    assert!(
        authz.metrics().contains("tokenmint_authz_checks_total"),
        "still answering /metrics"
    );

    proxy.freeze(false);
    wait_for("let in again once the path is back", WAIT * 2, || async {
        (authz.verify("", Some(&app.bearer())).status == 200).then_some(())
    })
    .await;
    authz.assert_never_shows(&app.secrets());
    drop(op);
    ns.cleanup().await;
}

// ---------------------------------------------------------------- no cluster

fn issued(name: &str, access_key: &str, secret_key: &str) -> TokenCredentials {
    TokenCredentials {
        token: TokenRef {
            namespace: "data".into(),
            name: name.into(),
        },
        role: "reader".into(),
        scopes: vec!["PIPES:READ:top_pages".into()],
        expires_at: None,
        current: Credential {
            prefix: "tm-".into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        },
        previous: None,
        next: None,
    }
}

/// Writes `data` the way the kubelet updates a Secret volume: a new timestamped directory, then the
/// `..data` symlink swapped to it in one rename; `tokens.json` links through `..data`.
fn kubelet_write(volume: &Path, version: u32, data: &[u8]) {
    let dir = volume.join(format!("..2026_01_01_00_00_{version:02}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("tokens.json"), data).unwrap();
    let next = volume.join("..data_tmp");
    std::os::unix::fs::symlink(dir.file_name().unwrap(), &next).unwrap();
    std::fs::rename(&next, volume.join("..data")).unwrap();
    let file = volume.join("tokens.json");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/tokens.json", &file).unwrap();
    }
}

const ALICE: (&str, &str) = ("AKalice000000001", "aliceSecretKey0000000000000000001");
const BOB: (&str, &str) = ("AKbob00000000001", "bobSecretKey00000000000000000001");

#[tokio::test]
async fn a_mounted_file_is_followed_through_the_kubelets_symlink_swap() {
    let volume = tempfile::tempdir().unwrap();
    let alice = issued("alice", ALICE.0, ALICE.1);
    let bob = issued("bob", BOB.0, BOB.1);
    let path = volume.path().join("tokens.json");
    let authz = Authz::start(
        &["--file", path.to_str().unwrap()],
        Path::new("/nonexistent"),
    )
    .await;
    assert_eq!(authz.readyz(), 503, "no file yet");
    kubelet_write(
        volume.path(),
        1,
        &rendered_map(std::slice::from_ref(&alice)),
    );
    authz.wait_readyz(200, "ready once the file appears").await;
    let bearer = |t: &TokenCredentials| format!("Bearer {}", t.current.bearer());
    assert_eq!(authz.verify("", Some(&bearer(&alice))).status, 200);
    assert_eq!(authz.verify("", Some(&bearer(&bob))).status, 401);

    kubelet_write(volume.path(), 2, &rendered_map(std::slice::from_ref(&bob)));
    wait_for("the swapped file read", WAIT, || async {
        (authz.verify("", Some(&bearer(&bob))).status == 200).then_some(())
    })
    .await;
    assert_eq!(authz.verify("", Some(&bearer(&alice))).status, 401);

    kubelet_write(volume.path(), 3, b"{\"version\":1,\"tokens\":[]}");
    authz
        .wait_readyz(503, "not ready on a malformed file")
        .await;
    assert_eq!(authz.verify("", Some(&bearer(&bob))).status, 503);
    kubelet_write(volume.path(), 4, &rendered_map(&[bob]));
    authz.wait_readyz(200, "ready again").await;
    std::fs::remove_file(&path).unwrap();
    authz
        .wait_readyz(503, "not ready once the file is gone")
        .await;
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused_without_a_5xx_or_a_crash() {
    let volume = tempfile::tempdir().unwrap();
    let alice = issued("alice", ALICE.0, ALICE.1);
    kubelet_write(
        volume.path(),
        1,
        &rendered_map(std::slice::from_ref(&alice)),
    );
    let path = volume.path().join("tokens.json");
    let mut authz = Authz::start(
        &["--file", path.to_str().unwrap()],
        Path::new("/nonexistent"),
    )
    .await;
    authz.wait_readyz(200, "ready").await;
    let nginx = Nginx::start_with(&site(authz.addr(), free_addr()));
    let bearer = alice.current.bearer();
    let prefix_of_it = format!("Bearer {}", &bearer[..bearer.len() - 4]);
    let another = issued("bob", ALICE.0, BOB.1).current.bearer();
    let huge = format!("Bearer {}", "A".repeat(100 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "no scheme",
            auth(&bearer).replace("Bearer ", "").into_bytes(),
        ),
        (
            "unknown scheme",
            auth(&format!("Token {bearer}")).into_bytes(),
        ),
        ("bad base64", auth("Basic %%%not-base64%%%").into_bytes()),
        (
            "Basic without a colon",
            auth(&format!("Basic {}", BASE64.encode(ALICE.0))).into_bytes(),
        ),
        ("a prefix of the token", auth(&prefix_of_it).into_bytes()),
        (
            "another secret key",
            auth(&format!("Bearer {another}")).into_bytes(),
        ),
        (
            "the Basic token as Bearer",
            auth(&format!("Bearer {}", alice.current.basic())).into_bytes(),
        ),
        (
            "two headers",
            [auth(&format!("Bearer {bearer}")), auth("Bearer x")]
                .concat()
                .into_bytes(),
        ),
        (
            "NUL bytes",
            [b"Authorization: Bearer tm-\0\0\r\n".as_slice()].concat(),
        ),
        ("a 100 KB header", auth(&huge).into_bytes()),
    ];
    for (what, headers) in &cases {
        for (server, addr, path) in [
            ("authz", authz.addr(), "/verify"),
            ("nginx", nginx.addr(), APP),
        ] {
            let reply = Connection::open(addr).request(path, headers);
            assert!(
                [400, 401].contains(&reply.status),
                "{what} at {server}: {}",
                reply.status
            );
            assert!(
                reply
                    .headers
                    .iter()
                    .all(|(n, _)| !n.starts_with("x-tokenmint"))
            );
        }
    }
    assert!(authz.running(), "authz survived");
    assert_eq!(
        Connection::open(nginx.addr()).get(APP, Some(&format!("Bearer {bearer}"))),
        200
    );
    let secrets = vec![
        bearer,
        alice.current.basic(),
        ALICE.1.to_owned(),
        ALICE.0.to_owned(),
    ];
    authz.assert_never_shows(&secrets);
}
