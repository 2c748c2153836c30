//! Caddy as a child process for the gateway-snippet tests: its Caddyfile, HOME and data dirs in a
//! temp dir, admin API and automatic HTTPS off, one plain-HTTP site on a free loopback port. Tests
//! fail, never skip, when Caddy is missing.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

use super::nginx::Connection;
use super::{free_addr, spawn_logged, stop_and_report, tool_bin, wait_listening};

const MISSING: &str =
    "caddy not found: run `hack/install-caddy.sh` (or set TOKENMINT_CADDY to the binary)";

/// TOKENMINT_CADDY, else `caddy` on PATH, else Debian's /usr/bin/caddy.
pub fn caddy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| tool_bin("TOKENMINT_CADDY", "caddy", "/usr/bin/caddy", MISSING))
}

/// One `caddy run`. Drop stops it and, if the test is failing, prints its log.
pub struct Caddy {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Caddy {
    /// Starts Caddy with `site` (the directives of one site block) as the only site, and waits until
    /// it accepts connections.
    pub async fn start(site: &str) -> Caddy {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let addr = free_addr();
        let port = addr.port();
        let caddyfile = format!(
            "{{
\tadmin off
\tauto_https off
\tstorage file_system {root}/data
}}
http://:{port} {{
\tbind 127.0.0.1
{site}
}}
",
            root = root.display()
        );
        fs::write(root.join("Caddyfile"), caddyfile).unwrap();
        let mut caddy = Caddy {
            child: None,
            addr,
            dir,
        };
        let mut command = Command::new(caddy_bin());
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(root.join("Caddyfile"))
            // Caddy keeps its autosave and certificates under these; none of the user's.
            .env("HOME", &root)
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_DATA_HOME", root.join("data"));
        let child = caddy
            .child
            .insert(spawn_logged(&mut command, &caddy.log_path()));
        if let Err(why) = wait_listening(child, addr).await {
            panic!("caddy {why}:\n{}", caddy.logs());
        }
        caddy
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("caddy.log")
    }

    pub fn connect(&self) -> Connection {
        Connection::open(self.addr)
    }

    pub fn logs(&self) -> String {
        let config = fs::read_to_string(self.dir.path().join("Caddyfile")).unwrap_or_default();
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        format!("----- Caddyfile -----\n{config}----- caddy log -----\n{log}")
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        stop_and_report(self.child.take(), || self.logs());
    }
}
