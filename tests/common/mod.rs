//! Harness of the integration tests: a client for the local control plane
//! (`make cluster-up`), throwaway namespaces, the operator as a child process and
//! a few kubectl helpers. Tests fail, never skip, when the cluster is unreachable.
//! What the bench needs too lives in the `tokenmint-harness` crate (`harness/`); this module
//! adds what only tests want: panics instead of errors, `wait_for`, kubectl, state dumps.
#![allow(dead_code)]

pub mod authz;
pub mod caddy;
pub mod helm;
pub mod nginx;
pub mod tokens;
pub mod trino;
pub mod verifiers;

use std::{
    fs::OpenOptions,
    future::Future,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Once, OnceLock},
    time::Duration,
};

use kube::{Api, Client, Config};
use tokenmint_harness as harness;

pub use tokenmint_harness::{sample, wait_listening};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
const UNREACHABLE: &str = "local control plane not reachable: run `make cluster-up`";

/// TOKENMINT_TEST_KUBECONFIG, else the repo's `.cluster/kubeconfig`, else KUBECONFIG.
/// The local cluster wins over an ambient KUBECONFIG so tests never touch a real cluster by accident.
pub fn kubeconfig_path() -> PathBuf {
    harness::test_kubeconfig()
}

/// Client configuration for the test cluster (admin credentials).
pub async fn config() -> Config {
    harness::load_config(&kubeconfig_path())
        .await
        .unwrap_or_else(|e| panic!("{UNREACHABLE} ({e})"))
}

/// A client that has been proven to reach the apiserver.
pub async fn client() -> Client {
    harness::reachable_client(config().await)
        .await
        .unwrap_or_else(|e| panic!("{UNREACHABLE} ({e})"))
}

/// Polls `f` every 200 ms until it returns `Some`, panicking after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(timeout, poll)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
}

// ---------------------------------------------------------------- kubectl

/// The pinned kubectl: TOKENMINT_KUBECTL, else `.cluster/bin/kubectl`, else PATH.
pub fn kubectl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("TOKENMINT_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let local = Path::new(REPO).join(".cluster/bin/kubectl");
                if local.exists() {
                    local
                } else {
                    "kubectl".into()
                }
            })
    })
}

pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(kubectl_bin());
    command.args(args).env("KUBECONFIG", kubeconfig_path());
    output_with_stdin(&mut command, stdin)
}

/// Runs `command` with `stdin` fed to it and stdout/stderr captured.
pub fn output_with_stdin(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn kubectl(args: &[&str]) -> Output {
    kubectl_stdin(args, "")
}

/// Server-side apply of a YAML document (or several) into `ns`.
pub fn apply_yaml(ns: &str, yaml: &str) -> Output {
    kubectl_stdin(
        &[
            "apply",
            "--server-side",
            &format!("--field-manager={TEST_MANAGER}"),
            "-n",
            ns,
            "-f",
            "-",
        ],
        yaml,
    )
}

/// Stdout of a successful command; panics with its stderr otherwise.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Field manager of what the tests write themselves.
pub const TEST_MANAGER: &str = "tokenmint-test";

/// Installs every CRD (what `tokenmint crd` prints) once per test binary and waits until each is
/// established.
pub fn ensure_crds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Callers are async tests, each on a runtime of its own that this call blocks (as a
        // kubectl call would); the install gets a thread and a runtime to itself.
        let install = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                harness::install_crds(&client().await, TEST_MANAGER, &[tokenmint::all_crds_yaml()])
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
        if let Err(panic) = install.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

// ---------------------------------------------------------------- namespaces

/// A fresh namespace per test. Call `cleanup().await`; if the test panics first,
/// Drop prints what is in the namespace and deletes it (TOKENMINT_KEEP_NS=1 keeps it).
pub struct TestNs {
    pub client: Client,
    pub name: String,
    cleaned: bool,
}

impl TestNs {
    pub async fn new(prefix: &str) -> TestNs {
        let client = client().await;
        let prefix: String = prefix
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        harness::create_namespace(&client, &name, "tokenmint.dev/test")
            .await
            .unwrap_or_else(|e| panic!("creating {e}"));
        TestNs {
            client,
            name,
            cleaned: false,
        }
    }

    /// Typed API for objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn cleanup(mut self) {
        self.cleaned = true;
        let _ = harness::delete_namespace(&self.client, &self.name).await;
    }

    /// ApiTokens, Secrets (keys only, never values) and Events of the namespace.
    pub fn dump(&self) -> String {
        let ns = self.name.as_str();
        let secrets = "{{range .items}}{{.metadata.name}} type={{.type}} keys=[{{range $k, $v := .data}}{{$k}} {{end}}] \
                       labels={{.metadata.labels}} annotations={{.metadata.annotations}}\n{{end}}";
        let mut s = String::new();
        for (title, args) in [
            (
                "ApiTokens",
                vec!["get", "apitokens", "-n", ns, "-o", "yaml"],
            ),
            (
                "Secrets (keys only)",
                vec![
                    "get",
                    "secrets",
                    "-n",
                    ns,
                    "-o",
                    &format!("go-template={secrets}"),
                ],
            ),
            (
                "Events",
                vec!["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
            ),
        ] {
            let out = kubectl(&args);
            s += &format!(
                "----- {title} in {ns} -----\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        s
    }
}

impl TestNs {
    /// A bearer token (TokenRequest API, valid one hour) for ServiceAccount `name` in this namespace,
    /// creating the ServiceAccount first if it does not exist.
    pub async fn service_account_token(&self, name: &str) -> String {
        let hour = Duration::from_secs(3600);
        harness::service_account_token(&self.client, &self.name, name, hour)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The admin kubeconfig's server URL and CA data (base64), for building other identities' configs.
pub fn admin_server_and_ca() -> (String, String) {
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig_path()).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let field = |key: &str| {
        cluster[key]
            .as_str()
            .unwrap_or_else(|| panic!("kubeconfig lacks {key}"))
            .to_owned()
    };
    (field("server"), field("certificate-authority-data"))
}

/// Writes a kubeconfig at `path` with the admin's server and CA, authenticated only by `token`.
pub fn kubeconfig_for_token(token: &str, path: &Path) {
    let admin = harness::read_kubeconfig(&kubeconfig_path()).unwrap_or_else(|e| panic!("{e}"));
    harness::write_token_kubeconfig(&admin, "sa", token, path).unwrap_or_else(|e| panic!("{e}"));
}

/// A client with the admin's server and CA, authenticated only by `token`.
pub async fn client_for_token(token: &str) -> Client {
    let mut config = config().await;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
        if self.cleaned || std::env::var_os("TOKENMINT_KEEP_NS").is_some() {
            return;
        }
        // Drop cannot await; a blocking kubectl call is simple and does not need the runtime.
        let _ = kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

// ---------------------------------------------------------------- operator

/// The operator binary as a child process scoped to one namespace. Output (JSON logs)
/// goes to a temp file that survives restarts; Drop kills the process and, if the test
/// is failing, prints the log.
pub struct Operator {
    process: Process,
    namespace: String,
    extra_args: Vec<String>,
    metrics_addr: SocketAddr,
}

/// A test's child process (the operator, `tokenmint authz`) with its log in a temporary directory.
/// Dropped, it kills the process and, if the test is failing, prints the log.
pub struct Process {
    what: String,
    child: Option<Child>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Nothing running yet; `what` names it in messages and its log file.
    pub fn new(what: &str) -> Process {
        let dir = tempfile::tempdir().unwrap();
        Process {
            what: what.to_owned(),
            child: None,
            log_path: dir.path().join("process.log"),
            _dir: dir,
        }
    }

    /// Starts `command`, logging to the file, and waits until it accepts connections on `addr`.
    pub async fn spawn(&mut self, command: &mut Command, addr: SocketAddr) {
        let child = self.child.insert(spawn_logged(command, &self.log_path));
        if let Err(why) = wait_listening(child, addr).await {
            panic!("{} {why}:\n{}", self.what, self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Appends `line` to the log (a marker between two runs).
    pub fn append_log(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = f.write_all(line.as_bytes());
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.what));
        harness::status_kib(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for {pid}"))
    }

    /// The most resident memory the process has had, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.what));
        harness::status_kib(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM for {pid}"))
    }

    /// Whether the process is still running (a panic would have ended it).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Graceful stop: SIGTERM, then up to 10 s for the process to exit (SIGKILL after).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} ignored SIGTERM for 10s; killing it", self.what);
        let _ = child.kill();
        child.wait().ok()
    }

    /// Abrupt stop (SIGKILL), as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        stop_and_report(self.child.take(), || {
            format!("----- {} log -----\n{}", self.what, self.log())
        });
    }
}

/// Starts `command` with stdout and stderr appended to `log_path`, stdin closed.
pub fn spawn_logged(command: &mut Command, log_path: &Path) -> Child {
    harness::log_to(command, log_path)
        .and_then(|command| command.spawn())
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"))
}

/// An external tool the tests run: the path in `var` (which must exist), else `name` on PATH, else
/// `fallback` (a package's path that may not be on a user's PATH); panics with `missing` otherwise.
pub fn tool_bin(var: &str, name: &str, fallback: &str, missing: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(var) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "{var}={} does not exist; {missing}",
            bin.display()
        );
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    on_path
        .chain([PathBuf::from(fallback)])
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| panic!("{missing}"))
}

/// For a Drop: kills and reaps `child` if it still runs, and prints `logs()` if the test is failing.
pub fn stop_and_report(child: Option<Child>, logs: impl FnOnce() -> String) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    if std::thread::panicking() {
        eprintln!("{}", logs());
    }
}

pub fn free_addr() -> SocketAddr {
    harness::free_addr().expect("a free loopback port")
}

impl Operator {
    pub async fn start(ns: &TestNs) -> Operator {
        Self::start_with(ns, &[]).await
    }

    /// Starts with extra command-line flags, e.g. `&["--requeue-jitter", "0"]`.
    pub async fn start_with(ns: &TestNs, extra_args: &[&str]) -> Operator {
        ensure_crds();
        let mut op = Operator {
            process: Process::new(&format!("operator ({})", ns.name)),
            namespace: ns.name.clone(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            metrics_addr: free_addr(),
        };
        op.spawn().await;
        op
    }

    /// Launches the process and waits until its metrics endpoint accepts connections.
    async fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokenmint"));
        command
            .args(["run", "--namespace", &self.namespace])
            .args([
                "--metrics-addr",
                &self.metrics_addr.to_string(),
                "--log-format",
                "json",
            ])
            .args(&self.extra_args)
            .env("KUBECONFIG", kubeconfig_path())
            // The seal key lives in the test's namespace, so tests that lose or replace it stay apart.
            .env("POD_NAMESPACE", &self.namespace);
        self.process.spawn(&mut command, self.metrics_addr).await;
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        wait_for(
            &format!("operator log line containing {needle:?}"),
            timeout,
            || async { self.log().contains(needle).then_some(()) },
        )
        .await
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// GET /metrics as text.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.metrics_addr, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// The value of the sample `series` (name and labels exactly as exported) on /metrics; 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics(), series)
    }

    /// Successful reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.metric(r#"tokenmint_reconciles_total{result="success"}"#) as u64
    }

    /// Waits until more than `after` reconciles have succeeded: a barrier proving the operator
    /// looked (and decided) before a test asserts that nothing happened.
    pub async fn wait_reconciles_above(&self, after: u64) {
        wait_for(
            &format!("more than {after} successful reconciles"),
            Duration::from_secs(20),
            || async { (self.reconciles() > after).then_some(()) },
        )
        .await
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.process.rss_kib()
    }

    /// The most resident memory the process has had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.process.peak_rss_kib()
    }

    /// Graceful stop: SIGTERM, then up to 10 s for the process to exit (SIGKILL after).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop()
    }

    /// Abrupt stop (SIGKILL), as in a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops gracefully and starts again with the same flags; the log file is appended to.
    pub async fn restart(&mut self) {
        self.stop();
        self.process.append_log("----- restart -----\n");
        self.spawn().await;
    }
}

/// Minimal blocking HTTP/1.0 GET (the metrics endpoint needs nothing more); returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    harness::http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}
