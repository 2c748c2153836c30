//! Cluster helpers shared by tokenmint's integration tests (`tests/common`) and its bench
//! (`bench/`): the local control plane's kubeconfig, an admin client proven to reach it, the CRDs,
//! namespaces, ServiceAccount tokens and kubeconfigs for them, child processes with a log file, and
//! reading Prometheus text.
//!
//! Dev-only: neither the operator's library nor its binaries depend on this crate. It does not
//! depend on `tokenmint` either (the root package depends on it, for its tests), so the CRDs come
//! in as YAML. Everything returns an [`Error`]: the bench reports it, the tests panic with it.

mod cluster;
mod metrics;
mod process;

use std::path::{Path, PathBuf};

pub use cluster::{
    create_namespace, delete_namespace, install_crds, load_config, reachable_client,
    read_kubeconfig, service_account_token, wait_namespace_gone, write_token_kubeconfig,
};
pub use metrics::{metric_sum, sample};
pub use process::{free_addr, http_get, log_to, read_request_head, status_kib, wait_listening};

/// What failed, with the file, object or address it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: {source}")]
    LoadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("admin kubeconfig {0}")]
    KubeconfigShape(&'static str),
    #[error("API server did not answer within 10s (run `make cluster-up`)")]
    NoAnswer,
    #[error("API server unreachable (run `make cluster-up`): {0}")]
    Unreachable(kube::Error),
    #[error("CRD YAML: {0}")]
    CrdYaml(serde_yaml::Error),
    #[error("installing CRD {name}: {source}")]
    InstallCrd { name: String, source: kube::Error },
    #[error("CRD {0} not established after 30s")]
    CrdNotEstablished(String),
    #[error("namespace {name}: {source}")]
    Namespace { name: String, source: kube::Error },
    #[error("namespace {name} still there after {timeout:?}")]
    NamespaceNotGone {
        name: String,
        timeout: std::time::Duration,
    },
    #[error("ServiceAccount {account}: {source}")]
    ServiceAccount {
        account: String,
        source: kube::Error,
    },
    #[error("TokenRequest for {0} returned no token")]
    NoToken(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The repository root (this crate lives one directory below it).
pub fn repo_root() -> &'static Path {
    let harness = Path::new(env!("CARGO_MANIFEST_DIR"));
    harness.parent().unwrap_or(harness)
}

/// The admin kubeconfig of this tree's local control plane (`hack/cluster-up.sh` writes it).
/// The bench uses it unless told otherwise, never an ambient `KUBECONFIG`.
pub fn local_kubeconfig() -> PathBuf {
    repo_root().join(".cluster/kubeconfig")
}

/// The integration tests' kubeconfig: `TOKENMINT_TEST_KUBECONFIG`, else the local control plane's,
/// else `KUBECONFIG`. The local cluster wins over an ambient `KUBECONFIG` so tests never touch a
/// real cluster by accident.
pub fn test_kubeconfig() -> PathBuf {
    choose_test_kubeconfig(
        std::env::var_os("TOKENMINT_TEST_KUBECONFIG").map(PathBuf::from),
        local_kubeconfig(),
        std::env::var_os("KUBECONFIG").map(PathBuf::from),
    )
}

fn choose_test_kubeconfig(
    explicit: Option<PathBuf>,
    local: PathBuf,
    ambient: Option<PathBuf>,
) -> PathBuf {
    match (explicit, ambient) {
        (Some(explicit), _) => explicit,
        (None, Some(ambient)) if !local.exists() => ambient,
        _ => local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_holds_the_root_manifest() {
        let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"tokenmint\""));
    }

    #[test]
    fn test_kubeconfig_prefers_explicit_then_local_then_ambient() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("kubeconfig");
        std::fs::write(&present, "").unwrap();
        let absent = dir.path().join("missing");
        let explicit = || Some(PathBuf::from("/explicit"));
        let ambient = || Some(PathBuf::from("/ambient"));

        assert_eq!(
            choose_test_kubeconfig(explicit(), present.clone(), ambient()),
            PathBuf::from("/explicit")
        );
        assert_eq!(
            choose_test_kubeconfig(None, present.clone(), ambient()),
            present
        );
        assert_eq!(
            choose_test_kubeconfig(None, absent.clone(), ambient()),
            PathBuf::from("/ambient")
        );
        // Nothing else configured: the local path, so the error names the file to create.
        assert_eq!(choose_test_kubeconfig(None, absent.clone(), None), absent);
    }
}
