//! Installing tokenmint the way users do: the Helm chart renders, lints and is accepted by the
//! apiserver; its RBAC is enough for the operator to do its job and nothing more, and the roles it
//! aggregates into view/edit/admin let users write ApiTokens but never their status; its alert
//! rules pass promtool; several replicas elect one leader, hand over on a crash without minting
//! anything twice, and shut down cleanly.
//!
//! Needs the local control plane (`make cluster-up`), helm (`TOKENMINT_HELM`, or built by
//! `hack/install-tools.sh`) and promtool (`TOKENMINT_PROMTOOL`, or built by
//! `hack/install-tools.sh promtool`). Fails, never skips, without any of them.
mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::helm::{Release, chart, helm, helm_bin, pinned_tool, run};
use common::{REPO, TestNs, kubectl, kubectl_stdin, ok, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::json;
use serde_yaml::Value;
use tokenmint::api::{ApiToken, Phase};
use tokenmint::runtime::leader::LEASE_NAME;

const WAIT: Duration = Duration::from_secs(20);
/// The operator's lease duration; a follower must take over within it plus one retry period and
/// the time the record takes to be seen (one more retry period).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------- helm and promtool

fn promtool_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| pinned_tool("TOKENMINT_PROMTOOL", "promtool"))
}

/// `helm template` of the chart as release `release` in `namespace`, with `--set` values.
fn render(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    documents(&helm(&args))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm output is YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [Value], kinds: &[&str]) -> Vec<&'a Value> {
    docs.iter().filter(|d| kinds.contains(&kind(d))).collect()
}

/// The object of kind `k` named `name`.
fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} named {name} in the rendered chart"))
}

fn names(docs: &[&Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The operator container's flags.
fn container_args(docs: &[Value]) -> Vec<String> {
    one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// (roleRef kind, roleRef name, binding namespace) of every binding of the operator's
/// ServiceAccount `account`; the namespace is empty for a ClusterRoleBinding.
fn bound_to_operator(docs: &[Value], account: &str) -> BTreeSet<(String, String, String)> {
    of_kind(docs, &["RoleBinding", "ClusterRoleBinding"])
        .into_iter()
        .filter(|b| b["subjects"][0]["name"] == account)
        .map(|b| {
            let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                field(&b["roleRef"]["kind"]),
                field(&b["roleRef"]["name"]),
                field(&b["metadata"]["namespace"]),
            )
        })
        .collect()
}

fn bindings(rows: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    rows.iter()
        .map(|(k, n, ns)| (k.to_string(), n.to_string(), ns.to_string()))
        .collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = of_kind(docs, &[k]);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {k}, got {}",
        found.len()
    );
    found[0]
}

fn to_yaml(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect()
}

/// One RBAC rule row: (apiGroup, resource, resourceNames, verbs).
type Rule = (String, String, Vec<String>, Vec<String>);

/// Rules as rows, one per group×resource; none for a role without rules.
fn rules(role: &Value) -> BTreeSet<Rule> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut rows = BTreeSet::new();
    for rule in role["rules"].as_sequence().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                rows.insert((
                    group.clone(),
                    resource,
                    strings(&rule["resourceNames"]),
                    strings(&rule["verbs"]),
                ));
            }
        }
    }
    rows
}

fn row(group: &str, resource: &str, names: &[&str], verbs: &[&str]) -> Rule {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
    (group.into(), resource.into(), v(names), v(verbs))
}

/// Exactly the calls src/controller/ makes.
fn operator_rules() -> BTreeSet<Rule> {
    [
        row("tokenmint.dev", "apitokens", &[], &["list", "watch"]),
        row("tokenmint.dev", "apitokens/status", &[], &["patch"]),
        row(
            "tokenmint.dev",
            "apitokenverifiers",
            &[],
            &["list", "watch"],
        ),
        row("tokenmint.dev", "apitokenverifiers/status", &[], &["patch"]),
        row(
            "",
            "secrets",
            &[],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        row("events.k8s.io", "events", &[], &["create", "patch"]),
    ]
    .into()
}

/// Exactly the calls src/runtime/leader.rs makes.
fn lease_rules(lease: &str) -> BTreeSet<Rule> {
    [
        row("coordination.k8s.io", "leases", &[], &["create"]),
        row(
            "coordination.k8s.io",
            "leases",
            &[lease],
            &["get", "update"],
        ),
    ]
    .into()
}

/// What the operator does with its seal key: create it once, read it back by name.
fn seal_key_rules(secret: &str) -> BTreeSet<Rule> {
    [
        row("", "secrets", &[], &["create"]),
        row("", "secrets", &[secret], &["get"]),
    ]
    .into()
}

/// Reading the usage records `tokenmint authz` writes in the release namespace.
fn usage_rules() -> BTreeSet<Rule> {
    [row("", "configmaps", &[], &["get", "list", "watch"])].into()
}

/// What the chart aggregates into the built-in `view` role: reading tokens and verifiers.
fn view_rules() -> BTreeSet<Rule> {
    [
        "apitokens",
        "apitokens/status",
        "apitokenverifiers",
        "apitokenverifiers/status",
    ]
    .iter()
    .map(|r| row("tokenmint.dev", r, &[], &["get", "list", "watch"]))
    .collect()
}

/// What the chart aggregates into `edit` and `admin`: writing the spec, never the status.
fn edit_rules() -> BTreeSet<Rule> {
    let verbs = ["create", "update", "patch", "delete", "deletecollection"];
    ["apitokens", "apitokenverifiers"]
        .iter()
        .map(|r| row("tokenmint.dev", r, &[], &verbs))
        .collect()
}

// ---------------------------------------------------------------- chart

#[test]
fn chart_crd_is_byte_identical_to_the_generated_crd() {
    for file in ["apitoken.yaml", "apitokenverifier.yaml"] {
        let generated = std::fs::read(format!("{REPO}/crds/{file}")).unwrap();
        let in_chart = std::fs::read(format!("{REPO}/charts/tokenmint/crds/{file}")).unwrap();
        assert!(
            generated == in_chart,
            "charts/tokenmint/crds/{file} differs from crds/{file}: run `make crds`"
        );
    }
}

#[test]
fn chart_lints_with_default_and_optional_values() {
    let chart = chart();
    helm(&["lint", "--strict", &chart]);
    helm(&[
        "lint",
        "--strict",
        &chart,
        "--set",
        "watchNamespace=apps",
        "--set",
        "replicas=2",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "allowReplicationAnnotations=true",
        "--set",
        "rbac.aggregate=false",
        "--set",
        "authz.enabled=true",
        "--set",
        "authz.verifier.name=pinot",
        "--set",
        "authz.output=pinot-tokens",
    ]);
}

#[test]
fn chart_defaults_render_a_locked_down_single_writer_deployment() {
    let docs = render("tokenmint", "tokenmint-system", &[]);
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    let expected: BTreeSet<&str> = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ]
    .into();
    assert_eq!(kinds, expected);

    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["serviceAccountName"], "tokenmint");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(security["runAsNonRoot"], Value::Bool(true));
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["image"], "ghcr.io/tokenmint/tokenmint:0.1.0");
    let args = container_args(&docs);
    for flag in [
        "--leader-elect",
        "--leader-election-namespace=tokenmint-system",
        "--leader-election-lease=tokenmint-leader",
        "--seal-key-secret=tokenmint-seal-key",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "all namespaces by default: {args:?}"
    );
    assert!(
        !args.iter().any(|a| a == "--allow-replication-annotations"),
        "replication annotations are refused by default: {args:?}"
    );
    let env: Vec<(&str, &str)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert!(env.contains(&("POD_NAME", "metadata.name")), "{env:?}");
    assert!(
        env.contains(&("POD_NAMESPACE", "metadata.namespace")),
        "{env:?}"
    );

    // Least privilege: the operator's rules, the Lease's and the seal key's, nothing else, no
    // wildcards; the roles aggregated for users are bound to nobody by the chart.
    let mut cluster_wide = operator_rules();
    cluster_wide.insert(row("", "namespaces", &[], &["list", "watch"]));
    assert_eq!(
        rules(named(&docs, "ClusterRole", "tokenmint")),
        cluster_wide
    );
    assert_eq!(
        rules(named(&docs, "Role", "tokenmint-leader-election")),
        lease_rules("tokenmint-leader")
    );
    assert_eq!(
        rules(named(&docs, "Role", "tokenmint-seal-key")),
        seal_key_rules("tokenmint-seal-key")
    );
    assert_eq!(
        rules(named(&docs, "Role", "tokenmint-usage")),
        usage_rules()
    );
    for role in of_kind(&docs, &["Role"]) {
        assert_eq!(role["metadata"]["namespace"], "tokenmint-system");
    }
    let bound = bindings(&[
        ("ClusterRole", "tokenmint", ""),
        ("Role", "tokenmint-leader-election", "tokenmint-system"),
        ("Role", "tokenmint-seal-key", "tokenmint-system"),
        ("Role", "tokenmint-usage", "tokenmint-system"),
    ]);
    assert_eq!(bound_to_operator(&docs, "tokenmint"), bound);
    assert_eq!(
        of_kind(&docs, &["RoleBinding", "ClusterRoleBinding"]).len(),
        bound.len()
    );
    assert!(
        !serde_yaml::to_string(&docs).unwrap().contains("'*'"),
        "no wildcard anywhere"
    );

    // Users: view reads ApiTokens and their status, edit (and admin) write the spec only.
    let view = named(&docs, "ClusterRole", "tokenmint-view");
    assert_eq!(rules(view), view_rules());
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    let edit = named(&docs, "ClusterRole", "tokenmint-edit");
    assert_eq!(rules(edit), edit_rules());
    for label in ["aggregate-to-edit", "aggregate-to-admin"] {
        assert_eq!(
            edit["metadata"]["labels"][format!("rbac.authorization.k8s.io/{label}").as_str()],
            "true"
        );
    }
    assert!(
        rules(edit)
            .iter()
            .all(|(_, resource, _, _)| !resource.ends_with("/status")),
        "no write to any status"
    );
}

#[test]
fn watch_namespace_gets_a_role_in_that_namespace_and_nothing_cluster_wide() {
    let docs = render(
        "tm",
        "ops",
        &[
            "watchNamespace=apps",
            "replicas=2",
            "podDisruptionBudget.enabled=true",
        ],
    );
    // Nothing cluster-wide for the operator; the users' aggregated roles are cluster-wide by nature.
    assert!(of_kind(&docs, &["ClusterRoleBinding"]).is_empty());
    assert_eq!(
        names(&of_kind(&docs, &["ClusterRole"])),
        [
            "tm-tokenmint-edit".to_owned(),
            "tm-tokenmint-view".to_owned()
        ]
        .into()
    );
    let roles = of_kind(&docs, &["Role"]);
    assert_eq!(roles.len(), 4);
    let in_apps = named(&docs, "Role", "tm-tokenmint");
    assert_eq!(in_apps["metadata"]["namespace"], "apps");
    assert_eq!(rules(in_apps), operator_rules());
    // The Lease and the seal key live in the release namespace, not the watched one.
    let lease = named(&docs, "Role", "tm-tokenmint-leader-election");
    assert_eq!(lease["metadata"]["namespace"], "ops");
    assert_eq!(rules(lease), lease_rules("tm-tokenmint-leader"));
    let seal = named(&docs, "Role", "tm-tokenmint-seal-key");
    assert_eq!(seal["metadata"]["namespace"], "ops");
    assert_eq!(rules(seal), seal_key_rules("tokenmint-seal-key"));
    // Usage records are believed in the release namespace only.
    let usage = named(&docs, "Role", "tm-tokenmint-usage");
    assert_eq!(usage["metadata"]["namespace"], "ops");
    assert_eq!(rules(usage), usage_rules());
    for binding in of_kind(&docs, &["RoleBinding"]) {
        assert_eq!(binding["subjects"][0]["namespace"], "ops");
    }
    assert_eq!(
        bound_to_operator(&docs, "tm-tokenmint"),
        bindings(&[
            ("Role", "tm-tokenmint", "apps"),
            ("Role", "tm-tokenmint-leader-election", "ops"),
            ("Role", "tm-tokenmint-seal-key", "ops"),
            ("Role", "tm-tokenmint-usage", "ops"),
        ])
    );

    let deployment = one(&docs, "Deployment");
    let args = container_args(&docs);
    assert!(args.iter().any(|a| a == "--namespace=apps"), "{args:?}");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
}

#[test]
fn consumer_restarts_are_off_by_default_and_on_grant_only_reading_watching_and_patching_workloads()
{
    let workloads = row(
        "apps",
        "deployments",
        &[],
        &["get", "list", "watch", "patch"],
    );
    let apps = |rules: &BTreeSet<Rule>| -> BTreeSet<Rule> {
        rules.iter().filter(|r| r.0 == "apps").cloned().collect()
    };
    let defaults = render("tokenmint", "tokenmint-system", &[]);
    assert!(apps(&rules(named(&defaults, "ClusterRole", "tokenmint"))).is_empty());
    let on = render(
        "tokenmint",
        "tokenmint-system",
        &[
            "consumers.enabled=true",
            "consumers.window=2s",
            "consumers.maxRollouts=4",
        ],
    );
    let granted = apps(&rules(named(&on, "ClusterRole", "tokenmint")));
    let kinds: BTreeSet<&str> = granted.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(kinds, ["daemonsets", "deployments", "statefulsets"].into());
    assert!(
        granted.iter().all(|r| r.3 == workloads.3 && r.2.is_empty()),
        "{granted:?}"
    );
    let args = container_args(&on);
    for flag in ["--consumer-window=2s", "--consumer-rollouts=4"] {
        assert!(args.iter().any(|a| a == flag), "{args:?}");
    }
    // With watchNamespace, only there.
    let scoped = render(
        "tm",
        "ops",
        &["watchNamespace=apps", "consumers.enabled=true"],
    );
    let role = named(&scoped, "Role", "tm-tokenmint");
    assert_eq!(role["metadata"]["namespace"], "apps");
    assert_eq!(apps(&rules(role)).len(), 3);
}

#[test]
fn rbac_values_switch_exactly_their_objects() {
    // rbac.aggregate=false: the operator keeps its roles, users get none from the chart.
    let docs = render("tokenmint", "tokenmint-system", &["rbac.aggregate=false"]);
    assert_eq!(
        names(&of_kind(&docs, &["ClusterRole"])),
        ["tokenmint".to_owned()].into()
    );
    assert_eq!(of_kind(&docs, &["Role"]).len(), 3);
    // rbac.create=false: no RBAC object at all, the aggregated roles included.
    let docs = render("tokenmint", "tokenmint-system", &["rbac.create=false"]);
    let rbac = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];
    assert!(
        of_kind(&docs, &rbac).is_empty(),
        "{}",
        to_yaml(&of_kind(&docs, &rbac))
    );
    // Without leader election there is no Lease Role; the seal key's and the usage records' stay.
    let docs = render(
        "tokenmint",
        "tokenmint-system",
        &["leaderElection.enabled=false"],
    );
    assert_eq!(
        names(&of_kind(&docs, &["Role"])),
        [
            "tokenmint-seal-key".to_owned(),
            "tokenmint-usage".to_owned()
        ]
        .into()
    );
}

#[test]
fn seal_key_and_replication_values_reach_the_operator_flags_and_rbac() {
    let docs = render(
        "tm",
        "ops",
        &[
            "seal.keySecretName=tm-seal",
            "allowReplicationAnnotations=true",
        ],
    );
    let args = container_args(&docs);
    assert!(
        args.iter().any(|a| a == "--seal-key-secret=tm-seal"),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a == "--allow-replication-annotations"),
        "{args:?}"
    );
    assert_eq!(
        rules(named(&docs, "Role", "tm-tokenmint-seal-key")),
        seal_key_rules("tm-seal")
    );
    // The seal key's namespace is the pod's own, from POD_NAMESPACE: no flag names another.
    assert!(
        !args.iter().any(|a| a.starts_with("--seal-key-namespace")),
        "{args:?}"
    );
}

// ---------------------------------------------------------------- alerts

fn alerts_file() -> Value {
    let path = format!("{REPO}/charts/tokenmint/files/alerts.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The `expr` of alert `name` in a rules file (or a PrometheusRule's spec).
fn alert_expr<'a>(rules_file: &'a Value, name: &str) -> &'a str {
    rules_file["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .find(|r| r["alert"] == name)
        .unwrap_or_else(|| panic!("no alert {name}"))["expr"]
        .as_str()
        .unwrap()
}

#[test]
fn prometheus_rule_is_the_plain_rules_file_with_the_chosen_threshold() {
    let defaults = render("tokenmint", "monitoring", &[]);
    assert!(
        of_kind(&defaults, &["PrometheusRule"]).is_empty(),
        "off by default"
    );

    let docs = render(
        "tokenmint",
        "monitoring",
        &[
            "prometheusRule.enabled=true",
            "prometheusRule.additionalLabels.release=kube-prometheus-stack",
        ],
    );
    let rule = one(&docs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    // One source: the spec is files/alerts.yaml as it is, with the default of 7 days.
    let file = alerts_file();
    assert_eq!(rule["spec"], file);
    for alert in [
        "TokenmintTokenExpiringSoon",
        "TokenmintRotationOverdue",
        "TokenmintReconcileErrors",
    ] {
        alert_expr(&file, alert);
    }
    // The metric names are the ones /metrics exports (a counter gets `_total`).
    assert!(
        alert_expr(&file, "TokenmintReconcileErrors").contains("tokenmint_reconcile_errors_total")
    );

    // Another threshold changes that number and nothing else.
    let docs = render(
        "tokenmint",
        "monitoring",
        &[
            "prometheusRule.enabled=true",
            "prometheusRule.expiringSoonDays=14",
        ],
    );
    let spec = one(&docs, "PrometheusRule")["spec"].clone();
    let expiring = alert_expr(&spec, "TokenmintTokenExpiringSoon");
    assert!(expiring.contains("< 14 * 86400"), "{expiring}");
    let as_default = serde_yaml::to_string(&spec)
        .unwrap()
        .replace("< 14 * 86400", "< 7 * 86400");
    assert_eq!(serde_yaml::from_str::<Value>(&as_default).unwrap(), file);
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = promtool_bin();
    let files = format!("{REPO}/charts/tokenmint/files");
    run(
        promtool,
        &["check", "rules", &format!("{files}/alerts.yaml")],
    );
    // Each alert fires for the series that should page and not for its near misses.
    let out = run(
        promtool,
        &["test", "rules", &format!("{files}/alerts_test.yaml")],
    );
    assert!(out.contains("SUCCESS"), "{out}");

    // What the chart renders with another threshold is a valid rules file too.
    let docs = render(
        "tokenmint",
        "monitoring",
        &[
            "prometheusRule.enabled=true",
            "prometheusRule.expiringSoonDays=30",
            "prometheusRule.unusedDays=90",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    let spec = &one(&docs, "PrometheusRule")["spec"];
    let text = serde_yaml::to_string(spec).unwrap();
    assert!(
        text.contains("> 90 * 86400") && text.contains("< 30 * 86400"),
        "{text}"
    );
    std::fs::write(&rendered, text).unwrap();
    run(promtool, &["check", "rules", rendered.to_str().unwrap()]);
}

#[test]
fn chart_refuses_values_it_cannot_honour() {
    let chart = chart();
    for (sets, expected) in [
        (
            &["replicas=2", "leaderElection.enabled=false"][..],
            "needs leaderElection.enabled",
        ),
        (
            &["logging.format=xml"][..],
            "value must be one of 'json', 'text'",
        ),
        (
            &["replica=2"][..],
            "additional properties 'replica' not allowed",
        ),
        (&["replicas=two"][..], "got string, want integer"),
        (&["seal.keySecretName=Seal_Key"][..], "/seal/keySecretName"),
        (
            &["prometheusRule.expiringSoonDays=0"][..],
            "expiringSoonDays",
        ),
        (
            &["authz.enabled=true", "authz.output=x"][..],
            "authz.verifier.name is required",
        ),
        (
            &["authz.enabled=true", "authz.verifier.name=v"][..],
            "authz.output is required",
        ),
        (&["authz.maxStale=1 minute"][..], "/authz/maxStale"),
    ] {
        let mut args = vec!["template", "x", chart.as_str()];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = Command::new(helm_bin()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sets:?} was accepted");
        assert!(stderr.contains(expected), "{sets:?}: {stderr}");
    }
}

/// `--set`s enabling authz for verifier `namespace/api` and its output `api-tokens`.
fn authz_values(namespace: &str) -> [String; 4] {
    [
        "authz.enabled=true".into(),
        format!("authz.verifier.namespace={namespace}"),
        "authz.verifier.name=api".into(),
        "authz.output=api-tokens".into(),
    ]
}

#[test]
fn authz_is_off_by_default_and_on_may_only_list_and_watch_its_output_secret_and_get_its_verifier() {
    let defaults = render("tokenmint", "tokenmint-system", &[]);
    assert!(
        defaults
            .iter()
            .all(|d| !d["metadata"]["name"].as_str().unwrap().ends_with("-authz")),
        "authz objects without authz.enabled"
    );
    let sets = authz_values("data");
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let docs = render("tokenmint", "tokenmint-system", &sets);
    let name = "tokenmint-authz";
    let role = named(&docs, "Role", name);
    assert_eq!(role["metadata"]["namespace"], "data");
    assert_eq!(
        rules(role),
        BTreeSet::from([
            row("", "secrets", &["api-tokens"], &["list", "watch"]),
            row("tokenmint.dev", "apitokenverifiers", &["api"], &["get"]),
        ])
    );
    let binding = named(&docs, "RoleBinding", name);
    assert_eq!(binding["metadata"]["namespace"], "data");
    assert_eq!(binding["subjects"][0]["name"], name);
    assert_eq!(binding["subjects"][0]["namespace"], "tokenmint-system");
    // Usage records in the release namespace: ConfigMaps, nothing else, nowhere else.
    let usage = named(&docs, "Role", "tokenmint-authz-usage");
    assert_eq!(usage["metadata"]["namespace"], "tokenmint-system");
    assert_eq!(
        rules(usage),
        BTreeSet::from([row("", "configmaps", &[], &["get", "create", "update"])])
    );
    // Nothing else is bound to authz's ServiceAccount.
    assert_eq!(
        bound_to_operator(&docs, name),
        bindings(&[
            ("Role", name, "data"),
            ("Role", "tokenmint-authz-usage", "tokenmint-system")
        ])
    );
    let deployment = named(&docs, "Deployment", name);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], name);
    let container = &pod["containers"][0];
    assert_eq!(container["command"][1], "authz");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--verifier=data/api"), "{args:?}");
    assert!(args.contains(&"--output=api-tokens"), "{args:?}");
    assert!(
        args.contains(&"--usage-namespace=$(POD_NAMESPACE)"),
        "{args:?}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The operator's Service, PDB and ServiceMonitor do not select authz's pods, nor its theirs.
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let operator = &named(&docs, "Deployment", "tokenmint")["spec"]["selector"]["matchLabels"];
    assert_ne!(selector, operator);
    assert_eq!(named(&docs, "Service", name)["spec"]["selector"], *selector);
}

#[tokio::test]
async fn authz_under_the_chart_role_serves_its_output_and_can_read_nothing_else() {
    use common::authz::Authz;
    let ns = TestNs::new("install-authz").await;
    let sets = authz_values(&ns.name);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let docs = render("tokenmint", &ns.name, &sets);
    let authz_docs: Vec<&Value> = of_kind(&docs, &["ServiceAccount", "Role", "RoleBinding"])
        .into_iter()
        .filter(|d| d["metadata"]["name"] == "tokenmint-authz")
        .collect();
    assert_eq!(authz_docs.len(), 3);
    apply_docs(&authz_docs);
    let token = ns.service_account_token("tokenmint-authz").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("authz.kubeconfig");
    common::kubeconfig_for_token(&token, &kubeconfig);

    let _op = common::Operator::start(&ns).await;
    common::verifiers::create_map_verifier(&ns, "api", "api-tokens").await;
    common::tokens::create(
        &ns,
        "app",
        common::tokens::spec_of(json!({"role": "reader", "audiences": ["api"]})),
    )
    .await;
    common::tokens::active(&ns, "app").await;
    let bearer = format!(
        "Bearer {}",
        common::tokens::data(&common::tokens::secret(&ns, "app").await.unwrap())["token"]
    );
    let verifier = format!("{}/api", ns.name);
    let authz = Authz::start(
        &["--verifier", &verifier, "--output", "api-tokens"],
        &kubeconfig,
    )
    .await;
    authz.wait_readyz(200, "authz ready under its Role").await;
    wait_for("the credential let in", WAIT, || async {
        (authz.verify("", Some(&bearer)).status == 200).then_some(())
    })
    .await;
    // The watch works under list+watch by name: a revocation arrives.
    common::tokens::set_spec(&ns, "app", json!({"revoked": true}))
        .await
        .unwrap();
    wait_for("the revoked credential refused", WAIT, || async {
        (authz.verify("", Some(&bearer)).status == 401).then_some(())
    })
    .await;
    // Through the watch, not through a get retried after a refused watch.
    let log = authz.log();
    assert!(!log.contains("failed") && !log.contains("broke"), "{log}");

    // With the same identity: no other Secret, no list but of that one name, nothing but that
    // one Secret and its verifier.
    let as_authz = common::client_for_token(&token).await;
    let secrets: Api<Secret> = Api::namespaced(as_authz.clone(), &ns.name);
    assert_eq!(
        status_code(
            secrets
                .list(&ListParams::default().fields("metadata.name=api-tokens"))
                .await
        ),
        200,
        "list of that one name"
    );
    assert_eq!(
        status_code(secrets.get("app").await),
        403,
        "the token's Secret"
    );
    assert_eq!(
        status_code(secrets.get("tokenmint-seal-key").await),
        403,
        "another Secret"
    );
    assert_eq!(
        status_code(secrets.list(&ListParams::default()).await),
        403,
        "list"
    );
    assert_eq!(
        status_code(
            secrets
                .list(&ListParams::default().fields("metadata.name=app"))
                .await
        ),
        403,
        "list of another name"
    );
    let verifiers: Api<tokenmint::api::verifier::ApiTokenVerifier> =
        Api::namespaced(as_authz.clone(), &ns.name);
    assert_eq!(status_code(verifiers.get("api").await), 200, "its verifier");
    assert_eq!(
        status_code(verifiers.list(&ListParams::default()).await),
        403,
        "other verifiers"
    );
    let tokens: Api<ApiToken> = Api::namespaced(as_authz.clone(), &ns.name);
    assert_eq!(
        status_code(tokens.list(&ListParams::default()).await),
        403,
        "ApiTokens"
    );
    let elsewhere: Api<Secret> = Api::namespaced(as_authz, "default");
    assert_eq!(
        status_code(elsewhere.get("api-tokens").await),
        403,
        "another namespace"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn rendered_manifests_are_accepted_by_the_apiserver() {
    common::ensure_crds();
    let ns = TestNs::new("install-dry-run").await;
    let chart = chart();
    for sets in [
        vec![],
        vec![
            format!("watchNamespace={}", ns.name),
            "replicas=2".into(),
            "podDisruptionBudget.enabled=true".into(),
        ],
    ] {
        let mut args = vec![
            "template",
            ns.name.as_str(),
            chart.as_str(),
            "--namespace",
            ns.name.as_str(),
            "--include-crds",
        ];
        for set in &sets {
            args.extend(["--set", set.as_str()]);
        }
        let yaml = helm(&args);
        let out = kubectl_stdin(
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                "--field-manager=helm",
                "-f",
                "-",
            ],
            &yaml,
        );
        assert!(
            out.status.success(),
            "server dry-run rejected the chart rendered with {sets:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let applied = String::from_utf8_lossy(&out.stdout);
        for kind in [
            "customresourcedefinition",
            "deployment",
            "serviceaccount",
            "service/",
        ] {
            assert!(applied.contains(kind), "{kind} missing from:\n{applied}");
        }
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_a_release() {
    common::ensure_crds();
    let ns = TestNs::new("install-helm").await;
    let (chart, kubeconfig) = (chart(), common::kubeconfig_path());
    let kubeconfig = kubeconfig.to_str().unwrap();
    let release = ns.name.as_str();
    let _release = Release(release.to_owned());
    let fullname = format!("{release}-tokenmint");
    let helm_in_ns = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--namespace", release, "--kubeconfig", kubeconfig]);
        helm(&all)
    };

    // The CRD is already there: Helm leaves an existing CRD alone. The node runs pods now: an image
    // that is never there keeps this cluster-wide release's pods from starting and racing the
    // operators of the tests beside it (tests/node.rs runs the chart's operator for real).
    helm_in_ns(&[
        "install",
        release,
        &chart,
        "--set",
        "image.repository=tokenmint.local/never-imported",
        "--set",
        "image.pullPolicy=Never",
    ]);
    let deployments = ns.api::<Deployment>();
    let deployment = deployments.get(&fullname).await.unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(1));
    let cluster_roles: Api<ClusterRole> = Api::all(ns.client.clone());
    assert!(cluster_roles.get_opt(&fullname).await.unwrap().is_some());

    // The documented upgrade: CRDs by hand, then the release.
    ok(kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &format!("{chart}/crds/"),
    ]));
    helm_in_ns(&[
        "upgrade",
        release,
        &chart,
        "--set",
        "replicas=2",
        "--set",
        "podDisruptionBudget.enabled=true",
    ]);
    let deployment = deployments.get(&fullname).await.unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));
    assert!(
        ns.api::<PodDisruptionBudget>()
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_some()
    );

    helm_in_ns(&["uninstall", release]);
    assert!(cluster_roles.get_opt(&fullname).await.unwrap().is_none());
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    assert!(
        crds.get_opt("apitokens.tokenmint.dev")
            .await
            .unwrap()
            .is_some(),
        "uninstall keeps the CRD"
    );
    ns.cleanup().await;
}

// ---------------------------------------------------------------- the operator as its ServiceAccount

/// The chart's RBAC applied for release `ns.name` in `ns`; cluster-scoped parts removed on drop.
struct Installed {
    _release: Release,
    service_account: String,
    /// The Deployment's flags for the operator, less the ones each [`Replica`] sets itself.
    args: Vec<String>,
}

impl Installed {
    /// Applies the ServiceAccount and the RBAC the chart renders with `sets`.
    fn rbac(ns: &TestNs, sets: &[&str]) -> Installed {
        let docs = render(&ns.name, &ns.name, sets);
        apply_docs(&of_kind(
            &docs,
            &[
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ],
        ));
        let service_account = one(&docs, "ServiceAccount")["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let args = container_args(&docs)
            .into_iter()
            .filter(|a| {
                !["--metrics-addr=", "--log-format=", "--namespace="]
                    .iter()
                    .any(|own| a.starts_with(own))
            })
            .collect();
        Installed {
            _release: Release(ns.name.clone()),
            service_account,
            args,
        }
    }

    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    fn lease_name(&self) -> &str {
        self.flag("--leader-election-lease=")
    }

    fn seal_key_name(&self) -> &str {
        self.flag("--seal-key-secret=")
    }

    /// The value of the chart's flag `prefix` (e.g. `--seal-key-secret=`).
    fn flag(&self, prefix: &str) -> &str {
        self.args
            .iter()
            .find_map(|a| a.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("the chart passes no {prefix}: {:?}", self.args))
    }
}

// ---------------------------------------------------------------- operator processes

/// `tokenmint run` as a child process with its own kubeconfig, identity and log file.
struct Replica {
    name: String,
    child: Option<Child>,
    metrics: std::net::SocketAddr,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts `tokenmint run --namespace ns` as pod `name` in `ns`, with `kubeconfig` (admin if None).
    async fn start(name: &str, ns: &str, kubeconfig: Option<&Path>, extra: &[&str]) -> Replica {
        Self::start_in(name, ns, ns, kubeconfig, extra).await
    }

    /// Starts `tokenmint run --namespace watch` as pod `name` running in `pod_namespace`.
    async fn start_in(
        name: &str,
        watch: &str,
        pod_namespace: &str,
        kubeconfig: Option<&Path>,
        extra: &[&str],
    ) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join(format!("{name}.log"));
        let log = File::create(&log_path).unwrap();
        let metrics = common::free_addr();
        let kubeconfig = kubeconfig
            .map(Path::to_path_buf)
            .unwrap_or_else(common::kubeconfig_path);
        let child = Command::new(env!("CARGO_BIN_EXE_tokenmint"))
            .args(["run", "--namespace", watch, "--log-format", "json"])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", pod_namespace)
            .env_remove("TOKENMINT_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the tokenmint binary");
        let mut replica = Replica {
            name: name.into(),
            child: Some(child),
            metrics,
            log_path,
            _dir: dir,
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(metrics).await.is_err() {
            if let Some(status) = replica.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{name} exited during startup ({status}):\n{}",
                    replica.log()
                );
            }
            assert!(
                started.elapsed() < WAIT,
                "{name}: metrics endpoint not up:\n{}",
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    /// Starts with `--leader-elect` and the Lease in `ns`.
    async fn leader_elect(name: &str, ns: &str, kubeconfig: Option<&Path>) -> Replica {
        Self::start(
            name,
            ns,
            kubeconfig,
            &["--leader-elect", "--leader-election-namespace", ns],
        )
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET on the metrics port: status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        let (addr, path) = (self.metrics, path.to_owned());
        tokio::task::spawn_blocking(move || common::http_get(addr, &path))
            .await
            .unwrap()
    }

    /// SIGKILL, as in a crash or an OOM kill.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as the kubelet sends; returns the exit status and how long the exit took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let sent = Instant::now();
        ok_status(
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap(),
        );
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("{} ignored SIGTERM for 30s:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own.
    async fn exited(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for("the replica to exit", timeout, || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await;
        self.child = None;
        status
    }
}

fn ok_status(status: ExitStatus) {
    assert!(status.success(), "{status}");
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

// ---------------------------------------------------------------- ApiTokens

fn reader_token(name: &str) -> ApiToken {
    serde_json::from_value(json!({
        "apiVersion": "tokenmint.dev/v1alpha1",
        "kind": "ApiToken",
        "metadata": { "name": name },
        "spec": { "role": "reader" },
    }))
    .unwrap()
}

async fn create_token(ns: &TestNs, name: &str) {
    ns.api::<ApiToken>()
        .create(&PostParams::default(), &reader_token(name))
        .await
        .unwrap();
}

/// A verifier with a sha256-map output and a token for it in `ns`: waits until the output holds the
/// token's credential and the verifier is Ready.
async fn verify_one(ns: &TestNs) {
    let spec = json!({"outputs": [{"secretName": "web-map", "format": "sha256-map"}]});
    common::verifiers::create_verifier(ns, "web", spec).await;
    let checked = common::tokens::spec_of(json!({"role": "reader", "audiences": ["web"]}));
    common::tokens::create(ns, "checked", checked).await;
    let key = wait_token(ns, "checked", "Active", |t| phase(t) == Some(Phase::Active))
        .await
        .status
        .and_then(|s| s.access_key)
        .unwrap();
    common::verifiers::wait_published(ns, "web", "web-map", &key).await;
}

async fn wait_token(
    ns: &TestNs,
    name: &str,
    what: &str,
    pred: impl Fn(&ApiToken) -> bool,
) -> ApiToken {
    wait_for(&format!("ApiToken {name}: {what}"), WAIT, || async {
        let token = ns.api::<ApiToken>().get(name).await.ok()?;
        pred(&token).then_some(token)
    })
    .await
}

fn phase(token: &ApiToken) -> Option<Phase> {
    token.status.as_ref()?.phase
}

fn fingerprint(token: &ApiToken) -> String {
    token
        .status
        .as_ref()
        .and_then(|s| s.fingerprint.clone())
        .unwrap_or_default()
}

fn rotations(token: &ApiToken) -> Option<u64> {
    token.status.as_ref()?.rotations
}

async fn events_of(ns: &TestNs, token: &str) -> Vec<Event> {
    ns.api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(token))
        .collect()
}

async fn lease_holder(ns: &TestNs) -> Option<String> {
    let lease = ns.api::<Lease>().get_opt(LEASE_NAME).await.unwrap()?;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn wait_holder(ns: &TestNs, holder: &str, timeout: Duration) {
    wait_for(&format!("Lease holder {holder}"), timeout, || async {
        (lease_holder(ns).await.as_deref() == Some(holder)).then_some(())
    })
    .await
}

fn status_code(result: Result<impl Sized, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(e) => panic!("expected an API answer, got {e}"),
    }
}

// ---------------------------------------------------------------- RBAC end to end

#[tokio::test]
async fn chart_rbac_is_enough_to_issue_rotate_and_revoke() {
    common::ensure_crds();
    let ns = TestNs::new("install-rbac").await;
    let installed = Installed::rbac(&ns, &[]);
    let token = ns.service_account_token(&installed.service_account).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    common::kubeconfig_for_token(&token, &kubeconfig);

    // With the chart's flags: leader election on, the Lease in the release namespace.
    let _operator = Replica::start("rbac-0", &ns.name, Some(&kubeconfig), &installed.args()).await;

    create_token(&ns, "rbac").await;
    let issued = wait_token(&ns, "rbac", "Active", |t| phase(t) == Some(Phase::Active)).await;
    assert!(
        ns.api::<Secret>().get_opt("rbac").await.unwrap().is_some(),
        "Secret issued"
    );
    let issued_event = wait_for("an Issued Event", WAIT, || async {
        events_of(&ns, "rbac")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Issued"))
    })
    .await;
    assert_eq!(issued_event.reporting_instance.as_deref(), Some("rbac-0"));

    let patch = json!({ "metadata": { "annotations": { "tokenmint.dev/rotate": "1" } } });
    ns.api::<ApiToken>()
        .patch("rbac", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rotated = wait_token(&ns, "rbac", "rotated once", |t| rotations(t) == Some(1)).await;
    assert_ne!(fingerprint(&rotated), fingerprint(&issued));

    // A verifier: the chart's rights read it, write its output Secret and its status.
    verify_one(&ns).await;

    let patch = json!({ "spec": { "revoked": true } });
    ns.api::<ApiToken>()
        .patch("rbac", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_token(&ns, "rbac", "Revoked", |t| phase(t) == Some(Phase::Revoked)).await;
    wait_for("the Secret to be deleted", WAIT, || async {
        ns.api::<Secret>()
            .get_opt("rbac")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let held = ns.api::<Lease>().get(installed.lease_name()).await.unwrap();
    assert_eq!(
        held.spec.unwrap().holder_identity.as_deref(),
        Some("rbac-0")
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn chart_rbac_denies_what_the_operator_does_not_need() {
    common::ensure_crds();
    let ns = TestNs::new("install-deny").await;
    let installed = Installed::rbac(&ns, &[]);
    let as_operator =
        common::client_for_token(&ns.service_account_token(&installed.service_account).await).await;
    let tokens: Api<ApiToken> = Api::namespaced(as_operator.clone(), &ns.name);
    create_token(&ns, "victim").await;

    // Allowed: exactly what the operator does.
    assert_eq!(status_code(tokens.list(&ListParams::default()).await), 200);
    assert_eq!(
        status_code(
            Api::<Secret>::namespaced(as_operator.clone(), &ns.name)
                .list(&ListParams::default())
                .await
        ),
        200
    );

    // ApiTokens belong to their users: no reading one by one, no edits, no deletes.
    assert_eq!(
        status_code(tokens.get("victim").await),
        403,
        "get apitokens"
    );
    let edit = json!({ "spec": { "role": "admin" } });
    assert_eq!(
        status_code(
            tokens
                .patch("victim", &PatchParams::default(), &Patch::Merge(&edit))
                .await
        ),
        403
    );
    let victim = ns.api::<ApiToken>().get("victim").await.unwrap();
    assert_eq!(
        status_code(
            tokens
                .replace("victim", &PostParams::default(), &victim)
                .await
        ),
        403,
        "update apitokens"
    );
    assert_eq!(
        status_code(tokens.delete("victim", &DeleteParams::default()).await),
        403,
        "delete apitokens"
    );

    // Nothing outside its resources. ConfigMaps: it reads usage records in its own namespace
    // only, and writes none.
    let elsewhere: Api<ConfigMap> = Api::namespaced(as_operator.clone(), "default");
    assert_eq!(
        status_code(elsewhere.list(&ListParams::default()).await),
        403,
        "list configmaps outside the release namespace"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(as_operator.clone(), &ns.name);
    assert_eq!(
        status_code(configmaps.list(&ListParams::default()).await),
        200,
        "list usage records in the release namespace"
    );
    let forged: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "tokenmint-usage-x"}})).unwrap();
    assert_eq!(
        status_code(configmaps.create(&PostParams::default(), &forged).await),
        403,
        "create configmaps"
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "escape" },
        "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(as_operator.clone(), &ns.name);
    assert_eq!(
        status_code(pods.create(&PostParams::default(), &pod).await),
        403,
        "create pods"
    );
    let namespaces: Api<Namespace> = Api::all(as_operator.clone());
    assert_eq!(
        status_code(namespaces.delete(&ns.name, &DeleteParams::default()).await),
        403,
        "delete namespaces"
    );

    // Secrets: no blind overwrite (update), only conditional writes by apply/create/delete.
    let secrets: Api<Secret> = Api::namespaced(as_operator.clone(), &ns.name);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let current = ns.api::<Secret>().get("x").await.unwrap();
    assert_eq!(
        status_code(secrets.replace("x", &PostParams::default(), &current).await),
        403,
        "update secrets"
    );

    // Leases: only its own, and not listed.
    let leases: Api<Lease> = Api::namespaced(as_operator.clone(), &ns.name);
    assert_eq!(
        status_code(leases.list(&ListParams::default()).await),
        403,
        "list leases"
    );
    let other = Lease {
        metadata: ObjectMeta {
            name: Some("someone-else".into()),
            ..Default::default()
        },
        spec: None,
    };
    ns.api::<Lease>()
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    assert_eq!(
        status_code(leases.get("someone-else").await),
        403,
        "get another Lease"
    );
    let current = ns.api::<Lease>().get("someone-else").await.unwrap();
    assert_eq!(
        status_code(
            leases
                .replace("someone-else", &PostParams::default(), &current)
                .await
        ),
        403
    );
    // And no Lease rights outside the release namespace.
    let default_leases: Api<Lease> = Api::namespaced(as_operator.clone(), "kube-system");
    assert_eq!(
        status_code(default_leases.create(&PostParams::default(), &other).await),
        403,
        "Lease elsewhere"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn watch_namespace_rbac_works_there_and_nowhere_else() {
    common::ensure_crds();
    // The release (ServiceAccount, Lease, seal key) in one namespace, the tokens in another.
    let release = TestNs::new("install-ns-rbac").await;
    let apps = TestNs::new("install-ns-apps").await;
    let watch = format!("watchNamespace={}", apps.name);
    let installed = Installed::rbac(&release, &[&watch]);
    let token = release
        .service_account_token(&installed.service_account)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    common::kubeconfig_for_token(&token, &kubeconfig);
    assert!(installed.args.contains(&"--leader-elect".to_owned()));
    let _operator = Replica::start_in(
        "ns-rbac-0",
        &apps.name,
        &release.name,
        Some(&kubeconfig),
        &installed.args(),
    )
    .await;
    create_token(&apps, "scoped").await;
    wait_token(&apps, "scoped", "Active", |t| {
        phase(t) == Some(Phase::Active)
    })
    .await;
    // A verifier in the watched namespace works without reading any Namespace.
    verify_one(&apps).await;
    let held = release
        .api::<Lease>()
        .get(installed.lease_name())
        .await
        .unwrap();
    assert_eq!(
        held.spec.unwrap().holder_identity.as_deref(),
        Some("ns-rbac-0")
    );

    let as_operator = common::client_for_token(&token).await;
    assert_eq!(
        status_code(
            Api::<ApiToken>::all(as_operator.clone())
                .list(&ListParams::default())
                .await
        ),
        403
    );
    for elsewhere in ["default", release.name.as_str()] {
        assert_eq!(
            status_code(
                Api::<Secret>::namespaced(as_operator.clone(), elsewhere)
                    .list(&ListParams::default())
                    .await
            ),
            403,
            "list secrets in {elsewhere}"
        );
    }
    apps.cleanup().await;
    release.cleanup().await;
}

/// Writes each of `docs` with server-side apply, as Helm would.
fn apply_docs(docs: &[&Value]) {
    ok(kubectl_stdin(
        &["apply", "--server-side", "--field-manager=helm", "-f", "-"],
        &to_yaml(docs),
    ));
}

#[tokio::test]
async fn seal_key_role_allows_creating_and_reading_the_key_and_no_other_secret() {
    common::ensure_crds();
    let release = TestNs::new("install-seal").await;
    let apps = TestNs::new("install-seal-apps").await;
    let watch = format!("watchNamespace={}", apps.name);
    let installed = Installed::rbac(&release, &[&watch]);
    let as_operator = common::client_for_token(
        &release
            .service_account_token(&installed.service_account)
            .await,
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(as_operator.clone(), &release.name);
    let key = installed.seal_key_name();
    let secret = |name: &str| Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };

    // Looking for the key before it exists is allowed: 404, not 403. (Also waits until the
    // API server's authorizer has seen the RoleBinding.)
    wait_for(
        "the seal-key Role to let the operator look",
        WAIT,
        || async { (status_code(secrets.get(key).await) == 404).then_some(()) },
    )
    .await;
    assert_eq!(
        status_code(secrets.create(&PostParams::default(), &secret(key)).await),
        200,
        "create the seal key"
    );
    assert_eq!(
        status_code(secrets.get(key).await),
        200,
        "read the seal key"
    );

    // Written once: no update, patch or delete of the key.
    let current = release.api::<Secret>().get(key).await.unwrap();
    assert_eq!(
        status_code(secrets.replace(key, &PostParams::default(), &current).await),
        403,
        "update the seal key"
    );
    let relabel = json!({ "metadata": { "labels": { "x": "y" } } });
    assert_eq!(
        status_code(
            secrets
                .patch(key, &PatchParams::default(), &Patch::Merge(&relabel))
                .await
        ),
        403,
        "patch the seal key"
    );
    assert_eq!(
        status_code(secrets.delete(key, &DeleteParams::default()).await),
        403,
        "delete the seal key"
    );

    // No other Secret of the release namespace can be read, one by one or as a list.
    release
        .api::<Secret>()
        .create(&PostParams::default(), &secret("someone-elses"))
        .await
        .unwrap();
    assert_eq!(status_code(secrets.get("someone-elses").await), 403);
    assert_eq!(
        status_code(secrets.list(&ListParams::default()).await),
        403,
        "list secrets"
    );
    // A create request names no object RBAC could match, so `create` is not limited to the
    // key's name: the operator could create (never read back) other Secrets here.
    assert_eq!(
        status_code(
            secrets
                .create(&PostParams::default(), &secret("another"))
                .await
        ),
        200
    );
    apps.cleanup().await;
    release.cleanup().await;
}

// ---------------------------------------------------------------- users' roles

/// A ServiceAccount `account` of `ns`, bound in `ns` to the built-in ClusterRole `role`.
async fn bound_to(ns: &TestNs, account: &str, role: &str) -> kube::Client {
    let token = ns.service_account_token(account).await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": account },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [{ "kind": "ServiceAccount", "name": account, "namespace": ns.name }],
    }))
    .unwrap();
    ns.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    common::client_for_token(&token).await
}

/// Waits until the built-in ClusterRole `role` holds every rule of `expected`, as the
/// clusterrole-aggregation controller of kube-controller-manager copies them in.
async fn wait_aggregated(ns: &TestNs, role: &str, expected: &BTreeSet<Rule>) {
    let roles: Api<ClusterRole> = Api::all(ns.client.clone());
    let what = format!(
        "the built-in {role} ClusterRole to aggregate tokenmint's rules \
         (kube-controller-manager must run the clusterrole-aggregation controller)"
    );
    wait_for(&what, WAIT, || async {
        let current = serde_yaml::to_value(roles.get(role).await.ok()?).unwrap();
        expected.is_subset(&rules(&current)).then_some(())
    })
    .await
}

/// The status codes of a merge patch of ApiToken `name`'s spec and of one of its status.
async fn patch_spec_and_status(tokens: &Api<ApiToken>, name: &str) -> (u16, u16) {
    let spec = json!({ "spec": { "role": "writer" } });
    let status = json!({ "status": { "phase": "Active", "accessKey": "forged" } });
    let params = PatchParams::default();
    (
        status_code(tokens.patch(name, &params, &Patch::Merge(&spec)).await),
        status_code(
            tokens
                .patch_status(name, &params, &Patch::Merge(&status))
                .await,
        ),
    )
}

#[tokio::test]
async fn aggregated_roles_let_editors_write_tokens_but_never_their_status() {
    common::ensure_crds();
    let ns = TestNs::new("install-aggregate").await;
    let docs = render(&ns.name, &ns.name, &[]);
    let fullname = format!("{}-tokenmint", ns.name);
    let _release = Release(ns.name.clone());
    apply_docs(&[
        named(&docs, "ClusterRole", &format!("{fullname}-view")),
        named(&docs, "ClusterRole", &format!("{fullname}-edit")),
    ]);
    // view flows into edit, edit into admin (the built-in roles' own labels).
    let writing: BTreeSet<Rule> = view_rules().union(&edit_rules()).cloned().collect();
    wait_aggregated(&ns, "view", &view_rules()).await;
    wait_aggregated(&ns, "edit", &writing).await;
    wait_aggregated(&ns, "admin", &writing).await;

    // An editor creates, changes and reads ApiTokens. The first create also waits for the
    // authorizer to see the RoleBinding and the aggregated rules.
    let editor = bound_to(&ns, "editor", "edit").await;
    let as_editor: Api<ApiToken> = Api::namespaced(editor, &ns.name);
    let created = reader_token("edited");
    wait_for(
        "the editor to be allowed to create an ApiToken",
        WAIT,
        || async {
            match as_editor.create(&PostParams::default(), &created).await {
                Ok(token) => Some(token),
                Err(kube::Error::Api(status)) if status.code == 403 => None,
                Err(e) => panic!("creating an ApiToken as an editor: {e}"),
            }
        },
    )
    .await;
    assert_eq!(status_code(as_editor.get("edited").await), 200);
    // ... patches its spec but cannot forge the operator's record.
    assert_eq!(
        patch_spec_and_status(&as_editor, "edited").await,
        (200, 403)
    );
    let current = ns.api::<ApiToken>().get("edited").await.unwrap();
    assert_eq!(
        status_code(
            as_editor
                .replace_status("edited", &PostParams::default(), &current)
                .await
        ),
        403,
        "update apitokens/status"
    );

    // A viewer reads tokens and their status and writes nothing.
    let viewer = bound_to(&ns, "viewer", "view").await;
    let as_viewer: Api<ApiToken> = Api::namespaced(viewer, &ns.name);
    wait_for(
        "the viewer to be allowed to list ApiTokens",
        WAIT,
        || async {
            (status_code(as_viewer.list(&ListParams::default()).await) == 200).then_some(())
        },
    )
    .await;
    assert_eq!(status_code(as_viewer.get_status("edited").await), 200);
    assert_eq!(
        status_code(
            as_viewer
                .create(&PostParams::default(), &reader_token("viewed"))
                .await
        ),
        403,
        "create apitokens as a viewer"
    );
    assert_eq!(
        patch_spec_and_status(&as_viewer, "edited").await,
        (403, 403)
    );
    assert_eq!(
        status_code(as_viewer.delete("edited", &DeleteParams::default()).await),
        403,
        "delete apitokens as a viewer"
    );
    assert_eq!(
        status_code(as_editor.delete("edited", &DeleteParams::default()).await),
        200,
        "delete apitokens as an editor"
    );
    ns.cleanup().await;
}

// ---------------------------------------------------------------- high availability

#[tokio::test]
async fn one_leader_writes_and_a_follower_takes_over_after_a_crash_without_reminting() {
    common::ensure_crds();
    let ns = TestNs::new("install-failover").await;
    let mut a = Replica::leader_elect("replica-a", &ns.name, None).await;
    wait_holder(&ns, "replica-a", WAIT).await;
    let b = Replica::leader_elect("replica-b", &ns.name, None).await;

    create_token(&ns, "ha").await;
    let before = wait_token(&ns, "ha", "Active", |t| phase(t) == Some(Phase::Active)).await;
    let secret_before = ns.api::<Secret>().get("ha").await.unwrap();

    // One writer: the Lease names a, every Event was reported by a, b did nothing but wait.
    assert_eq!(lease_holder(&ns).await.as_deref(), Some("replica-a"));
    // Events are recorded after the status write, so they may trail it.
    let events = wait_for("the Issued Event", WAIT, || async {
        Some(events_of(&ns, "ha").await).filter(|e| !e.is_empty())
    })
    .await;
    for event in &events {
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some("replica-a"),
            "{event:?}"
        );
    }
    assert!(
        !b.log().contains("\"reason\":\"Issued\""),
        "the follower reconciled:\n{}",
        b.log()
    );
    assert!(!b.log().contains("now leading"));
    assert_eq!(
        b.get("/readyz").await.0,
        200,
        "a standing-by follower is ready"
    );
    wait_for("the leader to be ready (caches synced)", WAIT, || async {
        (a.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert!(
        !b.get("/metrics").await.1.contains("tokenmint_token_info{"),
        "the follower has no token series"
    );

    // Crash the leader; b takes over once the Lease has stood still for its duration.
    a.kill();
    let crashed = Instant::now();
    wait_holder(&ns, "replica-b", LEASE_DURATION + 3 * RETRY_PERIOD).await;
    let takeover = crashed.elapsed();
    wait_for("the new leader to reconcile the token", WAIT, || async {
        b.get("/metrics")
            .await
            .1
            .contains(r#"tokenmint_token_info{namespace=""#)
            .then_some(())
    })
    .await;
    let first_reconcile = crashed.elapsed();
    wait_for("the new leader to be ready", WAIT, || async {
        (b.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    eprintln!(
        "failover: Lease taken over {takeover:?} after kill -9, first reconcile after {first_reconcile:?}"
    );

    // Nothing was minted twice: same credential, same count, same Secret.
    let after = ns.api::<ApiToken>().get("ha").await.unwrap();
    assert_eq!(fingerprint(&after), fingerprint(&before));
    assert_eq!(rotations(&after), Some(0));
    let secret_after = ns.api::<Secret>().get("ha").await.unwrap();
    assert_eq!(secret_after.data, secret_before.data);
    assert_eq!(
        secret_after.metadata.resource_version,
        secret_before.metadata.resource_version
    );
    let reasons: Vec<_> = events_of(&ns, "ha")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons, ["Issued"]);

    // The new leader does the work from now on.
    create_token(&ns, "after-failover").await;
    wait_token(&ns, "after-failover", "Active", |t| {
        phase(t) == Some(Phase::Active)
    })
    .await;
    let event = wait_for("an Issued Event", WAIT, || async {
        events_of(&ns, "after-failover").await.into_iter().next()
    })
    .await;
    assert_eq!(event.reporting_instance.as_deref(), Some("replica-b"));
    let transitions = ns
        .api::<Lease>()
        .get(LEASE_NAME)
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    assert_eq!(transitions, Some(1));
    ns.cleanup().await;
}

#[tokio::test]
async fn sigterm_finishes_releases_the_lease_and_exits_zero() {
    common::ensure_crds();
    let ns = TestNs::new("install-sigterm").await;
    let mut a = Replica::leader_elect("replica-a", &ns.name, None).await;
    wait_holder(&ns, "replica-a", WAIT).await;
    let mut b = Replica::leader_elect("replica-b", &ns.name, None).await;
    create_token(&ns, "calm").await;
    let before = wait_token(&ns, "calm", "Active", |t| phase(t) == Some(Phase::Active)).await;

    let (status, took) = a.terminate();
    assert!(
        status.success(),
        "leader exit status {status}:\n{}",
        a.log()
    );
    assert!(
        took < Duration::from_secs(5),
        "leader took {took:?} to exit"
    );
    assert!(a.log().contains("released the Lease"), "{}", a.log());

    // Released, so the follower does not wait out the lease duration.
    let released = Instant::now();
    wait_holder(&ns, "replica-b", 2 * RETRY_PERIOD + Duration::from_secs(1)).await;
    eprintln!(
        "handover after SIGTERM: leader exited in {took:?}, follower leading {:?} later",
        released.elapsed()
    );
    let after = ns.api::<ApiToken>().get("calm").await.unwrap();
    assert_eq!(fingerprint(&after), fingerprint(&before));

    // The last replica going away leaves the Lease free.
    let (status, took) = b.terminate();
    assert!(status.success(), "{status}:\n{}", b.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(lease_holder(&ns).await, None);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_follower_exits_zero_on_sigterm_without_touching_the_lease() {
    common::ensure_crds();
    let ns = TestNs::new("install-follower").await;
    let _a = Replica::leader_elect("replica-a", &ns.name, None).await;
    wait_holder(&ns, "replica-a", WAIT).await;
    let mut b = Replica::leader_elect("replica-b", &ns.name, None).await;
    wait_for("the follower to look at the Lease", WAIT, || async {
        (b.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (status, took) = b.terminate();
    assert!(status.success(), "{status}:\n{}", b.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(lease_holder(&ns).await.as_deref(), Some("replica-a"));
    ns.cleanup().await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_and_exits_non_zero() {
    common::ensure_crds();
    let ns = TestNs::new("install-lost").await;
    let mut a = Replica::leader_elect("replica-a", &ns.name, None).await;
    wait_holder(&ns, "replica-a", WAIT).await;

    // Someone else claims the Lease (as a partitioned leader would find on its return).
    let leases = ns.api::<Lease>();
    let mut lease = leases.get(LEASE_NAME).await.unwrap();
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    leases
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
        .unwrap();

    // It notices at its next renewal (every 5 s) and stops rather than write alongside.
    let status = a.exited(WAIT).await;
    assert_eq!(status.code(), Some(1), "{}", a.log());
    assert!(a.log().contains("lost the Lease"), "{}", a.log());
    assert_eq!(lease_holder(&ns).await.as_deref(), Some("intruder"));
    ns.cleanup().await;
}
