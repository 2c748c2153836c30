//! tokenmint on a real node (the kubelet and containerd that `make cluster-up` starts): credentials
//! consumed by Pods, read from an environment variable and from a mounted file, and what a rotation
//! does to each (measuring how long the kubelet takes to show a rotated credential in the mounted
//! file, which is what a verifier's `publishDelay` must cover); and the chart installed for real
//! with the image `make image` builds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::helm::{Release, chart, helm};
use common::tokens::*;
use common::verifiers::{create_map_verifier, create_verifier, wait_published};
use common::*;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{LogParams, PostParams};
use kube::runtime::wait::{await_condition, conditions::is_pod_running};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokenmint::core::sha256_map::key as sha256_hex;

/// The node, shared: a test that cordons it (a drain) holds it alone, every other node test holds
/// it for reading, so no pod of theirs waits on a cordoned node.
static NODE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// `helm install` of the chart as release `ns` in `ns`, scoped to it (a Role, not a ClusterRole:
/// other tests' operators run beside it), with the image `make image` built and `sets` besides;
/// waits until its pods are ready. The returned [`Release`] cleans up its cluster-scoped objects.
fn install_chart(ns: &TestNs, sets: &[&str]) -> Release {
    let kubeconfig = kubeconfig_path();
    let watch = format!("watchNamespace={}", ns.name);
    let mut args = vec![
        "install",
        &ns.name,
        "--namespace",
        &ns.name,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--set",
        &watch,
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "120s",
    ];
    let chart = chart();
    args.insert(2, &chart);
    for set in sets {
        args.extend(["--set", set]);
    }
    // Made first: a failed install still has its cluster-scoped objects removed.
    let release = Release(ns.name.clone());
    helm(&args);
    release
}

/// The image every test pod runs: Debian's static busybox, built and imported by `make cluster-up`.
const TOOLBOX: &str = "tokenmint.local/toolbox:1";

/// A Pod that reads token `token`'s Secret as the README's example does, and prints the SHA-256 of
/// what it sees: its environment variable once at start (`env HASH`), the mounted file whenever it
/// changes (`file HASH`, checked every 100 ms).
fn consumer(name: &str, token: &str) -> Pod {
    let script = r#"
echo "env $(printf %s "$API_AUTHORIZATION" | sha256sum | cut -c1-64)"
last=""
while true; do
  cur=$(sha256sum /var/run/secrets/api-token/token | cut -c1-64)
  if [ "$cur" != "$last" ]; then echo "file $cur"; last=$cur; fi
  sleep 0.1
done"#;
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app",
                "image": TOOLBOX,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "env": [{"name": "API_AUTHORIZATION",
                         "valueFrom": {"secretKeyRef": {"name": token, "key": "authorization-bearer"}}}],
                "volumeMounts": [{"name": "api-token", "mountPath": "/var/run/secrets/api-token", "readOnly": true}],
            }],
            "volumes": [{"name": "api-token",
                         "secret": {"secretName": token, "items": [{"key": "token", "path": "token"}]}}],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_pod_reads_its_credential_and_the_kubelet_refreshes_the_mounted_file_after_a_rotation() {
    let _node = NODE.read().await;
    let ns = TestNs::new("node-consumer").await;
    let _op = Operator::start(&ns).await;
    let before = issue(&ns, "app", spec("reader")).await;

    let started = Instant::now();
    run_pod(&ns, &consumer("app", "app")).await;
    eprintln!(
        "node: the pod ran {:?} after it was created",
        started.elapsed()
    );
    let pods = ns.api::<Pod>();

    let params = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = pods.log_stream("app", &params).await.unwrap().lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(180), lines.try_next())
            .await
            .expect("a line from the pod within 180s")
            .unwrap()
            .expect("the pod's log goes on")
    };
    assert_eq!(
        next_line().await,
        format!("env {}", sha256_hex(&before.bearer()))
    );
    assert_eq!(
        next_line().await,
        format!("file {}", sha256_hex(&before.bearer))
    );

    annotate(&ns, "app", tokenmint::api::ROTATE_ANNOTATION, "1").await;
    let after = wait_for("the rotated credential in the Secret", WAIT, || async {
        let now = creds(&ns, "app").await;
        (now.bearer != before.bearer).then_some(now)
    })
    .await;
    let rotated = Instant::now();
    assert_eq!(
        next_line().await,
        format!("file {}", sha256_hex(&after.bearer))
    );
    let refresh = rotated.elapsed();
    eprintln!(
        "node: the kubelet showed the rotated credential in the mounted file {refresh:?} after the Secret changed"
    );
    // What a verifier's default publishDelay promises a server reading a mounted output.
    let promised = Duration::try_from(tokenmint::core::verifier::DEFAULT_PUBLISH_DELAY).unwrap();
    assert!(
        refresh < promised,
        "the kubelet took {refresh:?}, publishDelay's default is {promised:?}"
    );

    // An environment variable is read when the container starts: the running container still has
    // the credential it started with (the README tells apps to re-read the file, or restart).
    let env = kubectl(&[
        "exec",
        "-n",
        &ns.name,
        "app",
        "--",
        "/bin/sh",
        "-c",
        "printf %s \"$API_AUTHORIZATION\"",
    ]);
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&env.stdout), before.bearer());
    ns.cleanup().await;
}

/// `helm install` of the chart on the node with the image `make image` built (imported by
/// `hack/test.sh`): two replicas with leader election, scoped to the test's namespace (a Role, not
/// a ClusterRole: other tests' operators run beside it).
#[tokio::test]
async fn the_chart_runs_the_operator_on_the_node_and_an_upgrade_remints_nothing() {
    ensure_crds();
    let ns = TestNs::new("node-chart").await;
    let release = ns.name.clone();
    let _node = NODE.read().await;
    let kubeconfig = kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let helm_in_ns = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--namespace", &release, "--kubeconfig", kubeconfig]);
        helm(&all)
    };
    let chart = chart();
    let started = Instant::now();
    let _release = install_chart(&ns, &["replicas=2"]);
    eprintln!("node: helm install --wait took {:?}", started.elapsed());
    let fullname = format!("{release}-tokenmint");

    // A token issued by the operator pod, under exactly the chart's RBAC.
    let issued = issue(&ns, "app", spec("reader")).await;
    let leader = lease_holder(&ns, &fullname).await;
    let leader_metrics = kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{release}/pods/http:{leader}:8080/proxy/metrics"),
    ]);
    assert!(
        leader_metrics.status.success(),
        "{}",
        String::from_utf8_lossy(&leader_metrics.stderr)
    );
    assert!(
        String::from_utf8_lossy(&leader_metrics.stdout)
            .contains("tokenmint_tokens{phase=\"Active\"} 1"),
        "the leader exports the token"
    );
    // /metrics and /readyz through the chart's Service (the API server's proxy to its endpoints).
    let via_service = kubectl(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/{release}/services/http:{fullname}-metrics:8080/proxy/metrics"
        ),
    ]);
    assert!(
        via_service.status.success(),
        "{}",
        String::from_utf8_lossy(&via_service.stderr)
    );
    assert!(
        String::from_utf8_lossy(&via_service.stdout)
            .contains("tokenmint_reconcile_duration_seconds_count"),
        "/metrics of either replica (a follower has reconciled nothing yet)"
    );

    // An upgrade rolls both pods; the new leader takes the token over and mints nothing.
    let secret_before = secret(&ns, "app").await.unwrap();
    helm_in_ns(&[
        "upgrade",
        &release,
        &chart,
        "--reuse-values",
        "--set",
        "logging.level=debug",
        "--wait",
        "--timeout",
        "120s",
    ]);
    let new_leader = wait_for("a leader among the upgraded pods", WAIT, || async {
        let now = lease_holder(&ns, &fullname).await;
        (now != leader).then_some(now)
    })
    .await;
    // The new leader has reconciled the token once it reports the edit in status.
    set_spec(&ns, "app", json!({"description": "after the upgrade"}))
        .await
        .unwrap();
    wait_phase(&ns, "app", tokenmint::api::Phase::Active, |t| {
        status_of(t).observed_generation == t.metadata.generation
    })
    .await;
    let secret_after = secret(&ns, "app").await.unwrap();
    assert_eq!(
        data(&secret_after)["token"],
        issued.bearer,
        "the upgrade re-minted the credential"
    );
    assert_eq!(
        secret_after.metadata.annotations.as_ref().unwrap()["tokenmint.dev/rotations"],
        secret_before.metadata.annotations.as_ref().unwrap()["tokenmint.dev/rotations"]
    );
    eprintln!("node: leadership moved from {leader} to {new_leader} in the upgrade");

    // Uninstall leaves the tokens' Secrets: the credentials stay usable.
    helm_in_ns(&["uninstall", &release, "--wait"]);
    let kept = secret(&ns, "app")
        .await
        .expect("uninstall keeps the token's Secret");
    assert_eq!(data(&kept)["token"], issued.bearer);
    ns.cleanup().await;
}

/// The pod holding the operator's Lease in `ns`.
async fn lease_holder(ns: &TestNs, fullname: &str) -> String {
    let leases = ns.api::<Lease>();
    let lease = format!("{fullname}-leader");
    wait_for("a Lease holder", WAIT, || async {
        let held = leases.get_opt(&lease).await.ok().flatten()?;
        held.spec?.holder_identity.filter(|h| !h.is_empty())
    })
    .await
}

/// The operator image (`make image`, run by `hack/test.sh`, whose digest it exports as
/// `TOKENMINT_IMAGE`): the same binary assembles into the same digest, and the image holds the
/// binary, the nonroot user and CA certificates, nothing else (no shell), and runs as 65532.
#[test]
fn the_operator_image_is_reproducible_runs_as_nonroot_and_holds_no_shell() {
    let expected = std::env::var("TOKENMINT_IMAGE")
        .expect("TOKENMINT_IMAGE: the digest hack/build-image.sh printed (make test sets it)");
    let layout = Path::new(REPO).join("target/image/oci");
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json = |digest: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blob(digest)).unwrap()).unwrap()
    };
    assert_eq!(
        format!("sha256:{}", sha256_file(&blob(&expected))),
        expected
    );
    let manifest = json(&expected);
    let config = json(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["config"]["Entrypoint"], json!(["/tokenmint", "run"]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(layers[0]["digest"].as_str().unwrap());
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&layer)
        .output()
        .unwrap();
    let mut files: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "etc",
            "etc/group",
            "etc/passwd",
            "etc/ssl",
            "etc/ssl/certs",
            "etc/ssl/certs/ca-certificates.crt",
            "tokenmint"
        ]
    );

    // The image's own binary, assembled again elsewhere: the same digest.
    let dir = tempfile::tempdir().unwrap();
    let unpacked = Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(dir.path())
        .arg("./tokenmint")
        .status()
        .unwrap();
    assert!(unpacked.success());
    let again = Command::new(format!("{REPO}/hack/build-image.sh"))
        .env("TOKENMINT_IMAGE_BIN", dir.path().join("tokenmint"))
        .env("TOKENMINT_IMAGE_OUT", dir.path().join("image"))
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), expected);
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The operator image as the chart names it: `ghcr.io/tokenmint/tokenmint:<appVersion>`.
fn operator_image() -> String {
    let chart = std::fs::read_to_string(format!("{REPO}/charts/tokenmint/Chart.yaml")).unwrap();
    let version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .expect("Chart.yaml has appVersion")
        .trim()
        .trim_matches('"');
    format!("ghcr.io/tokenmint/tokenmint:{version}")
}

/// nginx in the gateway pod: the README's `auth_request` pattern asking the authz sidecar on
/// loopback, in front of an app (a second server here, answering with the role it was given).
const GATEWAY_NGINX: &str = r#"
daemon off;
pid /tmp/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy; fastcgi_temp_path /tmp/fastcgi;
  uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi;
  server {
    listen 127.0.0.1:8081;
    location / { return 200 "role=$http_x_tokenmint_role
"; }
  }
  server {
    listen 8080;
    location = /_tokenmint {
      internal;
      proxy_pass http://127.0.0.1:9000/verify;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }
    location / {
      auth_request /_tokenmint;
      auth_request_set $tm_role $upstream_http_x_tokenmint_role;
      proxy_set_header X-Tokenmint-Role $tm_role;
      proxy_pass http://127.0.0.1:8081;
    }
  }
}
"#;

/// A gateway pod: Debian's nginx (`tokenmint.local/nginx:1`, built by `make cluster-up`) checking
/// every request with `tokenmint authz` as a sidecar, which reads the verifier's sha256-map output
/// `output` mounted from its Secret; nginx's config from the ConfigMap `gateway-nginx`.
fn gateway(output: &str) -> Pod {
    let locked = json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true,
                        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gateway"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "nginx",
                    "image": "tokenmint.local/nginx:1",
                    "imagePullPolicy": "Never",
                    "args": ["-p", "/tmp/", "-c", "/etc/gateway/nginx.conf"],
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/gateway", "readOnly": true},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                    "securityContext": locked,
                },
                {
                    "name": "authz",
                    "image": operator_image(),
                    "imagePullPolicy": "Never",
                    "command": ["/tokenmint", "authz"],
                    "args": ["--file", "/etc/tokenmint/tokens.json", "--listen", "127.0.0.1:9000"],
                    "volumeMounts": [{"name": "map", "mountPath": "/etc/tokenmint", "readOnly": true}],
                    "securityContext": locked,
                },
            ],
            "volumes": [
                {"name": "map", "secret": {"secretName": output}},
                {"name": "config", "configMap": {"name": "gateway-nginx"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }))
    .unwrap()
}

/// A client that sends its token (from its own Secret, as an app would) every 100 ms to authz
/// reading the API (its `/verify`, through the chart's Service) and to the gateway pod's nginx (an
/// app path, checked by the sidecar reading the mounted output), and prints each answer's status
/// when it changes: `api CODE`, `file CODE`.
fn authz_client(token: &str, api_host: &str, file_host: &str) -> Pod {
    let script = r#"
code() {
  # busybox nc stops at the end of its input: keep it open long enough for the answer.
  (printf 'GET %s HTTP/1.0\r\nAuthorization: %s\r\n\r\n' "$2" "$API_AUTHORIZATION"; sleep 0.2) |
    nc -w 2 "$1" 8080 | head -n 1 | cut -d' ' -f2
}
last_api=""; last_file=""
while true; do
  a=$(code "$API_HOST" /verify); f=$(code "$FILE_HOST" /pipes/top_pages)
  if [ "$a" != "$last_api" ]; then echo "api $a"; last_api=$a; fi
  if [ "$f" != "$last_file" ]; then echo "file $f"; last_file=$f; fi
  sleep 0.1
done"#;
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "client",
                "image": TOOLBOX,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "env": [
                    {"name": "API_AUTHORIZATION",
                     "valueFrom": {"secretKeyRef": {"name": token, "key": "authorization-bearer"}}},
                    {"name": "API_HOST", "value": api_host},
                    {"name": "FILE_HOST", "value": file_host},
                ],
            }],
        },
    }))
    .unwrap()
}

/// Creates `pod` and waits until it runs; returns it as running.
async fn run_pod(ns: &TestNs, pod: &Pod) -> Pod {
    let pods = ns.api::<Pod>();
    let name = pod.metadata.name.clone().unwrap();
    pods.create(&PostParams::default(), pod).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), &name, is_pod_running()),
    )
    .await
    .unwrap_or_else(|_| panic!("pod {name} runs within 60s"))
    .unwrap()
    .unwrap()
}

/// `tokenmint authz` on the node, both ways it reads a verifier's output: through the API (the
/// chart's authz Deployment, behind its Service) and from the output Secret mounted into a gateway
/// pod, as the sidecar nginx's `auth_request` asks. A client pod sends the token it reads from its
/// own Secret: let in by both, then, after `spec.revoked`, refused by both; how long each took is
/// printed.
#[tokio::test]
async fn authz_on_the_node_lets_a_client_in_and_refuses_it_after_a_revocation_both_ways() {
    ensure_crds();
    let ns = TestNs::new("node-authz").await;
    let release = ns.name.clone();
    let _node = NODE.read().await;
    create_map_verifier(&ns, "api", "api-tokens").await;
    let _release = install_chart(
        &ns,
        &[
            "authz.enabled=true",
            "authz.verifier.name=api",
            "authz.output=api-tokens",
            "authz.replicas=1",
        ],
    );
    let issued = issue(
        &ns,
        "client",
        spec_of(json!({"role": "reader", "audiences": ["api"]})),
    )
    .await;
    wait_published(&ns, "api", "api-tokens", &issued.access_key).await;

    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "gateway-nginx"},
        "data": {"nginx.conf": GATEWAY_NGINX},
    });
    ns.api::<ConfigMap>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(config).unwrap(),
        )
        .await
        .unwrap();
    let gateway = run_pod(&ns, &gateway("api-tokens")).await;
    let file_ip = gateway.status.unwrap().pod_ip.expect("a pod IP");
    let service = ns
        .api::<k8s_openapi::api::core::v1::Service>()
        .get(&format!("{release}-tokenmint-authz"))
        .await
        .unwrap();
    let api_ip = service.spec.unwrap().cluster_ip.expect("a ClusterIP");
    run_pod(&ns, &authz_client("client", &api_ip, &file_ip)).await;

    let params = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = ns
        .api::<Pod>()
        .log_stream("client", &params)
        .await
        .unwrap()
        .lines();
    // Reads lines until both readers answered `code`; returns when each first did.
    let mut until_both = async |code: &str| {
        let (mut api, mut file) = (None, None);
        while api.is_none() || file.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(180), lines.try_next())
                .await
                .unwrap_or_else(|_| panic!("both readers answer {code} within 180s"))
                .unwrap()
                .expect("the client's log goes on");
            if line == format!("api {code}") {
                api.get_or_insert_with(Instant::now);
            }
            if line == format!("file {code}") {
                file.get_or_insert_with(Instant::now);
            }
        }
        (api.unwrap(), file.unwrap())
    };
    until_both("200").await;

    set_spec(&ns, "client", json!({"revoked": true}))
        .await
        .unwrap();
    let revoked = Instant::now();
    let (api, file) = until_both("401").await;
    eprintln!(
        "node: revoked -> refused: {:?} by authz reading the API, {:?} by authz reading the mounted output",
        api - revoked,
        file - revoked
    );
    ns.cleanup().await;
}

/// Every credential each token Secret in `ns` has held, as a watch saw them: a token minted twice
/// (a rotation repeated by a new leader, say) shows a credential more than its rotations explain.
struct Minted(std::sync::Arc<std::sync::Mutex<BTreeMap<String, BTreeSet<String>>>>);

impl Minted {
    fn watch(ns: &TestNs) -> Minted {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let sink = seen.clone();
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=tokenmint");
        let events = watcher(ns.api::<Secret>(), config).applied_objects();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(Ok(secret)) = events.next().await {
                let held = secret.data.as_ref().and_then(|d| d.get("password"));
                let Some(password) = held.map(|p| String::from_utf8_lossy(&p.0).into_owned())
                else {
                    continue;
                };
                let name = secret.metadata.name.unwrap_or_default();
                let mut seen = sink.lock().unwrap();
                seen.entry(name)
                    .or_insert_with(BTreeSet::new)
                    .insert(password);
            }
        });
        Minted(seen)
    }

    /// The distinct credentials Secret `name` has held so far.
    fn count(&self, name: &str) -> usize {
        self.0.lock().unwrap().get(name).map_or(0, BTreeSet::len)
    }
}

/// Waits (longer than [`WAIT`]: a new leader takes the Lease only once it has expired) until token
/// `name` is Active with `rotations` rotations, and returns it.
async fn settled(ns: &TestNs, name: &str, rotations: u64) -> tokenmint::api::ApiToken {
    wait_for(
        &format!("{name} Active after {rotations} rotations"),
        Duration::from_secs(120),
        || async {
            let t = token(ns, name).await;
            let status = t.status.as_ref()?;
            let active = status.phase == Some(tokenmint::api::Phase::Active);
            (active && status.rotations == Some(rotations)).then_some(t)
        },
    )
    .await
}

/// Token `name` as it must be after `rotations` rotations, each minted once: the Secret's
/// credential is the one status records, and the watch saw no other.
async fn minted_once(ns: &TestNs, minted: &Minted, name: &str, rotations: u64) {
    let t = settled(ns, name, rotations).await;
    let held = creds(ns, name).await;
    assert_eq!(
        status_of(&t).fingerprint.as_deref(),
        Some(tokenmint::core::credential::fingerprint_of(&held.bearer).as_str()),
        "{name}: the Secret holds a credential status does not record"
    );
    assert_eq!(
        minted.count(name),
        usize::try_from(rotations).unwrap() + 1,
        "{name}: credentials minted"
    );
}

/// The chart with two replicas; 20 tokens, served by a verifier whose publishDelay holds each
/// rotation between staging and promotion, start rotating; once every next credential is staged
/// and published, `fault` strikes the leader's pod, and 5 more tokens are created. The work is
/// finished by whoever leads next, and every token ends with exactly the credentials its rotations
/// explain.
async fn fault_mid_rotation(prefix: &str, fault: impl AsyncFnOnce(&TestNs, &Pod)) {
    ensure_crds();
    let _node = NODE.read().await;
    let ns = TestNs::new(prefix).await;
    let _release = install_chart(&ns, &["replicas=2"]);
    let fullname = format!("{}-tokenmint", ns.name);
    let spec = json!({"publishDelay": "8s", "outputs": [{"secretName": "api-tokens", "format": "sha256-map"}]});
    create_verifier(&ns, "api", spec).await;
    let minted = Minted::watch(&ns);
    let names: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    let served = || spec_of(json!({"role": "reader", "audiences": ["api"]}));
    for name in &names {
        create(&ns, name, served()).await;
    }
    for name in &names {
        settled(&ns, name, 0).await;
    }
    let leader = lease_holder(&ns, &fullname).await;
    for name in &names {
        annotate(&ns, name, tokenmint::api::ROTATE_ANNOTATION, "r1").await;
    }
    for name in &names {
        wait_for(
            &format!("{name}'s next credential staged"),
            WAIT,
            || async { status_of(&token(&ns, name).await).next.as_ref().map(|_| ()) },
        )
        .await;
    }
    let struck = Instant::now();
    fault(&ns, &ns.api::<Pod>().get(&leader).await.unwrap()).await;
    for name in &names {
        let rotations = status_of(&token(&ns, name).await).rotations;
        assert_eq!(rotations, Some(0), "{name} was promoted before the fault");
    }
    let late: Vec<String> = (0..5).map(|i| format!("late{i}")).collect();
    for name in &late {
        create(&ns, name, served()).await;
    }
    for name in &names {
        minted_once(&ns, &minted, name, 1).await;
    }
    for name in &late {
        minted_once(&ns, &minted, name, 0).await;
    }
    let now_leading = lease_holder(&ns, &fullname).await;
    eprintln!(
        "node: every token settled {:?} after the fault on {leader}; {now_leading} leads",
        struck.elapsed()
    );
    ns.cleanup().await;
}

/// SIGKILL of the leader's process: no graceful stop, the Lease not released (its container
/// restarts in the same pod, whose identity may take the Lease at once).
#[tokio::test]
async fn killing_the_leader_mid_rotation_loses_no_token_and_mints_nothing_twice() {
    fault_mid_rotation("node-kill", async |_, pod: &Pod| {
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        let container = status.unwrap()[0].container_id.clone().unwrap();
        let out = Command::new(format!("{REPO}/hack/node.sh"))
            .args(["kill", container.trim_start_matches("containerd://")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

/// The leader's pod deleted: it stops gracefully and releases the Lease; the other replica leads.
#[tokio::test]
async fn deleting_the_leader_pod_mid_rotation_loses_no_token_and_mints_nothing_twice() {
    fault_mid_rotation("node-delete", async |ns: &TestNs, pod: &Pod| {
        let name = pod.metadata.name.as_deref().unwrap();
        ok(kubectl(&[
            "delete",
            "pod",
            name,
            "-n",
            &ns.name,
            "--wait=false",
        ]));
    })
    .await;
}

/// The node drained of the operator's pods (both replicas evicted, the node cordoned, so none
/// can run), a token created and another rotated meanwhile, then uncordoned: nothing happened
/// while no operator ran, everything happens once after, and no token was lost or re-minted.
#[tokio::test]
async fn draining_and_uncordoning_the_node_loses_no_token_and_mints_nothing_twice() {
    ensure_crds();
    // A cordoned node schedules nothing: no other node test runs meanwhile.
    let _node = NODE.write().await;
    let ns = TestNs::new("node-drain").await;
    let _release = install_chart(&ns, &["replicas=2"]);
    let minted = Minted::watch(&ns);
    let names = ["a", "b", "c"];
    for name in names {
        issue(&ns, name, spec("reader")).await;
    }
    let node = ok(kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]));
    let _uncordon = Uncordon(node.clone());
    let selector = format!("app.kubernetes.io/instance={}", ns.name);
    let drained = Instant::now();
    ok(kubectl(&[
        "drain",
        &node,
        "--pod-selector",
        &selector,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout",
        "90s",
    ]));
    eprintln!("node: drained of the operator in {:?}", drained.elapsed());
    let pods = ns.api::<Pod>();
    let running = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    assert_eq!(
        running.count(),
        0,
        "an operator pod runs on the drained node"
    );

    create(&ns, "during", spec("reader")).await;
    annotate(&ns, "a", tokenmint::api::ROTATE_ANNOTATION, "r1").await;
    // Written by nobody while no operator runs (the annotation's write is the last event; the
    // token has no status yet).
    assert!(token(&ns, "during").await.status.is_none());

    ok(kubectl(&["uncordon", &node]));
    let uncordoned = Instant::now();
    minted_once(&ns, &minted, "during", 0).await;
    minted_once(&ns, &minted, "a", 1).await;
    for name in ["b", "c"] {
        minted_once(&ns, &minted, name, 0).await;
    }
    eprintln!(
        "node: caught up {:?} after the uncordon",
        uncordoned.elapsed()
    );
    ns.cleanup().await;
}

/// Uncordons the node on drop, whatever the test did before failing.
struct Uncordon(String);

impl Drop for Uncordon {
    fn drop(&mut self) {
        let _ = kubectl(&["uncordon", &self.0]);
    }
}

/// nginx in front of the chart's authz (its Service, reading the verifier's output through the
/// API), logging the status of every checked request with the asking pod's name (`X-Pod`).
fn api_gateway(authz_ip: &str) -> (ConfigMap, Pod) {
    let conf = format!(
        r#"
daemon off;
pid /tmp/nginx.pid;
error_log stderr notice;
events {{ worker_connections 256; }}
http {{
  access_log off;
  log_format checked 'checked $status $http_x_pod';
  client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy; fastcgi_temp_path /tmp/fastcgi;
  uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi;
  server {{
    listen 127.0.0.1:8081;
    access_log off;
    location / {{ return 200 "ok\n"; }}
  }}
  server {{
    listen 8080;
    location = /_tokenmint {{
      internal;
      access_log off;
      proxy_pass http://{authz_ip}:8080/verify;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }}
    location / {{
      access_log /dev/stdout checked;
      auth_request /_tokenmint;
      proxy_pass http://127.0.0.1:8081;
    }}
  }}
}}
"#
    );
    let config = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "api-gateway-nginx"},
        "data": {"nginx.conf": conf},
    }))
    .unwrap();
    let locked = json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true,
                        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api-gateway"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "nginx",
                "image": "tokenmint.local/nginx:1",
                "imagePullPolicy": "Never",
                "args": ["-p", "/tmp/", "-c", "/etc/gateway/nginx.conf"],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/gateway", "readOnly": true},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
                "securityContext": locked,
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "api-gateway-nginx"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }))
    .unwrap();
    (config, pod)
}

/// A Deployment of `replicas` pods reading `tokens`' Bearer tokens from environment variables when
/// they start (`TOKEN_0`, ...; the first is sent), asking the gateway at `gateway_ip` every 100 ms
/// and stopping at once on SIGTERM. With `ready_only_with`, a pod is ready only while its first
/// token is that value, so a restart for a new credential never becomes ready (a stuck rollout).
fn consumer_deployment(
    name: &str,
    tokens: &[&str],
    replicas: i32,
    gateway_ip: &str,
    ready_only_with: Option<&str>,
) -> k8s_openapi::api::apps::v1::Deployment {
    let script = r#"
trap 'exit 0' TERM
while true; do
  (printf 'GET /app HTTP/1.0\r\nAuthorization: Bearer %s\r\nX-Pod: %s\r\n\r\n' "$TOKEN_0" "$HOSTNAME"; sleep 0.2) |
    nc -w 2 "$GATEWAY" 8080 >/dev/null
  sleep 0.1 & wait $!
done"#;
    let mut env = vec![json!({"name": "GATEWAY", "value": gateway_ip})];
    for (i, token) in tokens.iter().enumerate() {
        env.push(json!({"name": format!("TOKEN_{i}"),
            "valueFrom": {"secretKeyRef": {"name": token, "key": "token"}}}));
    }
    let mut container = json!({
        "name": "app",
        "image": TOOLBOX,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "env": env,
    });
    // Ready 3 s after start: a rollout of two replicas takes several seconds, as a real one does.
    container["readinessProbe"] = json!({
        "exec": {"command": ["/bin/sh", "-c", "true"]},
        "initialDelaySeconds": 3,
        "periodSeconds": 1,
    });
    if let Some(first) = ready_only_with {
        container["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "FIRST", "value": first}));
        container["readinessProbe"] = json!({
            "exec": {"command": ["/bin/sh", "-c", "test \"$TOKEN_0\" = \"$FIRST\""]},
            "periodSeconds": 1,
        });
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            // The stuck one is stuck after 10 s; the others get the default (10 minutes).
            "progressDeadlineSeconds": if ready_only_with.is_some() { 10 } else { 600 },
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]},
            },
        },
    }))
    .unwrap()
}

/// The chart with consumer restarts and authz on verifier `api` (publishDelay 0s), and the
/// gateway pod in front of authz; the gateway's IP.
async fn consumer_cluster(ns: &TestNs) -> (Release, String) {
    create_map_verifier(ns, "api", "api-tokens").await;
    let release = install_chart(
        ns,
        &[
            "authz.enabled=true",
            "authz.verifier.name=api",
            "authz.output=api-tokens",
            "authz.replicas=1",
            "consumers.enabled=true",
            "consumers.window=2s",
        ],
    );
    let service = ns
        .api::<k8s_openapi::api::core::v1::Service>()
        .get(&format!("{}-tokenmint-authz", ns.name))
        .await
        .unwrap();
    let authz_ip = service.spec.unwrap().cluster_ip.expect("a ClusterIP");
    let (config, pod) = api_gateway(&authz_ip);
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    let gateway = run_pod(ns, &pod).await;
    (release, gateway.status.unwrap().pod_ip.expect("a pod IP"))
}

async fn create_deployment(ns: &TestNs, deployment: &k8s_openapi::api::apps::v1::Deployment) {
    ns.api::<k8s_openapi::api::apps::v1::Deployment>()
        .create(&PostParams::default(), deployment)
        .await
        .unwrap();
}

/// Deployment `name`'s generation: one more per pod-template change, i.e. per restart.
async fn generation(ns: &TestNs, name: &str) -> i64 {
    let d = ns
        .api::<k8s_openapi::api::apps::v1::Deployment>()
        .get(name)
        .await
        .unwrap();
    d.metadata.generation.unwrap()
}

/// The annotations of Deployment `name`'s pod template.
async fn template_annotations(ns: &TestNs, name: &str) -> BTreeMap<String, String> {
    let d = ns
        .api::<k8s_openapi::api::apps::v1::Deployment>()
        .get(name)
        .await
        .unwrap();
    let template = d.spec.unwrap().template;
    template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default()
}

/// Waits until Deployment `name` has every replica ready and available on its current template.
async fn rolled_out(ns: &TestNs, name: &str) {
    let api = ns.api::<k8s_openapi::api::apps::v1::Deployment>();
    let done = |d: Option<&k8s_openapi::api::apps::v1::Deployment>| {
        d.is_some_and(|d| {
            tokenmint::core::consumer::deployment_progress(d)
                == tokenmint::core::consumer::Progress::Complete
        })
    };
    tokio::time::timeout(Duration::from_secs(120), await_condition(api, name, done))
        .await
        .unwrap_or_else(|_| panic!("Deployment {name} rolled out within 120s"))
        .unwrap();
}

/// Waits until token `name`'s consumers all run its current credential, as its status says.
async fn consumers_current(ns: &TestNs, name: &str) -> tokenmint::api::ApiToken {
    wait_for(
        &format!("{name}'s consumers on the current credential"),
        Duration::from_secs(180),
        || async {
            let t = token(ns, name).await;
            let status = t.status.as_ref()?;
            let current = !status.consumers.is_empty()
                && status
                    .consumers
                    .iter()
                    .all(|c| c.state == "Current" && c.fingerprint == status.fingerprint);
            current.then_some(t)
        },
    )
    .await
}

/// The statuses nginx logged for the checks of `pod`-prefixed clients.
async fn gateway_statuses(ns: &TestNs) -> BTreeMap<String, usize> {
    let log = ns
        .api::<Pod>()
        .logs("api-gateway", &LogParams::default())
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for line in log.lines().filter_map(|l| l.strip_prefix("checked ")) {
        let status = line.split(' ').next().unwrap_or_default().to_owned();
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
}

/// A 2-replica Deployment reading its Bearer token from an environment variable sends it through
/// nginx + authz without pause across three rotations with an overlap: no request is refused, each
/// rotation restarts it exactly once, after the new credential was promoted; the operator, deleted
/// mid-rollout, does not restart it again. Prints rotation → every pod on the new credential.
#[tokio::test]
async fn a_deployment_reading_its_token_from_env_rides_through_rotations_with_no_refused_request() {
    ensure_crds();
    let _node = NODE.read().await;
    let ns = TestNs::new("node-consumers").await;
    let (_release, gateway_ip) = consumer_cluster(&ns).await;
    let spec = json!({"role": "reader", "audiences": ["api"],
        "rotation": {"period": "30d", "overlap": "60s"},
        "consumers": [{"kind": "Deployment", "name": "app"}]});
    let first = issue(&ns, "app", spec_of(spec)).await;
    wait_published(&ns, "api", "api-tokens", &first.access_key).await;
    create_deployment(
        &ns,
        &consumer_deployment("app", &["app"], 2, &gateway_ip, None),
    )
    .await;
    rolled_out(&ns, "app").await;
    // Named before any rotation: adopted, not restarted.
    let adopted = consumers_current(&ns, "app").await;
    assert!(status_of(&adopted).consumers[0].restarted_at.is_none());
    assert_eq!(generation(&ns, "app").await, 1);

    let fullname = format!("{}-tokenmint", ns.name);
    for rotation in 1..=3u64 {
        let asked = Instant::now();
        annotate(
            &ns,
            "app",
            tokenmint::api::ROTATE_ANNOTATION,
            &rotation.to_string(),
        )
        .await;
        settled(&ns, "app", rotation).await;
        let promoted = asked.elapsed();
        if rotation == 2 {
            // The operator goes while the restart is queued or rolling out; its successor reads the
            // annotation already on the pod template and restarts nothing again.
            wait_for("the restart under way", WAIT, || async {
                let t = token(&ns, "app").await;
                let state = status_of(&t).consumers.first().map(|c| c.state.clone());
                matches!(state.as_deref(), Some("RollingOut")).then_some(())
            })
            .await;
            let leader = lease_holder(&ns, &fullname).await;
            ns.api::<Pod>()
                .delete(&leader, &Default::default())
                .await
                .unwrap();
        }
        let t = consumers_current(&ns, "app").await;
        eprintln!(
            "node: rotation {rotation}: promoted {promoted:?} after the request, every consumer pod on the new credential {:?} after it",
            asked.elapsed()
        );
        assert_eq!(
            generation(&ns, "app").await,
            1 + i64::try_from(rotation).unwrap(),
            "one restart per rotation"
        );
        let consumer = &status_of(&t).consumers[0];
        assert!(consumer.restarted_at.is_some());
        let annotations = template_annotations(&ns, "app").await;
        assert_eq!(
            annotations["credential.tokenmint.dev/app"],
            status_of(&t).fingerprint.clone().unwrap()
        );
    }
    let statuses = gateway_statuses(&ns).await;
    eprintln!("node: the gateway's answers to the consumer across 3 rotations: {statuses:?}");
    assert!(
        statuses.get("200").copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
    // 499: the client gave up waiting (nc closes after 0.2 s) on a loaded machine; not an answer.
    // Anything else (401, 403, 5xx) is a request the gateway refused or failed.
    let refused: Vec<&String> = statuses
        .keys()
        .filter(|s| *s != "200" && *s != "499")
        .collect();
    assert!(refused.is_empty(), "a refused request: {statuses:?}");
    let events = events(&ns, "app").await;
    let restarts = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ConsumerRestarted"))
        .count();
    assert_eq!(restarts, 3, "one ConsumerRestarted Event per rotation");
    ns.cleanup().await;
}

/// Two tokens of one Deployment rotating in the same second restart it once. A restart that never
/// becomes ready is stuck: status and a Warning say so, the previous credential is kept past its
/// overlap while the rollout does not finish, and retired at one more overlap with a Warning.
#[tokio::test]
async fn tokens_rotating_together_restart_a_workload_once_and_a_stuck_rollout_holds_retirement_within_its_bound()
 {
    ensure_crds();
    let _node = NODE.read().await;
    let ns = TestNs::new("node-consumers-stuck").await;
    let (_release, gateway_ip) = consumer_cluster(&ns).await;
    let of = |consumer: &str| {
        spec_of(json!({"role": "reader", "audiences": ["api"],
            "rotation": {"period": "30d", "overlap": "20s"},
            "consumers": [{"kind": "Deployment", "name": consumer}]}))
    };
    issue(&ns, "a", of("pair")).await;
    issue(&ns, "b", of("pair")).await;
    let stuck = issue(&ns, "s", of("stuck")).await;
    create_deployment(
        &ns,
        &consumer_deployment("pair", &["a", "b"], 1, &gateway_ip, None),
    )
    .await;
    create_deployment(
        &ns,
        &consumer_deployment("stuck", &["s"], 1, &gateway_ip, Some(&stuck.bearer)),
    )
    .await;
    rolled_out(&ns, "pair").await;
    rolled_out(&ns, "stuck").await;
    consumers_current(&ns, "a").await;
    consumers_current(&ns, "b").await;
    consumers_current(&ns, "s").await;

    // a and b in the same second: one restart of pair, carrying both credentials.
    annotate(&ns, "a", tokenmint::api::ROTATE_ANNOTATION, "1").await;
    annotate(&ns, "b", tokenmint::api::ROTATE_ANNOTATION, "1").await;
    annotate(&ns, "s", tokenmint::api::ROTATE_ANNOTATION, "1").await;
    settled(&ns, "a", 1).await;
    settled(&ns, "b", 1).await;
    let a = consumers_current(&ns, "a").await;
    let b = consumers_current(&ns, "b").await;
    assert_eq!(
        generation(&ns, "pair").await,
        2,
        "one restart for two tokens"
    );
    let annotations = template_annotations(&ns, "pair").await;
    assert_eq!(
        annotations["credential.tokenmint.dev/a"],
        status_of(&a).fingerprint.clone().unwrap()
    );
    assert_eq!(
        annotations["credential.tokenmint.dev/b"],
        status_of(&b).fingerprint.clone().unwrap()
    );

    // s: its restart never becomes ready (progressDeadlineSeconds 10): Stuck, with a Warning.
    let rotated = settled(&ns, "s", 1).await;
    let first_retirement = status_of(&rotated).previous.clone().unwrap().retires_at.0;
    let stuck_event = wait_event(&ns, "s", "ConsumerStuck", "Warning").await;
    assert!(
        stuck_event
            .message
            .unwrap_or_default()
            .contains("progress deadline")
    );
    let t = wait_for("s's consumer reported Stuck", WAIT, || async {
        let t = token(&ns, "s").await;
        (status_of(&t).consumers.first()?.state == "Stuck").then_some(t)
    })
    .await;
    assert!(status_of(&t).previous.is_some());
    // Past the first retirement instant the previous credential is still there, moved on.
    wait_for(
        "the first retirement instant passed",
        Duration::from_secs(60),
        || async {
            (jiff::Timestamp::now() > first_retirement + jiff::SignedDuration::from_secs(2))
                .then_some(())
        },
    )
    .await;
    let held = status_of(&token(&ns, "s").await).previous.clone();
    let held = held.expect("the previous credential is kept while the consumer is stuck");
    assert!(held.retires_at.0 > first_retirement);
    // ... and retired at one more overlap, with a Warning.
    let retired = wait_event(&ns, "s", "RetiredBeforeConsumers", "Warning").await;
    assert!(
        retired
            .message
            .unwrap_or_default()
            .contains("status.consumers")
    );
    let t = wait_phase(&ns, "s", tokenmint::api::Phase::Active, |t| {
        status_of(t).previous.is_none()
    })
    .await;
    assert_eq!(status_of(&t).consumers[0].state, "Stuck");
    assert!(
        jiff::Timestamp::now() <= first_retirement + jiff::SignedDuration::from_secs(20 + 15),
        "retired within one more overlap"
    );
    assert_eq!(
        generation(&ns, "stuck").await,
        2,
        "restarted once, not again"
    );
    ns.cleanup().await;
}

/// A measurement, not a check (`cargo test --test node -- --ignored consumer_storm`): 200 tokens
/// with overlaps, four per Deployment, 50 one-replica Deployments reading them from environment
/// variables, all 200 rotated at once. Prints how long until every consumer ran the new
/// credentials, how many restarts each Deployment took, and the most rollouts under way at once (a
/// watch on the Deployments, sampled every 100 ms).
#[tokio::test]
#[ignore = "a measurement: run alone"]
async fn consumer_storm() {
    ensure_crds();
    let _node = NODE.read().await;
    let ns = TestNs::new("node-consumer-storm").await;
    create_map_verifier(&ns, "api", "api-tokens").await;
    let _release = install_chart(
        &ns,
        &[
            "consumers.enabled=true",
            "consumers.maxRollouts=10",
            "consumers.maxRolloutsPerNamespace=10",
        ],
    );
    const DEPLOYMENTS: usize = 50;
    const PER: usize = 4;
    let names: Vec<String> = (0..DEPLOYMENTS * PER).map(|i| format!("t{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        let consumer = format!("app{:02}", i / PER);
        create(
            &ns,
            name,
            spec_of(json!({"role": "reader", "audiences": ["api"],
                "rotation": {"period": "30d", "overlap": "10m"},
                "consumers": [{"kind": "Deployment", "name": consumer}]})),
        )
        .await;
    }
    for name in &names {
        settled(&ns, name, 0).await;
    }
    for d in 0..DEPLOYMENTS {
        let tokens: Vec<&str> = names[d * PER..(d + 1) * PER]
            .iter()
            .map(String::as_str)
            .collect();
        let deployment = consumer_deployment(&format!("app{d:02}"), &tokens, 1, "127.0.0.1", None);
        create_deployment(&ns, &deployment).await;
    }
    for d in 0..DEPLOYMENTS {
        rolled_out(&ns, &format!("app{d:02}")).await;
    }
    for name in &names {
        consumers_current(&ns, name).await;
    }
    // Rollouts under way, as the Deployments say, sampled until every token's consumer is current.
    let api = ns.api::<k8s_openapi::api::apps::v1::Deployment>();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (api, peak) = (api.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(list) = api.list(&Default::default()).await {
                    let rolling = list
                        .items
                        .iter()
                        .filter(|d| {
                            tokenmint::core::consumer::deployment_progress(d)
                                != tokenmint::core::consumer::Progress::Complete
                        })
                        .count();
                    peak.fetch_max(rolling, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    for name in &names {
        annotate(&ns, name, tokenmint::api::ROTATE_ANNOTATION, "storm").await;
    }
    let annotated = started.elapsed();
    for name in &names {
        settled(&ns, name, 1).await;
    }
    let promoted = started.elapsed();
    for name in &names {
        consumers_current(&ns, name).await;
    }
    let moved = started.elapsed();
    sampler.abort();
    let mut restarts = BTreeMap::new();
    for d in 0..DEPLOYMENTS {
        let generation = generation(&ns, &format!("app{d:02}")).await;
        *restarts.entry(generation - 1).or_insert(0) += 1;
    }
    eprintln!(
        "node: consumer storm: {} tokens rotated ({annotated:?} to ask), all promoted {promoted:?}, every consumer on the new credentials {moved:?} after the first request; restarts per Deployment -> Deployments: {restarts:?}; most rollouts at once: {}",
        names.len(),
        peak.load(std::sync::atomic::Ordering::Relaxed)
    );
    ns.cleanup().await;
}

/// Trino in a Pod on the node, reading a verifier's `trino` output from its Secret mounted by the
/// kubelet (the JDK and Trino come from the host by hostPath, with the host's C libraries: no image
/// of them exists here). A tenant's token reads exactly its filtered rows through the pod's HTTPS;
/// after `spec.revoked`, Trino refuses it once the kubelet has rewritten the mounted file and Trino
/// has re-read it: how long that took is printed (what a verifier's `publishDelay` must cover).
#[tokio::test]
async fn trino_on_the_node_enforces_a_filter_from_the_mounted_output_and_drops_a_revoked_token() {
    use common::trino::{
        Endpoint, Refused, TLS_NAME, config_files, java_args, java_bin, make_tls, trino_home,
    };
    ensure_crds();
    let ns = TestNs::new("node-trino").await;
    let _node = NODE.read().await;
    let _op = Operator::start(&ns).await;
    create_verifier(
        &ns,
        "warehouse",
        json!({
            "trust": [{"roles": ["tenant-a"], "scopes": [{"type": "DATASOURCES:READ",
                "resources": ["nation"], "requireFilter": true, "filters": ["regionkey = 1"]}]}],
            "outputs": [{"secretName": "warehouse-trino", "format": "trino", "trino": {
                "tables": [{"resource": "nation", "catalog": "tpch", "schema": "tiny"}],
                "privileges": [{"scopeType": "DATASOURCES:READ", "privileges": ["SELECT"]}]}}],
        }),
    )
    .await;
    let tenant = issue(
        &ns,
        "tenant-a",
        spec_of(json!({"role": "tenant-a", "audiences": ["warehouse"],
            "scopes": [{"type": "DATASOURCES:READ", "resource": "nation", "filter": "regionkey = 1"}]})),
    )
    .await;
    wait_for("the trino output to hold the tenant", WAIT, || async {
        let out = data(&secret(&ns, "warehouse-trino").await?);
        out.get("password.db")?
            .contains(&tenant.access_key)
            .then_some(())
    })
    .await;

    // Trino's configuration in a ConfigMap, its TLS keystore in a Secret; the output Secret as is.
    let tls = tempfile::tempdir().unwrap();
    make_tls(tls.path());
    let files = config_files(
        8080,
        8443,
        "/etc/trino/tls/tls.pem",
        "/etc/trino/tokenmint",
        true,
    );
    let items: Vec<serde_json::Value> = files
        .iter()
        .map(|(path, _)| json!({"key": path.replace('/', "_"), "path": path}))
        .collect();
    let data: BTreeMap<String, String> = files
        .into_iter()
        .map(|(path, text)| (path.replace('/', "_"), text))
        .collect();
    ns.api::<ConfigMap>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "trino-etc"}, "data": data}))
                .unwrap(),
        )
        .await
        .unwrap();
    let pem = std::fs::read_to_string(tls.path().join("tls.pem")).unwrap();
    ns.api::<Secret>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "trino-tls"}, "stringData": {"tls.pem": pem}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let java_home = java_bin().parent().unwrap().parent().unwrap().to_owned();
    let host_dir = |name: &str, path: &Path| json!({"name": name, "hostPath": {"path": path, "type": "Directory"}});
    let mut command = vec!["/opt/java/bin/java".to_owned()];
    command.extend(java_args("/opt/trino", "/etc/trino/etc", "/var/trino"));
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "trino"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            // Root in the pod only to read the host's cache under /root through hostPath.
            "securityContext": {"runAsUser": 0},
            "containers": [{
                "name": "trino",
                "image": TOOLBOX,
                "imagePullPolicy": "Never",
                "command": command,
                // Trino reads etc/password-authenticator.properties and etc/access-control.properties.
                "workingDir": "/etc/trino",
                "volumeMounts": [
                    {"name": "tokenmint", "mountPath": "/etc/trino/tokenmint", "readOnly": true},
                    {"name": "etc", "mountPath": "/etc/trino/etc", "readOnly": true},
                    {"name": "tls", "mountPath": "/etc/trino/tls", "readOnly": true},
                    {"name": "data", "mountPath": "/var/trino"},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "java", "mountPath": "/opt/java", "readOnly": true},
                    {"name": "trino", "mountPath": "/opt/trino", "readOnly": true},
                    {"name": "lib", "mountPath": "/lib/x86_64-linux-gnu", "readOnly": true},
                    {"name": "lib64", "mountPath": "/lib64", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "tokenmint", "secret": {"secretName": "warehouse-trino"}},
                {"name": "etc", "configMap": {"name": "trino-etc", "items": items}},
                {"name": "tls", "secret": {"secretName": "trino-tls"}},
                {"name": "data", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
                host_dir("java", &java_home),
                host_dir("trino", &trino_home()),
                host_dir("lib", Path::new("/lib/x86_64-linux-gnu")),
                host_dir("lib64", Path::new("/lib64")),
            ],
        },
    }))
    .unwrap();
    let pod = run_pod(&ns, &pod).await;
    let ip = pod.status.unwrap().pod_ip.expect("a pod IP");
    let trino = std::sync::Arc::new(Endpoint {
        addr: format!("{ip}:8443").parse().unwrap(),
        ca: tls.path().join("cert.pem"),
    });
    let nations = || {
        let (trino, user, password) = (
            trino.clone(),
            tenant.access_key.clone(),
            tenant.password.clone(),
        );
        async move {
            tokio::task::spawn_blocking(move || {
                let sql = "SELECT nationkey FROM tpch.tiny.nation ORDER BY nationkey";
                trino.query(&user, &password, sql)
            })
            .await
            .unwrap()
        }
    };
    let started = Instant::now();
    wait_for(
        "Trino in the pod to start",
        Duration::from_secs(180),
        || {
            let trino = trino.clone();
            async move {
                tokio::task::spawn_blocking(move || trino.started())
                    .await
                    .unwrap()
                    .then_some(())
            }
        },
    )
    .await;
    let rows = wait_for(
        &format!("Trino in the pod ({TLS_NAME} at {ip}) to serve the tenant"),
        Duration::from_secs(180),
        || async { nations().await.ok() },
    )
    .await;
    eprintln!(
        "node: Trino in a pod served the first query {:?} after the pod ran",
        started.elapsed()
    );
    let keys: Vec<i64> = rows.iter().map(|r| r[0].as_i64().unwrap()).collect();
    assert_eq!(
        keys,
        [1, 2, 3, 17, 24],
        "exactly region 1, through the mounted rules"
    );

    let revoked = Instant::now();
    set_spec(&ns, "tenant-a", json!({"revoked": true}))
        .await
        .unwrap();
    wait_for(
        "Trino in the pod to refuse the revoked token",
        Duration::from_secs(180),
        || async { (nations().await == Err(Refused::Credentials)).then_some(()) },
    )
    .await;
    eprintln!(
        "node: revoked → refused by Trino reading the mounted output in {:?} (kubelet sync + Trino's {:?} refresh)",
        revoked.elapsed(),
        common::trino::REFRESH
    );
    ns.cleanup().await;
}
