//! The bench's side of the API server: clients, the operator's own identity, request accounting
//! through API Priority and Fairness, the CRD and throwaway namespaces.
//!
//! Request accounting: the operator (and the ceiling client) run as a ServiceAccount of their own.
//! FlowSchemas that match only that ServiceAccount sort its requests into buckets (Secret reads,
//! Secret writes, status writes, ...); the API server's
//! `apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` then counts exactly the
//! operator's requests, even while other clients (tests, the bench itself) use the same server.
//! The FlowSchemas send those requests to the `exempt` priority level, the same treatment the
//! admin client of the ceiling gets, so accounting does not throttle anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::flowcontrol::v1::{
    FlowSchema, FlowSchemaSpec, NonResourcePolicyRule, PolicyRulesWithSubjects,
    PriorityLevelConfigurationReference, ResourcePolicyRule, ServiceAccountSubject, Subject,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject as RbacSubject};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use tokenmint_harness as harness;

use crate::BenchResult;

/// Field manager of everything the bench itself writes.
pub const BENCH_MANAGER: &str = "tokenmint-bench";
/// Namespace holding the operator's ServiceAccount.
pub const SYSTEM_NAMESPACE: &str = "tokenmint-bench-system";
/// The operator's ServiceAccount.
pub const OPERATOR_ACCOUNT: &str = "tokenmint-bench-operator";
const FLOW_PREFIX: &str = "tokenmint-bench-";

/// One bucket of the operator's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    SecretRead,
    SecretWrite,
    StatusWrite,
    TokenRead,
    TokenWrite,
    EventWrite,
    Other,
}

impl Bucket {
    pub const ALL: [Bucket; 7] = [
        Bucket::SecretRead,
        Bucket::SecretWrite,
        Bucket::StatusWrite,
        Bucket::TokenRead,
        Bucket::TokenWrite,
        Bucket::EventWrite,
        Bucket::Other,
    ];

    /// Short name, also the FlowSchema suffix.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::SecretRead => "secret-read",
            Bucket::SecretWrite => "secret-write",
            Bucket::StatusWrite => "status-write",
            Bucket::TokenRead => "apitoken-read",
            Bucket::TokenWrite => "apitoken-write",
            Bucket::EventWrite => "event-write",
            Bucket::Other => "other",
        }
    }

    /// Whether requests in this bucket change stored state.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Bucket::SecretWrite | Bucket::StatusWrite | Bucket::TokenWrite | Bucket::EventWrite
        )
    }

    fn rule(self) -> (i32, Vec<ResourcePolicyRule>, Vec<NonResourcePolicyRule>) {
        let rule = |verbs: &[&str], group: &str, resources: &[&str]| ResourcePolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: vec![group.to_owned()],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            namespaces: Some(vec!["*".to_owned()]),
            cluster_scope: Some(true),
        };
        const READ: &[&str] = &["get", "list", "watch"];
        const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
        match self {
            Bucket::SecretRead => (10, vec![rule(READ, "", &["secrets"])], vec![]),
            Bucket::SecretWrite => (11, vec![rule(WRITE, "", &["secrets"])], vec![]),
            Bucket::StatusWrite => (
                12,
                vec![rule(WRITE, "tokenmint.dev", &["apitokens/status"])],
                vec![],
            ),
            Bucket::TokenRead => (
                13,
                vec![rule(READ, "tokenmint.dev", &["apitokens"])],
                vec![],
            ),
            Bucket::TokenWrite => (
                14,
                vec![rule(WRITE, "tokenmint.dev", &["apitokens"])],
                vec![],
            ),
            Bucket::EventWrite => (
                15,
                vec![
                    rule(WRITE, "", &["events"]),
                    rule(WRITE, "events.k8s.io", &["events"]),
                ],
                vec![],
            ),
            Bucket::Other => (
                20,
                vec![rule(&["*"], "*", &["*"])],
                vec![NonResourcePolicyRule {
                    verbs: vec!["*".to_owned()],
                    non_resource_urls: vec!["*".to_owned()],
                }],
            ),
        }
    }
}

/// Requests by bucket.
#[derive(Clone, Debug, Default)]
pub struct Requests(pub BTreeMap<Bucket, u64>);

impl Requests {
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn writes(&self) -> u64 {
        self.0
            .iter()
            .filter(|(b, _)| b.is_write())
            .map(|(_, n)| n)
            .sum()
    }

    pub fn get(&self, bucket: Bucket) -> u64 {
        self.0.get(&bucket).copied().unwrap_or(0)
    }

    /// `self - before`, bucket by bucket.
    pub fn since(&self, before: &Requests) -> Requests {
        Requests(
            Bucket::ALL
                .iter()
                .map(|b| (*b, self.get(*b).saturating_sub(before.get(*b))))
                .collect(),
        )
    }
}

/// Clients and paths the bench needs.
pub struct Cluster {
    /// The admin client (the bench's own requests: creating tokens, watching, scraping).
    pub admin: Client,
    /// A kubeconfig for the operator's ServiceAccount.
    pub operator_kubeconfig: PathBuf,
    /// `.cluster/`, for the control-plane PIDs.
    pub state_dir: Option<PathBuf>,
}

impl Cluster {
    /// Connects as admin, installs the CRD and the operator's identity and accounting.
    pub async fn connect(kubeconfig: &Path, work_dir: &Path) -> BenchResult<Cluster> {
        let kc = harness::read_kubeconfig(kubeconfig)?;
        let admin = harness::reachable_client(harness::load_config(kubeconfig).await?).await?;

        let crds = [tokenmint::crd_yaml(), tokenmint::verifier_crd_yaml()];
        harness::install_crds(&admin, BENCH_MANAGER, &crds).await?;
        let token = operator_identity(&admin).await?;
        install_flow_schemas(&admin).await?;

        std::fs::create_dir_all(work_dir)?;
        let operator_kubeconfig = work_dir.join("operator.kubeconfig");
        harness::write_token_kubeconfig(&kc, OPERATOR_ACCOUNT, &token, &operator_kubeconfig)?;
        let state_dir = kubeconfig
            .parent()
            .filter(|d| d.join("kube-apiserver.pid").exists())
            .map(Path::to_path_buf);
        let cluster = Cluster {
            admin,
            operator_kubeconfig,
            state_dir,
        };
        cluster.wait_for_accounting().await?;
        Ok(cluster)
    }

    /// A client acting as the operator's ServiceAccount (for the ceiling).
    pub async fn operator_client(&self) -> BenchResult<Client> {
        let config = harness::load_config(&self.operator_kubeconfig).await?;
        Ok(Client::try_from(config)?)
    }

    /// The operator identity's requests so far, by bucket.
    pub async fn requests(&self) -> BenchResult<Requests> {
        let req = axum::http::Request::get("/metrics").body(Vec::new())?;
        let text = self.admin.request_text(req).await?;
        let mut counts = Requests::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_flowcontrol_dispatched_requests_total{")
            else {
                continue;
            };
            for bucket in Bucket::ALL {
                let label = format!("flow_schema=\"{FLOW_PREFIX}{}\"", bucket.name());
                if rest.contains(&label) {
                    let n = rest
                        .rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0);
                    *counts.0.entry(bucket).or_default() += n as u64;
                }
            }
        }
        Ok(counts)
    }

    /// Waits until the operator identity's requests stop for `quiet` (or `timeout` passes).
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> BenchResult<Requests> {
        let deadline = Instant::now() + timeout;
        let mut last = self.requests().await?;
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.requests().await?;
            if now.total() != last.total() {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet || Instant::now() > deadline {
                return Ok(now);
            }
        }
    }

    /// The new FlowSchemas take effect a moment after they are created: probe until one counts.
    async fn wait_for_accounting(&self) -> BenchResult<()> {
        let client = self.operator_client().await?;
        let namespaces: Api<Namespace> = Api::all(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let before = self.requests().await?.get(Bucket::Other);
            namespaces.get(SYSTEM_NAMESPACE).await?;
            if self.requests().await?.get(Bucket::Other) > before {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the bench FlowSchemas did not take effect within 30s".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// CPU seconds of the control-plane processes (etcd, kube-apiserver, kube-controller-manager).
    pub fn control_plane_cpu(&self) -> BTreeMap<&'static str, f64> {
        let mut out = BTreeMap::new();
        let Some(dir) = &self.state_dir else {
            return out;
        };
        for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            if let Some(pid) = crate::operator::pid_from_file(&dir.join(format!("{name}.pid")))
                && let Ok(cpu) = crate::operator::cpu_seconds(pid)
            {
                out.insert(name, cpu);
            }
        }
        out
    }

    /// Waits until the control plane has finished leftover work (namespace deletion, garbage
    /// collection, compaction): its CPU use over one second below a tenth of a core, or `timeout`.
    pub async fn settle(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let total = |cpu: BTreeMap<&'static str, f64>| cpu.values().sum::<f64>();
        let mut before = total(self.control_plane_cpu());
        while started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = total(self.control_plane_cpu());
            if now - before < 0.1 {
                break;
            }
            before = now;
        }
        started.elapsed()
    }

    /// Creates a fresh namespace `tmbench-<phase>-<random>`.
    pub async fn namespace(&self, phase: &str) -> BenchResult<String> {
        let name = format!("tmbench-{phase}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        harness::create_namespace(&self.admin, &name, "tokenmint.dev/bench").await?;
        Ok(name)
    }

    /// Deletes a namespace and waits until it is gone (everything in it deleted). On this
    /// machine 10,000 tokens (with their Secrets and Events) take 80-140 s; the limit leaves room
    /// for 100,000.
    pub async fn delete_namespace(&self, name: &str) -> BenchResult<Duration> {
        let started = Instant::now();
        if harness::delete_namespace(&self.admin, name).await? {
            harness::wait_namespace_gone(&self.admin, name, Duration::from_secs(3600)).await?;
        }
        Ok(started.elapsed())
    }

    /// Removes the bench's cluster-wide objects (FlowSchemas, binding, identity namespace).
    pub async fn uninstall(&self) -> BenchResult<()> {
        let schemas: Api<FlowSchema> = Api::all(self.admin.clone());
        for bucket in Bucket::ALL {
            let _ = schemas
                .delete(
                    &format!("{FLOW_PREFIX}{}", bucket.name()),
                    &DeleteParams::default(),
                )
                .await;
        }
        let _ = Api::<ClusterRoleBinding>::all(self.admin.clone())
            .delete(OPERATOR_ACCOUNT, &DeleteParams::default())
            .await;
        self.delete_namespace(SYSTEM_NAMESPACE).await?;
        Ok(())
    }
}

/// A ServiceAccount bound to cluster-admin, and a 6-hour token for it.
async fn operator_identity(admin: &Client) -> BenchResult<String> {
    let apply = PatchParams::apply(BENCH_MANAGER).force();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(SYSTEM_NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(admin.clone())
        .patch(SYSTEM_NAMESPACE, &apply, &Patch::Apply(&ns))
        .await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(OPERATOR_ACCOUNT.to_owned()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: "cluster-admin".to_owned(),
        },
        subjects: Some(vec![RbacSubject {
            kind: "ServiceAccount".to_owned(),
            name: OPERATOR_ACCOUNT.to_owned(),
            namespace: Some(SYSTEM_NAMESPACE.to_owned()),
            ..RbacSubject::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(OPERATOR_ACCOUNT, &apply, &Patch::Apply(&binding))
        .await?;
    let six_hours = Duration::from_secs(6 * 3600);
    Ok(
        harness::service_account_token(admin, SYSTEM_NAMESPACE, OPERATOR_ACCOUNT, six_hours)
            .await?,
    )
}

async fn install_flow_schemas(admin: &Client) -> BenchResult<()> {
    let api: Api<FlowSchema> = Api::all(admin.clone());
    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        service_account: Some(ServiceAccountSubject {
            name: OPERATOR_ACCOUNT.to_owned(),
            namespace: SYSTEM_NAMESPACE.to_owned(),
        }),
        ..Subject::default()
    };
    for bucket in Bucket::ALL {
        let name = format!("{FLOW_PREFIX}{}", bucket.name());
        let (precedence, resource_rules, non_resource_rules) = bucket.rule();
        let schema = FlowSchema {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(FlowSchemaSpec {
                matching_precedence: Some(precedence),
                priority_level_configuration: PriorityLevelConfigurationReference {
                    name: "exempt".to_owned(),
                },
                rules: Some(vec![PolicyRulesWithSubjects {
                    subjects: vec![subject.clone()],
                    resource_rules: Some(resource_rules),
                    non_resource_rules: (!non_resource_rules.is_empty())
                        .then_some(non_resource_rules),
                }]),
                distinguisher_method: None,
            }),
            status: None,
        };
        api.patch(
            &name,
            &PatchParams::apply(BENCH_MANAGER).force(),
            &Patch::Apply(&schema),
        )
        .await
        .map_err(|e| format!("FlowSchema {name}: {e}"))?;
    }
    Ok(())
}
