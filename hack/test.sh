#!/usr/bin/env bash
# `make test`: unit tests plus integration tests against the local control plane.
# Starts the cluster if it is not running and stops it afterwards only if this
# script started it. Integration tests fail (never skip) without a cluster.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The operator image the node tests run (cargo keeps the build; the archive is rebuilt each time).
TOKENMINT_IMAGE=$(hack/build-image.sh)
export TOKENMINT_IMAGE

if ! hack/cluster-up.sh --status; then
  hack/cluster-up.sh
  trap 'hack/cluster-down.sh' EXIT
fi

hack/stop-demo-operator.sh test
hack/node.sh import target/image/tokenmint.tar

export KUBECONFIG="$root/.cluster/kubeconfig"
export TOKENMINT_TEST_KUBECONFIG="$KUBECONFIG"
export TOKENMINT_KUBECTL="$root/.cluster/bin/kubectl"
TOKENMINT_HELM="$(hack/install-tools.sh)"   # pinned helm for the chart tests; cached after the first build
export TOKENMINT_HELM
TOKENMINT_PROMTOOL="$(hack/install-tools.sh promtool)"   # pinned promtool for the alert rules' tests
export TOKENMINT_PROMTOOL
TOKENMINT_NGINX="$(hack/install-nginx.sh)"   # Debian's nginx for the htpasswd, authz and gateway-snippet tests; installed only when missing
export TOKENMINT_NGINX
TOKENMINT_CADDY="$(hack/install-caddy.sh)"   # Debian's Caddy for the gateway-snippet tests; installed only when missing
export TOKENMINT_CADDY
TOKENMINT_TRINO="$(hack/install-trino.sh)"   # Trino 476 from Maven Central for the Trino tests; cached after the first download
export TOKENMINT_TRINO

start=$(date +%s)
# --workspace: the harness's unit tests run and the bench builds too (neither has cluster tests).
cargo test --workspace --all-targets --no-fail-fast "$@"
echo "test: cargo test took $(( $(date +%s) - start ))s"
# The suite leaves nothing behind: no test namespace, no orphaned token object in etcd.
hack/check-clean.sh
