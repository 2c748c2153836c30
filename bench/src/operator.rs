//! The operator under test as a child process: start, readiness, `/metrics`, `/proc` usage, stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokenmint_harness as harness;
use tokio::process::{Child, Command};

pub use tokenmint_harness::metric_sum;

use crate::BenchResult;

/// How to start the operator.
#[derive(Clone, Debug)]
pub struct OperatorSpec {
    /// The release binary (`target/release/tokenmint`).
    pub binary: PathBuf,
    /// Kubeconfig of the operator's own identity.
    pub kubeconfig: PathBuf,
    /// `--concurrency`, when the bench sets it.
    pub concurrency: Option<u16>,
    /// Further arguments for `tokenmint run`.
    pub extra_args: Vec<String>,
    /// Where the operator's stderr goes (one file per start).
    pub log_dir: PathBuf,
}

/// A running operator.
pub struct Operator {
    child: Child,
    pid: u32,
    metrics_addr: SocketAddr,
    /// When the process was spawned.
    pub started: Instant,
    /// Its log file.
    pub log: PathBuf,
}

/// What `/proc` says about a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

impl Operator {
    /// Spawns `tokenmint run` for one namespace with `RUST_LOG=warn`.
    pub fn start(spec: &OperatorSpec, namespace: &str) -> BenchResult<Operator> {
        let metrics_addr = harness::free_addr()?;
        std::fs::create_dir_all(&spec.log_dir)?;
        let log = spec.log_dir.join(format!(
            "operator-{namespace}-{}.log",
            jiff::Timestamp::now().as_millisecond()
        ));
        let mut command = std::process::Command::new(&spec.binary);
        command
            .args(["run", "--namespace", namespace, "--metrics-addr"])
            .arg(metrics_addr.to_string())
            .args(["--log-format", "json"]);
        if let Some(concurrency) = spec.concurrency {
            command.args(["--concurrency", &concurrency.to_string()]);
        }
        command
            .args(&spec.extra_args)
            .env("KUBECONFIG", &spec.kubeconfig)
            .env("RUST_LOG", "warn")
            .env_remove("POD_NAME");
        harness::log_to(&mut command, &log)?;
        let mut command = Command::from(command);
        command.kill_on_drop(true);
        let started = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", spec.binary.display()))?;
        let pid = child.id().ok_or("operator exited at once")?;
        Ok(Operator {
            child,
            pid,
            metrics_addr,
            started,
            log,
        })
    }

    /// Waits until `/readyz` answers 200 (caches synced); returns the time since spawn.
    pub async fn wait_ready(&mut self, timeout: Duration) -> BenchResult<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "operator exited ({status}) before it was ready; see {}",
                    self.log.display()
                )
                .into());
            }
            if let Ok((200, _)) = http_get(self.metrics_addr, "/readyz").await {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!("operator not ready after {timeout:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> BenchResult<String> {
        match http_get(self.metrics_addr, "/metrics").await? {
            (200, body) => Ok(body),
            (code, _) => Err(format!("operator /metrics answered {code}").into()),
        }
    }

    /// Peak RSS and CPU time so far.
    pub fn usage(&self) -> BenchResult<Usage> {
        process_usage(self.pid)
    }

    /// SIGTERM, then waits for a clean exit (SIGKILL after 15 s).
    pub async fn stop(mut self) -> BenchResult<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!("bench: operator ignored SIGTERM for 15s; killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// Peak RSS (VmHWM) and utime+stime of any process.
pub fn process_usage(pid: u32) -> BenchResult<Usage> {
    // cpu_seconds fails when the process is gone, as reading its status did.
    let cpu_seconds = cpu_seconds(pid)?;
    Ok(Usage {
        peak_rss_kib: harness::status_kib(pid, "VmHWM").unwrap_or(0),
        cpu_seconds,
    })
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> BenchResult<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; the fields after its closing paren are fixed.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks(11) + ticks(12)) as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The PID recorded in a pid file, if that process is alive.
pub fn pid_from_file(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// The blocking GET on a blocking thread, so timing loops keep their runtime.
async fn http_get(addr: SocketAddr, path: &str) -> BenchResult<(u16, String)> {
    let path = path.to_owned();
    Ok(tokio::task::spawn_blocking(move || harness::http_get(addr, &path)).await??)
}
