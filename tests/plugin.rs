//! The kubectl plugin (`kubectl-apitoken`) as a user runs it: the built binary against the local
//! control plane (`make cluster-up`), with `--kubeconfig`, and the operator running in the test's
//! namespace. Tests fail, never skip, when the cluster is unreachable.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Operator, TestNs, ensure_crds, kubectl_stdin, ok, wait_for};
use k8s_openapi::api::core::v1::Secret;
use tokenmint::api::{ApiToken, Phase, ROTATE_ANNOTATION};
use tokenmint_harness::read_request_head;

const WAIT: Duration = Duration::from_secs(30);
const STARTREE_BEARER: &str = "st-XkQBXKr652MV1VF9-5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg";
const STARTREE_BASIC: &str = "NGNlZmI4NDgwZjhmNGE3ODg2YTVjOWRhMTA1NmE3YjU6eVlHVVlsV1BVaU5OTjQ2bkZaY09vM2FUT3FJQ1AyYUFrMXF4VDVCOEFKUT0=";

/// One finished run of the plugin.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "plugin failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Asserts a non-zero exit whose `error: ...` line contains `needle`; returns stderr.
    fn fails_with(self, needle: &str) -> String {
        assert_ne!(
            self.code,
            Some(0),
            "plugin should have failed:\nstdout: {}",
            self.stdout
        );
        assert!(self.code.is_some(), "plugin was killed:\n{}", self.stderr);
        assert!(
            self.stderr.contains("error: ") && self.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{}",
            self.stderr
        );
        self.stderr
    }
}

/// Runs the plugin with `kubeconfig` (or none at all), no `KUBECONFIG`, an empty `HOME` (so no
/// `~/.kube/config` can be found by accident) and `stdin` (not a terminal).
fn run_plugin(kubeconfig: Option<&Path>, args: &[&str], stdin: &str) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-apitoken"));
    if let Some(path) = kubeconfig {
        command.arg("--kubeconfig").arg(path);
    }
    command
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", home.path());
    let out = common::output_with_stdin(&mut command, stdin);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The plugin against the local cluster, in namespace `ns`.
fn plugin(ns: &TestNs, args: &[&str]) -> Run {
    let mut all = vec!["-n", ns.name.as_str()];
    all.extend_from_slice(args);
    run_plugin(Some(&common::kubeconfig_path()), &all, "")
}

async fn token(ns: &TestNs, name: &str) -> ApiToken {
    ns.api::<ApiToken>().get(name).await.unwrap()
}

async fn secret_data(ns: &TestNs, name: &str) -> std::collections::BTreeMap<String, String> {
    let secret = ns.api::<Secret>().get(name).await.unwrap();
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

/// Creates `name` with the plugin (`create --wait`) and returns it once the operator issued it.
async fn issued(ns: &TestNs, name: &str, extra: &[&str]) -> ApiToken {
    let mut args = vec!["create", name, "--role", "reader", "--wait"];
    args.extend_from_slice(extra);
    let out = plugin(ns, &args).ok();
    assert!(
        out.contains(&format!("apitoken.tokenmint.dev/{name} created")),
        "{out}"
    );
    let t = token(ns, name).await;
    assert_eq!(t.status.as_ref().and_then(|s| s.phase), Some(Phase::Active));
    t
}

/// A kubeconfig whose server refuses connections (a port nothing listens on).
fn unreachable_kubeconfig(dir: &Path) -> (PathBuf, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    (write_kubeconfig(dir, &url, None, "token: not-used"), url)
}

fn write_kubeconfig(dir: &Path, server: &str, ca_data: Option<&str>, user: &str) -> PathBuf {
    let ca = ca_data
        .map(|ca| format!(", certificate-authority-data: {ca}"))
        .unwrap_or_default();
    let yaml = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: c, cluster: {{server: \"{server}\"{ca}}}}}]\n\
         users: [{{name: u, user: {{{user}}}}}]\n\
         contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n\
         current-context: c\n"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, yaml).unwrap();
    path
}

// ------------------------------------------------------------------ create

#[tokio::test]
async fn create_prints_a_manifest_without_a_cluster_that_the_api_server_accepts() {
    ensure_crds();
    let ns = TestNs::new("plugin-manifest").await;
    let args = [
        "create",
        "superset-reader",
        "--role",
        "reader",
        "--scope",
        "DATASOURCES:READ:events:tenant_id = 42",
        "--scope",
        "PIPES:READ:top_pages",
        "--description",
        "Superset dashboards",
        "--rotate-every",
        "30d",
        "--expires-at",
        "2099-06-30T00:00:00Z",
        "--secret-name",
        "superset-reader-token",
        "-o",
        "yaml",
    ];
    // No kubeconfig anywhere: printing a manifest must not need one.
    let yaml = run_plugin(None, &args, "").ok();
    let manifest: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(manifest["apiVersion"], "tokenmint.dev/v1alpha1");
    assert_eq!(manifest["kind"], "ApiToken");
    assert_eq!(manifest["metadata"]["name"], "superset-reader");
    assert!(manifest["metadata"].get("namespace").is_none(), "{yaml}");
    assert_eq!(manifest["spec"]["scopes"][0]["filter"], "tenant_id = 42");
    assert_eq!(manifest["spec"]["rotation"]["period"], "30d");
    assert!(manifest.get("status").is_none(), "{yaml}");

    // With -n the namespace is written, and a kubeconfig that points nowhere is never contacted.
    let dir = tempfile::tempdir().unwrap();
    let (nowhere, _) = unreachable_kubeconfig(dir.path());
    let mut with_ns = vec!["-n", ns.name.as_str()];
    with_ns.extend_from_slice(&args);
    let namespaced = run_plugin(Some(&nowhere), &with_ns, "").ok();
    let manifest: serde_yaml::Value = serde_yaml::from_str(&namespaced).unwrap();
    assert_eq!(manifest["metadata"]["namespace"], ns.name.as_str());

    // The API server accepts the manifest as it is (dry run: nothing is stored).
    ok(kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=gitops",
            "-f",
            "-",
        ],
        &namespaced,
    ));
    ok(kubectl_stdin(
        &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
        &yaml,
    ));
    assert!(
        ns.api::<ApiToken>()
            .get_opt("superset-reader")
            .await
            .unwrap()
            .is_none()
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn create_applies_the_token_and_the_operator_issues_it() {
    let ns = TestNs::new("plugin-create").await;
    let _operator = Operator::start(&ns).await;
    let args = [
        "create",
        "superset-reader",
        "--role",
        "reader",
        "--scope",
        "DATASOURCES:READ:events:tenant_id = 42",
        "--scope",
        "ADMIN",
        "--description",
        "Superset dashboards",
        "--rotate-every",
        "30d",
        "--secret-name",
        "superset-reader-token",
        "--wait",
    ];
    let run = plugin(&ns, &args);
    let stderr = run.stderr.clone();
    let out = run.ok();
    assert!(
        out.contains("apitoken.tokenmint.dev/superset-reader created"),
        "{out}"
    );

    let t = token(&ns, "superset-reader").await;
    let status = t.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Active));
    assert_eq!(t.spec.role, "reader");
    assert_eq!(t.spec.description.as_deref(), Some("Superset dashboards"));
    assert_eq!(
        t.spec.rotation.as_ref().map(|r| r.period.as_str()),
        Some("30d")
    );
    let scopes: Vec<String> = t
        .spec
        .scopes
        .iter()
        .flatten()
        .map(|s| s.canonical())
        .collect();
    assert_eq!(scopes, ["DATASOURCES:READ:events:tenant_id = 42", "ADMIN"]);
    let managers: Vec<_> = t
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"kubectl-apitoken".to_string()),
        "{managers:?}"
    );

    // --wait reported what the operator issued, and nothing secret.
    let access_key = status.access_key.clone().unwrap();
    assert!(
        out.contains(&access_key) && out.contains(status.fingerprint.as_deref().unwrap()),
        "{out}"
    );
    let data = secret_data(&ns, "superset-reader-token").await;
    assert_eq!(data["username"], access_key);
    assert_eq!(
        data["scopes"],
        "DATASOURCES:READ:events:tenant_id = 42\nADMIN"
    );
    assert!(!out.contains(&data["password"]) && !stderr.contains(&data["password"]));

    // Applying the same flags again changes nothing; a change is applied in place.
    let again = plugin(&ns, &args[..args.len() - 1]).ok();
    assert!(again.contains("superset-reader unchanged"), "{again}");
    let mut changed: Vec<&str> = args[..args.len() - 1].to_vec();
    let description = changed
        .iter()
        .position(|a| *a == "Superset dashboards")
        .unwrap();
    changed[description] = "Superset (prod)";
    let changed = plugin(&ns, &changed).ok();
    assert!(changed.contains("superset-reader configured"), "{changed}");
    assert_eq!(
        token(&ns, "superset-reader")
            .await
            .spec
            .description
            .as_deref(),
        Some("Superset (prod)")
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn create_rejects_invalid_flags_before_contacting_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (nowhere, _) = unreachable_kubeconfig(dir.path());
    let cases: [(&[&str], &str); 6] = [
        (&["--scope", "admin"], "invalid --scope"),
        (&["--scope", "DATASOURCES:READ:events:"], "invalid --scope"),
        (
            &["--rotate-every", "30s"],
            "invalid --rotate-every \"30s\": must be at least 1m",
        ),
        (&["--expires-at", "next week"], "invalid --expires-at"),
        (&["--secret-name", "Bad_Name"], "invalid --secret-name"),
        (
            &["--scope", "PIPES:READ:top", "--scope", "PIPES:READ:top"],
            "spec.scopes[1]",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["create", "t", "--role", "reader"];
        args.extend_from_slice(extra);
        let stderr = run_plugin(Some(&nowhere), &args, "").fails_with(needle);
        assert!(
            !stderr.contains("cannot reach"),
            "{extra:?} contacted the cluster: {stderr}"
        );
    }
    let stderr = run_plugin(Some(&nowhere), &["create", "t", "--role", "Reader"], "")
        .fails_with("spec.role");
    assert!(!stderr.contains("cannot reach"), "{stderr}");
}

// ------------------------------------------------------------------ list

#[tokio::test]
async fn list_shows_tokens_as_a_table_and_as_json_and_yaml() {
    let ns = TestNs::new("plugin-list").await;
    let _operator = Operator::start(&ns).await;
    let t = issued(
        &ns,
        "superset-reader",
        &[
            "--description",
            "Superset dashboards",
            "--rotate-every",
            "30d",
        ],
    )
    .await;
    issued(&ns, "trino", &[]).await;
    let status = t.status.unwrap();
    let access_key = status.access_key.unwrap();

    let table = plugin(&ns, &["list"]).ok();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let columns: Vec<&str> = header
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        columns,
        [
            "NAME",
            "ACCESS KEY",
            "DESCRIPTION",
            "ROLE",
            "PHASE",
            "CREATED",
            "NEXT ROTATION",
            "LAST USED"
        ],
        "{table}"
    );
    let row = lines
        .find(|l| l.starts_with("superset-reader "))
        .expect(&table);
    for cell in [
        access_key.as_str(),
        "Superset dashboards",
        "reader",
        "Active",
        "in 29d",
    ] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }
    // Columns line up: each header starts where its cells start.
    let at = header.find("ACCESS KEY").unwrap();
    assert_eq!(&row[at..at + access_key.len()], access_key);
    let trino = table
        .lines()
        .find(|l| l.starts_with("trino "))
        .expect(&table);
    // No rotation; no authz reports use for it.
    assert!(trino.ends_with("<none>          unknown"), "{trino:?}");

    let wide = plugin(&ns, &["list", "-o", "wide"]).ok();
    assert!(
        wide.lines().next().unwrap().contains("FINGERPRINT"),
        "{wide}"
    );
    assert!(
        wide.contains(status.fingerprint.as_deref().unwrap()),
        "{wide}"
    );

    let all = plugin(&ns, &["list", "-A"]).ok();
    assert!(all.starts_with("NAMESPACE "), "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with(&format!("{} ", ns.name)) && l.contains(&access_key)),
        "{all}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&plugin(&ns, &["list", "-o", "json"]).ok()).unwrap();
    assert_eq!(json["kind"], "List");
    let names: Vec<&str> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["superset-reader", "trino"]);
    assert_eq!(json["items"][0]["status"]["accessKey"], access_key.as_str());

    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&plugin(&ns, &["list", "-o", "yaml"]).ok()).unwrap();
    assert_eq!(yaml["items"][1]["metadata"]["name"], "trino");

    // An empty namespace says so on stderr, like kubectl.
    let empty = TestNs::new("plugin-list-empty").await;
    let run = plugin(&empty, &["list"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("No ApiTokens found"), "{}", run.stderr);
    empty.cleanup().await;
    ns.cleanup().await;
}

/// The NAME column (or NAMESPACE/NAME with -A) of each row of a `list` table.
fn listed(table: &str, all_namespaces: bool) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .map(|row| {
            let mut cells = row.split_whitespace();
            let first = cells.next().unwrap().to_owned();
            if all_namespaces {
                format!("{first}/{}", cells.next().unwrap())
            } else {
                first
            }
        })
        .collect()
}

#[tokio::test]
async fn list_selector_narrows_the_list_in_every_format_and_across_namespaces() {
    ensure_crds();
    let ns = TestNs::new("plugin-selector").await;
    let other = TestNs::new("plugin-selector-other").await;
    // A label of this test's own, so -A sees none of the other tests' tokens.
    let run = format!("run-{:08x}", rand::random::<u32>());
    let labelled = |name: &str, labels: &str| {
        format!(
            "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiToken\n\
             metadata: {{name: {name}, labels: {{run: {run}{labels}}}}}\nspec: {{role: reader}}\n"
        )
    };
    for (namespace, name, labels) in [
        (&ns, "analytics-a", ", team: analytics"),
        (&ns, "ops-a", ", team: ops"),
        (&ns, "unlabelled", ""),
        (&other, "analytics-b", ", team: analytics"),
    ] {
        ok(common::apply_yaml(&namespace.name, &labelled(name, labels)));
    }

    let table = |args: &[&str]| listed(&plugin(&ns, args).ok(), false);
    assert_eq!(table(&["list", "-l", "team=analytics"]), ["analytics-a"]);
    assert_eq!(
        table(&["list", "--selector", "team!=analytics"]),
        ["ops-a", "unlabelled"]
    );
    assert_eq!(
        table(&["list", "-l", "team in (analytics, ops)"]),
        ["analytics-a", "ops-a"]
    );
    assert_eq!(table(&["list", "-l", "!team"]), ["unlabelled"]);
    let wide = plugin(&ns, &["list", "-l", "team=ops", "-o", "wide"]).ok();
    assert!(
        wide.lines().next().unwrap().contains("FINGERPRINT"),
        "{wide}"
    );
    assert_eq!(listed(&wide, false), ["ops-a"]);

    // With -A the selector applies in every namespace.
    let everywhere = format!("run={run},team=analytics");
    let all = plugin(&ns, &["list", "-A", "-l", &everywhere]).ok();
    assert!(all.starts_with("NAMESPACE "), "{all}");
    assert_eq!(
        listed(&all, true),
        [
            format!("{}/analytics-a", ns.name),
            format!("{}/analytics-b", other.name)
        ]
    );
    let json: serde_json::Value = serde_json::from_str(
        &plugin(
            &ns,
            &["list", "-A", "--selector", &everywhere, "-o", "json"],
        )
        .ok(),
    )
    .unwrap();
    let items: Vec<(&str, &str)> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            (ns.name.as_str(), "analytics-a"),
            (other.name.as_str(), "analytics-b")
        ]
    );
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&plugin(&ns, &["list", "-l", "team=ops", "-o", "yaml"]).ok()).unwrap();
    let items = yaml["items"].as_sequence().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "ops-a");

    // Nothing matches: kubectl's words on stderr, nothing on stdout.
    let none = plugin(&ns, &["list", "-l", "team=nobody"]);
    assert_eq!(none.code, Some(0));
    assert_eq!(none.stdout, "");
    assert!(
        none.stderr
            .contains(&format!("No ApiTokens found in {} namespace.", ns.name)),
        "{}",
        none.stderr
    );
    // A selector the API server cannot parse is named in the error.
    plugin(&ns, &["list", "-l", "team==a==b"]).fails_with("invalid --selector \"team==a==b\": ");
    other.cleanup().await;
    ns.cleanup().await;
}

// ------------------------------------------------------------------ rotate

#[tokio::test]
async fn rotate_keeps_the_previous_credential_in_the_overlap_and_retire_previous_drops_it() {
    let ns = TestNs::new("plugin-overlap").await;
    let _operator = Operator::start(&ns).await;
    let first = issued(
        &ns,
        "gradual",
        &["--rotate-every", "30d", "--overlap", "1d"],
    )
    .await
    .status
    .unwrap();
    plugin(&ns, &["rotate", "gradual", "--wait"]).ok();
    let status = token(&ns, "gradual").await.status.unwrap();
    let previous = status
        .previous
        .clone()
        .expect("status.previous after a rotation");
    assert_eq!(Some(previous.access_key.clone()), first.access_key);
    let wide = plugin(&ns, &["list", "-o", "wide"]).ok();
    assert!(wide.contains("PREVIOUS"), "{wide}");
    assert!(
        wide.contains(&format!("{} until in ", previous.access_key)),
        "{wide}"
    );

    let out = plugin(&ns, &["rotate", "gradual", "--retire-previous", "--wait"]).ok();
    assert!(out.contains("tokenmint.dev/retire-previous="), "{out}");
    let status = token(&ns, "gradual").await.status.unwrap();
    assert_eq!(status.previous, None, "rotated without an overlap");
    assert_eq!(status.rotations, Some(2));
    assert!(
        !secret_data(&ns, "gradual")
            .await
            .contains_key("previous-password")
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn rotate_wait_replaces_the_credential_and_prints_the_new_fingerprint() {
    let ns = TestNs::new("plugin-rotate").await;
    let _operator = Operator::start(&ns).await;
    let before = issued(&ns, "superset-reader", &[]).await.status.unwrap();
    let old_secret = secret_data(&ns, "superset-reader").await;

    let out = plugin(
        &ns,
        &["rotate", "superset-reader", "--wait", "--timeout", "30s"],
    )
    .ok();
    let after = token(&ns, "superset-reader").await;
    let status = after.status.clone().unwrap();
    let new_fingerprint = status.fingerprint.clone().unwrap();
    assert_ne!(Some(&new_fingerprint), before.fingerprint.as_ref());
    assert_eq!(status.rotations, Some(before.rotations.unwrap_or(0) + 1));
    assert!(
        out.contains(&format!("rotated: fingerprint {new_fingerprint}")),
        "{out}"
    );
    // The request is a fresh annotation value, and the operator recorded that it handled it.
    let request = after.metadata.annotations.as_ref().unwrap()[ROTATE_ANNOTATION].clone();
    assert_eq!(
        status.last_rotate_request.as_deref(),
        Some(request.as_str())
    );
    assert!(out.contains(&request), "{out}");
    let new_secret = secret_data(&ns, "superset-reader").await;
    assert_ne!(new_secret["password"], old_secret["password"]);
    assert!(!out.contains(&new_secret["password"]));

    // A second rotation is a new request, not a repeat of the first.
    plugin(&ns, &["rotate", "superset-reader", "--wait"]).ok();
    assert_eq!(
        token(&ns, "superset-reader")
            .await
            .status
            .unwrap()
            .rotations,
        Some(before.rotations.unwrap_or(0) + 2)
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn rotate_wait_times_out_when_no_operator_handles_it() {
    ensure_crds();
    let ns = TestNs::new("plugin-rotate-noop").await;
    ok(common::apply_yaml(
        &ns.name,
        "apiVersion: tokenmint.dev/v1alpha1\nkind: ApiToken\nmetadata: {name: lonely}\nspec: {role: reader}\n",
    ));
    plugin(&ns, &["rotate", "lonely", "--wait", "--timeout", "2s"])
        .fails_with("timed out after 2s waiting for the rotation");
    ns.cleanup().await;
}

// ------------------------------------------------------------------ reveal and decode

#[tokio::test]
async fn reveal_prints_each_form_as_stored_in_the_secret() {
    let ns = TestNs::new("plugin-reveal").await;
    let _operator = Operator::start(&ns).await;
    issued(&ns, "superset-reader", &["--secret-name", "superset-creds"]).await;
    let data = secret_data(&ns, "superset-creds").await;

    let reveal = |form: &'static str| {
        let run = plugin(&ns, &["reveal", "superset-reader", "--form", form]);
        assert_eq!(run.stderr, "", "reveal prints nothing but the credential");
        run.ok()
    };
    assert_eq!(
        plugin(&ns, &["reveal", "superset-reader"]).ok(),
        format!("{}\n", data["token"])
    );
    assert_eq!(reveal("bearer"), format!("{}\n", data["token"]));
    assert_eq!(reveal("basic"), format!("{}\n", data["basic"]));
    assert_eq!(
        reveal("header"),
        format!("Authorization: {}\n", data["authorization-bearer"])
    );
    assert_eq!(
        reveal("userpass"),
        format!(
            "username: {}\npassword: {}\n",
            data["username"], data["password"]
        )
    );

    // decode turns what reveal printed back into the Secret's username and password.
    let userpass = format!(
        "username: {}\npassword: {}\n",
        data["username"], data["password"]
    );
    for form in ["bearer", "basic", "header"] {
        let text = reveal(form);
        let token = text.trim().trim_start_matches("Authorization: ");
        assert_eq!(
            run_plugin(None, &["decode", token], "").ok(),
            userpass,
            "{form}"
        );
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn decode_turns_seed_tokens_into_username_and_password_without_a_cluster() {
    let startree = "username: XkQBXKr652MV1VF9\npassword: 5gkhGWNaGAdA1NU5yrHXRSPKMCcNRlRg\n";
    let pinot = "username: 4cefb8480f8f4a7886a5c9da1056a7b5\npassword: yYGUYlWPUiNNN46nFZcOo3aTOqICP2aAk1qxT5B8AJQ=\n";
    assert_eq!(
        run_plugin(None, &["decode", STARTREE_BEARER], "").ok(),
        startree
    );
    assert_eq!(
        run_plugin(None, &["decode", &format!("Bearer {STARTREE_BEARER}")], "").ok(),
        startree
    );
    assert_eq!(
        run_plugin(None, &["decode", STARTREE_BASIC], "").ok(),
        pinot
    );
    assert_eq!(
        run_plugin(None, &["decode", &format!("Basic {STARTREE_BASIC}")], "").ok(),
        pinot
    );
    // From stdin, so the token stays out of shell history.
    assert_eq!(
        run_plugin(None, &["decode"], &format!("{STARTREE_BASIC}\n")).ok(),
        pinot
    );
    assert_eq!(
        run_plugin(None, &["decode", "-"], STARTREE_BEARER).ok(),
        startree
    );

    for garbage in ["hello", "Basic !!!", "st-only-one-part-", "c2VjcmV0"] {
        let stderr = run_plugin(None, &["decode", garbage], "").fails_with("not a token");
        assert!(
            !stderr.contains(garbage),
            "the input is not echoed: {stderr}"
        );
    }
}

// ------------------------------------------------------------------ revoke

#[tokio::test]
async fn revoke_yes_deletes_the_secret_and_marks_the_token_revoked() {
    let ns = TestNs::new("plugin-revoke").await;
    let _operator = Operator::start(&ns).await;
    issued(&ns, "leaked", &[]).await;
    assert!(
        ns.api::<Secret>()
            .get_opt("leaked")
            .await
            .unwrap()
            .is_some()
    );

    let run = plugin(&ns, &["revoke", "leaked", "--yes"]);
    let stderr = run.stderr.clone();
    let out = run.ok();
    assert!(
        out.contains("apitoken.tokenmint.dev/leaked revoked"),
        "{out}"
    );
    // What GitOps users must change, and why the old manifest cannot undo it.
    assert!(
        stderr.contains("revoked: true") && stderr.contains("revoked: false"),
        "{stderr}"
    );

    let t = wait_for("the token to be Revoked", WAIT, || async {
        let t = ns.api::<ApiToken>().get("leaked").await.ok()?;
        (t.status.as_ref()?.phase == Some(Phase::Revoked)).then_some(t)
    })
    .await;
    assert_eq!(t.spec.revoked, Some(true));
    assert!(t.status.unwrap().revoked_at.is_some());
    wait_for("the Secret to be deleted", WAIT, || async {
        ns.api::<Secret>()
            .get_opt("leaked")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // Nothing is left to reveal or rotate; revoking again is harmless; the name cannot be re-issued.
    plugin(&ns, &["reveal", "leaked"]).fails_with("is revoked");
    plugin(&ns, &["rotate", "leaked"]).fails_with("is revoked");
    assert!(
        plugin(&ns, &["revoke", "leaked", "--yes"])
            .ok()
            .contains("already revoked")
    );
    plugin(&ns, &["create", "leaked", "--role", "reader"])
        .fails_with("already exists and is revoked");

    // --wait waits for the operator to carry the revocation out.
    issued(&ns, "second", &[]).await;
    let out = plugin(&ns, &["revoke", "second", "-y", "--wait"]).ok();
    assert!(out.contains("phase Revoked"), "{out}");
    assert!(
        ns.api::<Secret>()
            .get_opt("second")
            .await
            .unwrap()
            .is_none()
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn revoke_without_a_terminal_or_yes_refuses() {
    let ns = TestNs::new("plugin-revoke-refuse").await;
    let _operator = Operator::start(&ns).await;
    issued(&ns, "kept", &[]).await;
    // stdin is a pipe, not a terminal: even a "y" on it must not count as confirmation.
    let run = run_plugin(
        Some(&common::kubeconfig_path()),
        &["-n", &ns.name, "revoke", "kept"],
        "y\n",
    );
    run.fails_with("pass --yes");
    let t = token(&ns, "kept").await;
    assert_eq!(t.spec.revoked, None);
    assert_eq!(t.status.unwrap().phase, Some(Phase::Active));
    ns.cleanup().await;
}

// ------------------------------------------------------------------ errors a person can act on

#[tokio::test]
async fn a_missing_token_is_a_clear_error_for_every_subcommand() {
    ensure_crds();
    let ns = TestNs::new("plugin-missing").await;
    let want = format!(
        "apitokens.tokenmint.dev \"ghost\" not found in namespace \"{}\"",
        ns.name
    );
    for args in [
        &["rotate", "ghost"][..],
        &["rotate", "ghost", "--wait"],
        &["revoke", "ghost", "--yes"],
        &["reveal", "ghost"],
        &["reveal", "ghost", "--form", "userpass"],
    ] {
        plugin(&ns, args).fails_with(&want);
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_cluster_is_named_by_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let (nowhere, url) = unreachable_kubeconfig(dir.path());
    for args in [
        &["list"][..],
        &["list", "-A"],
        &["create", "t", "--role", "reader"],
        &["rotate", "t"],
        &["revoke", "t", "--yes"],
        &["reveal", "t"],
    ] {
        run_plugin(Some(&nowhere), args, "")
            .fails_with(&format!("cannot reach the cluster at {url}: "));
    }
    run_plugin(Some(&dir.path().join("missing")), &["list"], "")
        .fails_with("cannot load the kubeconfig");
    run_plugin(None, &["list"], "").fails_with("cannot load the kubeconfig");
}

/// A server that answers every request as the API server answers for a resource it does not serve
/// (a plain-text `404 page not found`): what the plugin sees when the CRD is not installed. The shared
/// control plane must keep its CRD for the other tests, so this stands in for it.
fn serve_404s() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = read_request_head(&mut stream);
            let body = "404 page not found\n";
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[tokio::test]
async fn a_missing_crd_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = serve_404s();
    let kubeconfig = write_kubeconfig(dir.path(), &url, None, "token: not-used");
    for args in [
        &["list"][..],
        &["list", "-A"],
        &["rotate", "t"],
        &["reveal", "t"],
        &["create", "t", "--role", "r"],
    ] {
        run_plugin(Some(&kubeconfig), args, "")
            .fails_with("the ApiToken CRD is not installed in the cluster at")
            .contains("kubectl apply --server-side -f crds/")
            .then_some(())
            .expect("the message says how to install the CRD");
    }
}

#[tokio::test]
async fn a_forbidden_request_names_the_verb_and_resource() {
    ensure_crds();
    let ns = TestNs::new("plugin-forbidden").await;
    let bearer = ns.service_account_token("nobody").await;
    // Same server and CA as the admin kubeconfig, authenticated as the ServiceAccount.
    let (server, ca) = common::admin_server_and_ca();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &server, Some(&ca), &format!("token: {bearer}"));
    let as_nobody = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        run_plugin(Some(&kubeconfig), &all, "")
    };
    let here = format!("in namespace \"{}\"", ns.name);
    as_nobody(&["list"]).fails_with(&format!(
        "not allowed to list apitokens.tokenmint.dev {here}"
    ));
    as_nobody(&["reveal", "t"]).fails_with(&format!(
        "not allowed to get apitokens.tokenmint.dev {here}"
    ));
    as_nobody(&["create", "t", "--role", "reader"]).fails_with(&format!(
        "not allowed to get apitokens.tokenmint.dev {here}"
    ));
    run_plugin(Some(&kubeconfig), &["list", "-A"], "")
        .fails_with("not allowed to list apitokens.tokenmint.dev across all namespaces");
    // A bad credential is told apart from a missing permission.
    let forged_dir = tempfile::tempdir().unwrap();
    let forged = write_kubeconfig(forged_dir.path(), &server, Some(&ca), "token: forged");
    run_plugin(Some(&forged), &["list"], "")
        .fails_with("did not accept your credentials (401 Unauthorized)");
    ns.cleanup().await;
}
