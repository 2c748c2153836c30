//! A real Trino coordinator as a child process for the Trino tests: password authentication from a
//! file and file-based access control, both fed from a verifier's `trino` output the way a kubelet
//! feeds a mounted Secret (a `..data` symlink swapped atomically over a new directory), HTTPS on
//! loopback with a self-signed certificate, and only the tpch and memory catalogs. Queries go through
//! Trino's HTTP client protocol with `curl`. Tests fail, never skip, when Trino or its JDK is missing.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_addr, spawn_logged, stop_and_report};

const MISSING: &str = "Trino not found: run `hack/install-trino.sh` and set TOKENMINT_TRINO to the \
                       directory it prints (it needs the Temurin 25 JDK in /usr/lib/jvm, or TOKENMINT_JAVA)";
/// How often Trino re-reads the password file and the rules: the floor of "change → enforced".
pub const REFRESH: Duration = Duration::from_secs(1);

/// The unpacked Trino server (TOKENMINT_TRINO).
pub fn trino_home() -> PathBuf {
    let home = std::env::var_os("TOKENMINT_TRINO")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{MISSING}"));
    assert!(home.join("lib").is_dir(), "{}: {MISSING}", home.display());
    home
}

/// A Java that runs Trino 476 (24 or newer): TOKENMINT_JAVA, else the machine's Temurin 25.
pub fn java_bin() -> PathBuf {
    let java = std::env::var_os("TOKENMINT_JAVA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java"));
    assert!(java.is_file(), "{}: {MISSING}", java.display());
    java
}

/// Why Trino did not answer a query with rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// HTTP 401: the credential was not let in.
    Credentials,
    /// The query failed; Trino's message (e.g. `Access Denied: Cannot select from table ...`).
    Query(String),
}

/// How to start Trino.
#[derive(Clone, Copy, Debug)]
pub struct TrinoOptions {
    /// File-based access control from `auth/rules.json`; without it, Trino's default: no checks.
    pub access_control: bool,
}

impl Default for TrinoOptions {
    fn default() -> Self {
        TrinoOptions {
            access_control: true,
        }
    }
}

/// The name Trino's certificate is issued for; clients resolve it to wherever Trino listens.
pub const TLS_NAME: &str = "trino.test";

/// Writes a self-signed certificate for [`TLS_NAME`] (and 127.0.0.1) into `dir`: `tls.pem` (key and
/// certificate, Trino's keystore) and `cert.pem` (what clients trust).
pub fn make_tls(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={TLS_NAME}")])
        .args([
            "-addext",
            &format!("subjectAltName=DNS:{TLS_NAME},IP:127.0.0.1"),
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl, to make Trino's TLS certificate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = [
        fs::read(dir.join("key.pem")).unwrap(),
        fs::read(dir.join("cert.pem")).unwrap(),
    ]
    .concat();
    fs::write(dir.join("tls.pem"), pem).unwrap();
}

/// Trino's configuration files (path relative to its `etc`, text): HTTPS with passwords from
/// `<auth_dir>/password.db` and, with `access_control`, rules from `<auth_dir>/rules.json`, both
/// re-read every [`REFRESH`]; the tpch and memory catalogs.
pub fn config_files(
    http_port: u16,
    https_port: u16,
    keystore: &str,
    auth_dir: &str,
    access_control: bool,
) -> Vec<(&'static str, String)> {
    let secret: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let refresh = REFRESH.as_secs();
    let mut files = vec![
        (
            "config.properties",
            format!(
                "coordinator=true\n\
                 node-scheduler.include-coordinator=true\n\
                 http-server.http.port={http_port}\n\
                 http-server.https.enabled=true\n\
                 http-server.https.port={https_port}\n\
                 http-server.https.keystore.path={keystore}\n\
                 http-server.authentication.type=PASSWORD\n\
                 internal-communication.shared-secret={secret}\n\
                 discovery.uri=http://127.0.0.1:{http_port}\n\
                 query.max-memory=256MB\n\
                 query.max-memory-per-node=256MB\n"
            ),
        ),
        (
            "password-authenticator.properties",
            format!(
                "password-authenticator.name=file\nfile.password-file={auth_dir}/password.db\nfile.refresh-period={refresh}s\n"
            ),
        ),
        ("catalog/tpch.properties", "connector.name=tpch\n".into()),
        (
            "catalog/memory.properties",
            "connector.name=memory\n".into(),
        ),
    ];
    if access_control {
        files.push((
            "access-control.properties",
            format!(
                "access-control.name=file\nsecurity.config-file={auth_dir}/rules.json\nsecurity.refresh-period={refresh}s\n"
            ),
        ));
    }
    files
}

/// The JVM's arguments for Trino in `home`, with its configuration in `etc` and data in `data`.
pub fn java_args(home: &str, etc: &str, data: &str) -> Vec<String> {
    [
        "-Xmx1G",
        "-XX:+UseG1GC",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djdk.attach.allowAttachSelf=true",
        "--enable-native-access=ALL-UNNAMED",
        "-cp",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain([
        format!("{home}/lib/*"),
        "-Dnode.environment=test".into(),
        "-Dnode.id=tokenmint-test".into(),
        format!("-Dnode.data-dir={data}"),
        format!("-Dplugin.dir={home}/plugin"),
        format!("-Dcatalog.config-dir={etc}/catalog"),
        format!("-Dconfig={etc}/config.properties"),
        "io.trino.server.TrinoServer".into(),
    ])
    .collect()
}

/// Where a Trino serves HTTPS, and the certificate to trust: what a client needs.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ca: PathBuf,
}

impl Endpoint {
    /// curl's `--resolve` for [`TLS_NAME`] to this endpoint.
    fn resolve(&self) -> String {
        format!("{TLS_NAME}:{}:{}", self.addr.port(), self.addr.ip())
    }

    /// Whether Trino answers `/v1/info` over HTTPS and has finished starting.
    pub fn started(&self) -> bool {
        let info = Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                "--resolve",
                &self.resolve(),
                "--cacert",
            ])
            .arg(&self.ca)
            .arg(format!("https://{TLS_NAME}:{}/v1/info", self.addr.port()))
            .output()
            .expect("curl");
        info.status.success()
            && serde_json::from_slice::<Value>(&info.stdout)
                .is_ok_and(|v| v["starting"] == Value::Bool(false))
    }

    /// Runs `sql` as `user` with `password` (Basic, over HTTPS), following `nextUri` to the end.
    /// `headers` are sent as well (to play a client that sends what it likes).
    pub fn query_with(
        &self,
        user: &str,
        password: &str,
        sql: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<Vec<Value>>, Refused> {
        let mut rows = Vec::new();
        let mut next = Some(format!(
            "https://{TLS_NAME}:{}/v1/statement",
            self.addr.port()
        ));
        let mut body = Some(sql);
        while let Some(uri) = next.take() {
            let mut curl = Command::new("curl");
            curl.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
                .arg("--resolve")
                .arg(self.resolve())
                .arg("--cacert")
                .arg(&self.ca)
                .arg("-u")
                .arg(format!("{user}:{password}"));
            let has_user = headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-trino-user"));
            if !has_user {
                curl.arg("-H").arg(format!("X-Trino-User: {user}"));
            }
            for (k, v) in headers {
                curl.arg("-H").arg(format!("{k}: {v}"));
            }
            if let Some(sql) = body.take() {
                curl.args(["-X", "POST", "--data-binary", sql]);
            }
            let out = curl.arg(&uri).output().expect("curl");
            let text = String::from_utf8_lossy(&out.stdout);
            let (json, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
            match code {
                "200" => {}
                "401" => return Err(Refused::Credentials),
                other => panic!(
                    "Trino answered HTTP {other:?} to {uri}: {json} {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
            let v: Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("Trino's answer is not JSON ({e}): {json}"));
            if let Some(message) = v["error"]["message"].as_str() {
                return Err(Refused::Query(message.to_owned()));
            }
            if let Some(data) = v["data"].as_array() {
                rows.extend(
                    data.iter()
                        .map(|r| r.as_array().cloned().unwrap_or_default()),
                );
            }
            next = v["nextUri"].as_str().map(str::to_owned);
        }
        Ok(rows)
    }

    /// Waits (up to a minute) until `user` can run `SELECT 1`: a file just fed has been loaded.
    pub fn wait_user(&self, user: &str, password: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.query(user, password, "SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "Trino never let {user} in");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Self::query_with`] with no extra headers.
    pub fn query(&self, user: &str, password: &str, sql: &str) -> Result<Vec<Vec<Value>>, Refused> {
        self.query_with(user, password, sql, &[])
    }
}

/// One Trino coordinator. Drop stops it and, if the test is failing, prints its log.
pub struct Trino {
    child: Option<Child>,
    dir: tempfile::TempDir,
    endpoint: Endpoint,
    swaps: AtomicU64,
}

impl std::ops::Deref for Trino {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Trino {
    /// Starts Trino with a deny-all rules file and no users, and waits until it serves.
    pub fn start() -> Trino {
        Self::start_with(TrinoOptions::default())
    }

    /// [`Self::start`] with `options`.
    pub fn start_with(options: TrinoOptions) -> Trino {
        let home = trino_home();
        let java = java_bin();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        for d in ["etc/catalog", "data", "auth"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let (http, https) = (free_addr(), free_addr());
        make_tls(&root.join("etc"));
        let text = |p: &str| root.join(p).display().to_string();
        let files = config_files(
            http.port(),
            https.port(),
            &text("etc/tls.pem"),
            &text("auth"),
            options.access_control,
        );
        for (path, content) in files {
            fs::write(root.join("etc").join(path), content).unwrap();
        }
        let mut trino = Trino {
            child: None,
            endpoint: Endpoint {
                addr: https,
                ca: root.join("etc/cert.pem"),
            },
            dir,
            swaps: AtomicU64::new(0),
        };
        // Nobody is let in until a rendering arrives.
        trino.feed(&BTreeMap::from([
            ("password.db".to_owned(), Vec::new()),
            (
                "rules.json".to_owned(),
                br#"{"catalogs":[{"allow":"none"}]}"#.to_vec(),
            ),
        ]));
        let mut command = Command::new(java);
        command.current_dir(&root).args(java_args(
            &home.display().to_string(),
            &text("etc"),
            &text("data"),
        ));
        trino.child = Some(spawn_logged(&mut command, &root.join("trino.log")));
        let deadline = Instant::now() + Duration::from_secs(180);
        while !trino.endpoint.started() {
            if let Some(child) = trino.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("Trino exited ({status}) while starting:\n{}", trino.log());
            }
            assert!(
                Instant::now() < deadline,
                "Trino did not start in 180 s:\n{}",
                trino.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        trino
    }

    /// Trino's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("trino.log")).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `files` (data key → bytes) where Trino reads them, as a kubelet updates a mounted
    /// Secret: into a fresh directory, then one rename of the `..data` symlink, so Trino never reads
    /// a password file and rules from two versions. Keys become `auth/<key>` through `..data`.
    pub fn feed(&self, files: &BTreeMap<String, Vec<u8>>) {
        let auth = self.path("auth");
        let n = self.swaps.fetch_add(1, Ordering::Relaxed);
        let version = format!("..v{n}");
        fs::create_dir(auth.join(&version)).unwrap();
        for (key, data) in files {
            fs::write(auth.join(&version).join(key), data).unwrap();
            let link = auth.join(key);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
        let tmp = auth.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        symlink(&version, &tmp).unwrap();
        fs::rename(&tmp, auth.join("..data")).unwrap();
        if n > 0 {
            let _ = fs::remove_dir_all(auth.join(format!("..v{}", n - 1)));
        }
    }
}

impl Drop for Trino {
    fn drop(&mut self) {
        let log = self.path("trino.log");
        stop_and_report(self.child.take(), || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        });
    }
}
