//! tokenmint's credentials consumed by Pods on a real node (the kubelet and containerd that
//! `make cluster-up` starts): read from an environment variable and from a mounted file, and what a
//! rotation does to each. Measures how long the kubelet takes to show a rotated credential in the
//! mounted file, which is what a verifier's `publishDelay` must cover.

mod common;

use std::time::{Duration, Instant};

use common::tokens::*;
use common::*;
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, PostParams};
use kube::runtime::wait::{await_condition, conditions::is_pod_running};
use serde_json::json;
use tokenmint::core::sha256_map::key as sha256_hex;

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
    let ns = TestNs::new("node-consumer").await;
    let _op = Operator::start(&ns).await;
    let before = issue(&ns, "app", spec("reader")).await;

    let pods = ns.api::<Pod>();
    pods.create(&PostParams::default(), &consumer("app", "app"))
        .await
        .unwrap();
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), "app", is_pod_running()),
    )
    .await
    .expect("the pod runs within 60s")
    .unwrap();
    eprintln!(
        "node: the pod ran {:?} after it was created",
        started.elapsed()
    );

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
