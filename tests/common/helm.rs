//! helm and promtool, pinned: `$TOKENMINT_HELM` / `$TOKENMINT_PROMTOOL`, else built by
//! `hack/install-tools.sh` on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::REPO;

/// `$env`, else the pinned `tool` from `hack/install-tools.sh` (built on first use).
pub fn pinned_tool(env: &str, tool: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env) {
        return bin.into();
    }
    let out = Command::new(format!("{REPO}/hack/install-tools.sh"))
        .arg(tool)
        .stderr(Stdio::inherit())
        .output()
        .expect("running hack/install-tools.sh");
    assert!(
        out.status.success(),
        "hack/install-tools.sh {tool} failed: {tool} is required for these tests"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| pinned_tool("TOKENMINT_HELM", "helm"))
}

/// Stdout of `bin args`; panics with both outputs when it fails.
pub fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {} failed:\n{}{}",
        bin.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn helm(args: &[&str]) -> String {
    run(helm_bin(), args)
}

/// The chart's directory.
pub fn chart() -> String {
    format!("{REPO}/charts/tokenmint")
}

/// A Helm release named after its namespace: on drop, its cluster-scoped objects (which the
/// namespace's deletion does not take) are deleted, whatever the test did before failing.
pub struct Release(pub String);

impl Drop for Release {
    fn drop(&mut self) {
        let selector = format!("app.kubernetes.io/instance={}", self.0);
        let _ = super::kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            &selector,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}
