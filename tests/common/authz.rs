//! `tokenmint authz` as a child process, and the nginx site that puts it in front of an upstream
//! which echoes the `X-Tokenmint-*` headers it received.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::nginx::{Connection, Reply, Site};
use super::{Process, free_addr, kubeconfig_path, wait_for};

/// The headers authz sets and nginx forwards, as `auth_request_set` variable suffixes.
const FORWARDED: [&str; 4] = ["token", "role", "scope", "filter"];

/// The locations of [`site`].
pub const APP: &str = "/app/data";
/// Behind `?scope=PIPES:READ:top_pages`.
pub const TOP_PAGES: &str = "/pipes/top_pages";
/// No auth at all: the ceiling.
pub const OPEN: &str = "/open/data";

/// nginx in front of authz at `authz`: `APP` needs a valid credential, `TOP_PAGES` one with scope
/// `PIPES:READ:top_pages`, `OPEN` nothing. A second server on `upstream` stands in for the app: it
/// answers with the `X-Tokenmint-*` headers nginx sent it, one `name=value` line each.
pub fn site(authz: SocketAddr, upstream: SocketAddr) -> Site {
    let verify = |name: &str, query: &str| {
        format!(
            "location = /_tokenmint/{name} {{
            internal;
            proxy_pass http://tokenmint_authz/verify{query};
            proxy_pass_request_body off;
            proxy_set_header Content-Length \"\";
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}\n"
        )
    };
    // Set from authz's answer, replacing whatever the client sent under those names.
    let forward: String = FORWARDED
        .iter()
        .map(|h| {
            format!(
                "auth_request_set $tokenmint_{h} $upstream_http_x_tokenmint_{h};
            proxy_set_header X-Tokenmint-{h} $tokenmint_{h};\n            "
            )
        })
        .collect();
    let protected = |location: &str, check: &str| {
        format!(
            "location {location} {{
            auth_request /_tokenmint/{check};
            {forward}proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass http://tokenmint_app;
        }}\n"
        )
    };
    let echo: String = FORWARDED
        .iter()
        .map(|h| format!("{h}=$http_x_tokenmint_{h}\\n"))
        .collect();
    Site {
        http: format!(
            "    upstream tokenmint_authz {{ server {authz}; keepalive 32; }}
    upstream tokenmint_app {{ server {upstream}; keepalive 32; }}
    server {{
        listen {upstream};
        location / {{ return 200 \"{echo}\"; }}
    }}"
        ),
        locations: [
            verify("verify", ""),
            verify("top_pages", "?scope=PIPES:READ:top_pages"),
            protected("/app/", "verify"),
            protected(TOP_PAGES, "top_pages"),
            "location /open/ {
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass http://tokenmint_app;
        }\n"
            .to_owned(),
        ]
        .concat(),
    }
}

/// What the upstream saw, from its echo: `(name, value)` for each non-empty `X-Tokenmint-*` header.
pub fn upstream_saw(reply: &Reply) -> Vec<(String, String)> {
    reply
        .body
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// `tokenmint authz` on a free loopback port, logging JSON at debug level to a temp file. Drop kills
/// it and, if the test is failing, prints the log.
pub struct Authz {
    process: Process,
    addr: SocketAddr,
}

impl Authz {
    /// Serves the output Secret `output` of verifier `ns/verifier`, as the test cluster's admin.
    pub async fn for_output(ns: &str, verifier: &str, output: &str) -> Authz {
        let verifier = format!("{ns}/{verifier}");
        Self::start(
            &["--verifier", &verifier, "--output", output],
            &kubeconfig_path(),
        )
        .await
    }

    /// Starts with `args` (besides `--listen` and `--log-format`) and the identity in `kubeconfig`,
    /// and waits until it listens.
    pub async fn start(args: &[&str], kubeconfig: &Path) -> Authz {
        let mut authz = Authz {
            process: Process::new("authz"),
            addr: free_addr(),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokenmint"));
        command
            .arg("authz")
            .args(args)
            .args(["--listen", &authz.addr.to_string(), "--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,tokenmint=debug");
        authz.process.spawn(&mut command, authz.addr).await;
        authz
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.process.rss_kib()
    }

    /// The most resident memory so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.process.peak_rss_kib()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Status of `/readyz`.
    pub fn readyz(&self) -> u16 {
        Connection::open(self.addr).get("/readyz", None)
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_readyz(&self, status: u16, what: &str) {
        wait_for(what, Duration::from_secs(20), || async {
            (self.readyz() == status).then_some(())
        })
        .await
    }

    /// `/verify` + `query` straight to authz with an optional `Authorization` value.
    pub fn verify(&self, query: &str, authorization: Option<&str>) -> Reply {
        let auth =
            authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
        Connection::open(self.addr).request(&format!("/verify{query}"), auth.as_bytes())
    }

    pub fn metrics(&self) -> String {
        Connection::open(self.addr).request("/metrics", b"").body
    }

    /// The value of the series `series` on /metrics (name and labels exactly as exported); 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        super::sample(&self.metrics(), series)
    }

    /// Asserts that no value of `secrets` (credentials, access keys) is in the log or on /metrics.
    pub fn assert_never_shows(&self, secrets: &[String]) {
        let (log, metrics) = (self.log(), self.metrics());
        assert!(log.contains("output loaded"), "the log is the real one");
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !log.contains(secret.as_str()),
                "a credential in authz's log"
            );
            assert!(
                !metrics.contains(secret.as_str()),
                "a credential on /metrics"
            );
        }
    }

    /// Stops it with SIGTERM, as a kubelet does, and waits until it has exited.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Whether the process is still running (a panic would have ended it).
    pub fn running(&mut self) -> bool {
        self.process.running()
    }
}

/// The `sha256-map` the verifier would write for `tokens`, rendered by the verifier's own code at
/// `now`, for tests without a cluster.
pub fn rendered_map(tokens: &[tokenmint::core::verifier::render::TokenCredentials]) -> Vec<u8> {
    use tokenmint::api::verifier::{Output, OutputFormat};
    use tokenmint::core::verifier::render::{self, ObservedOutputs};
    let outputs = render::validate_outputs(&[Output {
        secret_name: "map".into(),
        format: OutputFormat::Sha256Map,
        key: None,
        hash: None,
        trino: None,
    }])
    .unwrap();
    let entries: Vec<_> = tokens.iter().flat_map(|t| t.entries()).collect();
    let rendered = render::render(
        &outputs,
        &entries,
        &ObservedOutputs::new(),
        jiff::Timestamp::now(),
        |_, _| unreachable!("no htpasswd output"),
    );
    assert_eq!(rendered.excluded, vec![], "every test token renders");
    rendered.outputs[0].data.clone()
}
