//! The README's gateway snippets, read out of README.md (so the docs and this test cannot drift) and
//! run through the real gateway, nginx and Caddy, with `tokenmint authz` in file mode (no cluster)
//! and an app that answers with the head of every request it receives, so each header line it got,
//! duplicates included, is visible. The client plays the attacker: a valid token plus forged
//! `X-Tokenmint-*` headers (any case, repeated, with underscores), a `?scope=` of its own, and a
//! token whose checked scope has no row filter. Needs nginx (`hack/install-nginx.sh`) and Caddy
//! (`hack/install-caddy.sh`); fails, never skips, without them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::authz::{Authz, rendered_map};
use common::caddy::Caddy;
use common::nginx::{Connection, Nginx, Reply, Site};
use tokenmint::core::credential::Credential;
use tokenmint::core::verifier::render::{TokenCredentials, TokenRef};

const README: &str = include_str!("../README.md");
const SECTION: &str = "## Checking tokens at the gateway: `tokenmint authz`";
/// The snippets' addresses of authz and of the app: the only text of a snippet the test replaces.
const AUTHZ_HOST: &str = "tokenmint-authz.tokenmint-system.svc:8080";
const APP_HOST: &str = "app:8000";
/// The scope the snippets check for the location they protect.
const SCOPE: &str = "PIPES:READ:top_pages";

/// Requests to the protected location: the client adds `?scope=` of its own, even two.
const PATHS: [&str; 4] = [
    "/pipes/top_pages",
    "/pipes/top_pages?scope=ADMIN",
    "/pipes/top_pages?scope=PIPES:READ:other",
    "/pipes/top_pages/deeper?x=1&scope=PIPES:READ:other&scope=ADMIN",
];

/// What the attacker sends besides its credential: every name authz sets, in several letter cases,
/// repeated, with underscores (which some frameworks fold into dashes), and a name authz never sets.
const FORGED: &str = "X-Tokenmint-Scope: ADMIN\r\n\
                      x-tokenmint-scope: ADMIN\r\n\
                      X-TOKENMINT-SCOPE: ADMIN\r\n\
                      X-Tokenmint-Filter: 1 = 1\r\n\
                      x-TokenMint-Filter: 1 = 1\r\n\
                      X-Tokenmint-Token: other/ns\r\n\
                      X-Tokenmint-Token: other/ns\r\n\
                      x-tokenmint-token: other/ns\r\n\
                      X-Tokenmint-Role: ADMIN\r\n\
                      X-TOKENMINT-ROLE: ADMIN\r\n\
                      X_Tokenmint_Scope: ADMIN\r\n\
                      X_Tokenmint_Filter: 1 = 1\r\n\
                      X-Tokenmint-Extra: forged\r\n";
/// The forged values; no real token, role, scope or filter equals one.
const FORGED_VALUES: [&str; 4] = ["ADMIN", "1 = 1", "other/ns", "forged"];

/// The one fenced block of `lang` in the README's gateway section.
fn snippet(lang: &str) -> String {
    let (_, section) = README
        .split_once(SECTION)
        .unwrap_or_else(|| panic!("README.md has no section {SECTION:?}"));
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<&str> = section
        .split(&format!("\n```{lang}\n"))
        .skip(1)
        .map(|rest| rest.split_once("\n```").expect("a closed fence").0)
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "exactly one ```{lang} block in the README's gateway section"
    );
    blocks[0].to_owned()
}

/// `snippet` with the placeholder addresses replaced by authz's and the app's.
fn addressed(snippet: &str, authz: SocketAddr, app: SocketAddr) -> String {
    for host in [AUTHZ_HOST, APP_HOST] {
        assert!(
            snippet.contains(host),
            "the snippet names {host}:\n{snippet}"
        );
    }
    snippet
        .replace(AUTHZ_HOST, &authz.to_string())
        .replace(APP_HOST, &app.to_string())
}

/// The app: answers every request with its head (request line and header lines, as received) and
/// keeps each head, so a test knows whether a request reached it at all.
struct EchoApp {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl EchoApp {
    fn start() -> EchoApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || echo(stream, &seen));
            }
        });
        EchoApp { addr, heads }
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

/// Serves one connection, request after request (the gateways send GETs without a body).
fn echo(stream: TcpStream, seen: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        seen.lock().unwrap().push(head.clone());
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{head}",
            head.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Header lines whose name, lower-cased and with `_` read as `-`, starts with `x-tokenmint-`: as
/// (that name, trimmed value), in the order received.
fn identity_lines<'a>(lines: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    lines
        .map(|(name, value)| {
            let name = name.trim().to_ascii_lowercase().replace('_', "-");
            (name, value.trim().to_owned())
        })
        .filter(|(name, _)| name.starts_with("x-tokenmint-"))
        .collect()
}

/// What the app received: the identity lines of the head the echo sent back, sorted.
fn app_saw(reply: &Reply) -> Vec<(String, String)> {
    let mut saw = identity_lines(reply.body.lines().skip(1).filter_map(|l| l.split_once(':')));
    saw.sort();
    saw
}

/// What authz answers to the gateway's own check.
fn authz_decided(authz: &Authz, bearer: &str) -> Vec<(String, String)> {
    let reply = authz.verify(&format!("?scope={SCOPE}"), Some(bearer));
    assert_eq!(reply.status, 200, "authz lets the token in");
    identity_lines(reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nginx,
    Caddy,
}

enum Gateway {
    Nginx(Nginx),
    Caddy(Caddy),
}

impl Gateway {
    /// The README's snippet for `kind`, addressed to `authz` and `app`, running.
    async fn start(kind: Kind, authz: SocketAddr, app: SocketAddr) -> Gateway {
        match kind {
            Kind::Nginx => Gateway::Nginx(Nginx::start_with(&Site {
                http: String::new(),
                locations: addressed(&snippet("nginx"), authz, app),
            })),
            Kind::Caddy => {
                Gateway::Caddy(Caddy::start(&addressed(&snippet("caddyfile"), authz, app)).await)
            }
        }
    }

    fn connect(&self) -> Connection {
        match self {
            Gateway::Nginx(nginx) => nginx.connect(),
            Gateway::Caddy(caddy) => caddy.connect(),
        }
    }

    /// The identity lines the app must receive, with a non-empty value, sorted, when authz answered
    /// `decided` (in its order): nginx drops the scope list (1.22 would keep only its first line) and passes names
    /// authz never sets; Caddy joins the scopes into one line and drops every `X-Tokenmint-*` name.
    fn forwards(&self, decided: &[(String, String)]) -> Vec<(String, String)> {
        let is_scope = |(name, _): &&(String, String)| name == "x-tokenmint-scope";
        let mut expected: Vec<_> = decided
            .iter()
            .filter(|line| !is_scope(line))
            .cloned()
            .collect();
        match self {
            Gateway::Nginx(_) => expected.push(("x-tokenmint-extra".into(), "forged".into())),
            Gateway::Caddy(_) => {
                let scopes: Vec<&str> = decided
                    .iter()
                    .filter(is_scope)
                    .map(|(_, v)| v.as_str())
                    .collect();
                expected.push(("x-tokenmint-scope".into(), scopes.join(",")));
            }
        }
        expected.sort();
        expected
    }
}

fn token(name: &str, role: &str, scopes: &[&str], access_key: &str) -> TokenCredentials {
    TokenCredentials {
        token: TokenRef {
            namespace: "data".into(),
            name: name.into(),
        },
        role: role.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: None,
        current: Credential {
            prefix: "tm-".into(),
            access_key: access_key.into(),
            secret_key: format!("{name}SecretKey")
                .chars()
                .cycle()
                .take(33)
                .collect(),
        },
        previous: None,
        next: None,
    }
}

fn bearer(token: &TokenCredentials) -> String {
    format!("Bearer {}", token.current.bearer())
}

/// Runs the README's `kind` snippet in front of the echo app and attacks it.
async fn attack(kind: Kind) {
    // The checked scope with a filter, and another scope whose filter a client would like to pick.
    let reader = token(
        "reader",
        "reader",
        &[
            "PIPES:READ:top_pages:tenant_id = 7",
            "PIPES:READ:other:tenant_id = 8",
        ],
        "AKreader00000001",
    );
    // The checked scope without a filter: authz sends no X-Tokenmint-Filter for it.
    let unfiltered = token(
        "unfiltered",
        "writer",
        &["PIPES:READ:other:tenant_id = 9", "PIPES:READ:top_pages"],
        "AKunfilt00000001",
    );
    // Not the checked scope, only the one the client names in its ?scope=.
    let outsider = token(
        "outsider",
        "reader",
        &["PIPES:READ:other"],
        "AKoutsid00000001",
    );
    let volume = tempfile::tempdir().unwrap();
    let map = volume.path().join("tokens.json");
    std::fs::write(
        &map,
        rendered_map(&[reader.clone(), unfiltered.clone(), outsider.clone()]),
    )
    .unwrap();
    let authz = Authz::start(
        &["--file", map.to_str().unwrap()],
        std::path::Path::new("/nonexistent"),
    )
    .await;
    authz.wait_readyz(200, "authz ready with the map").await;
    let app = EchoApp::start();
    let gateway = Gateway::start(kind, authz.addr(), app.addr).await;
    let mut connection = gateway.connect();

    for (holder, filter) in [(&reader, Some("tenant_id = 7")), (&unfiltered, None)] {
        let decided = authz_decided(&authz, &bearer(holder));
        assert_eq!(
            decided
                .iter()
                .find(|(name, _)| name == "x-tokenmint-filter")
                .map(|(_, value)| value.as_str()),
            filter,
            "authz's own answer for {}",
            holder.token.name
        );
        let expected = gateway.forwards(&decided);
        let sent_by_authz: Vec<&str> = decided.iter().map(|(n, _)| n.as_str()).collect();
        for path in PATHS {
            let headers = format!("Authorization: {}\r\n{FORGED}", bearer(holder));
            let before = app.requests();
            let reply = connection.request(path, headers.as_bytes());
            assert_eq!(reply.status, 200, "{kind:?} {path}: {}", reply.body);
            assert_eq!(app.requests(), before + 1, "{kind:?} {path}: one request");
            let request_line = reply.body.lines().next().unwrap_or_default();
            assert!(
                request_line.starts_with(&format!("GET {path} ")),
                "{kind:?}: the app got {request_line:?} for {path}"
            );
            let saw = app_saw(&reply);
            let (filled, empty): (Vec<_>, Vec<_>) =
                saw.into_iter().partition(|(_, value)| !value.is_empty());
            assert_eq!(
                filled, expected,
                "{kind:?} {path} with {}'s token: what the app received under X-Tokenmint-* names \
                 (left) against what authz decided (right)",
                holder.token.name
            );
            for (name, _) in &empty {
                assert!(
                    !sent_by_authz.contains(&name.as_str()),
                    "{kind:?} {path}: an empty {name} though authz sent one"
                );
            }
            for (name, value) in &filled {
                assert!(
                    !FORGED_VALUES.contains(&value.as_str()) || name == "x-tokenmint-extra",
                    "{kind:?} {path}: the app got the forged {name}: {value}"
                );
            }
        }
    }

    // Refusals reach the client and not the app: a token without the location's scope, whatever
    // ?scope= it names, none at all, and an unknown one.
    let unknown = format!("Bearer {}x", reader.current.bearer());
    let refusals = [
        (
            format!("Authorization: {}\r\n", bearer(&outsider)),
            403,
            "a token without the scope",
        ),
        (String::new(), 401, "no token"),
        (
            format!("Authorization: {unknown}\r\n"),
            401,
            "an unknown token",
        ),
    ];
    for (credential, status, what) in &refusals {
        for path in PATHS {
            let before = app.requests();
            let reply = connection.request(path, format!("{credential}{FORGED}").as_bytes());
            assert_eq!(reply.status, *status, "{kind:?} {path}, {what}");
            if *status == 401 {
                assert!(
                    reply.header("www-authenticate").is_some(),
                    "{kind:?} {path}: a 401 carries authz's challenge"
                );
            }
            assert_eq!(
                app.requests(),
                before,
                "{kind:?} {path}, {what}: app reached"
            );
        }
    }
    let secrets: Vec<String> = [&reader, &unfiltered, &outsider]
        .iter()
        .map(|t| t.current.bearer())
        .collect();
    authz.assert_never_shows(&secrets);
}

#[tokio::test]
async fn the_readme_nginx_snippet_passes_on_only_what_authz_decided() {
    attack(Kind::Nginx).await;
}

#[tokio::test]
async fn the_readme_caddy_snippet_passes_on_only_what_authz_decided() {
    attack(Kind::Caddy).await;
}
