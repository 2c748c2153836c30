#!/usr/bin/env bash
# `make demo`: cluster up, CRDs in, operator running in the background, examples
# applied; waits until every ApiToken has been reconciled and shows the result.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
state="$root/.cluster"
ns=tokenmint-demo

hack/cluster-up.sh
export KUBECONFIG="$state/kubeconfig"
export PATH="$state/bin:$PATH"   # the pinned kubectl, not whatever the machine has

kubectl apply --server-side -f crds/
kubectl wait --for condition=Established --timeout 30s -f crds/ >/dev/null

# Replace a previous demo operator, then start a fresh one detached from this shell.
cargo build --quiet --bin tokenmint
if [ -f "$state/operator.pid" ]; then
  pid=$(cat "$state/operator.pid")
  if kill -0 "$pid" 2>/dev/null && grep -q tokenmint "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
fi
# shellcheck disable=SC1091
. "$state/env"   # OPERATOR_METRICS_PORT: reserved by cluster-up.sh
port=$OPERATOR_METRICS_PORT
# shellcheck disable=SC2016 # expanded by the inner shell / kubectl
setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$state/operator.pid" \
  "$root/target/debug/tokenmint" run --metrics-addr "127.0.0.1:$port" \
  </dev/null >"$state/operator.log" 2>&1 &
echo "demo: operator running (metrics http://127.0.0.1:$port/metrics, log $state/operator.log)"

kubectl apply --server-side -f examples/

# Some examples are meant to end up revoked or expired, so "Ready" is not the goal:
# wait until every ApiToken has a status.phase other than Pending.
phases() { kubectl get apitokens -A -o jsonpath='{range .items[*]}[{.status.phase}]{"\n"}{end}'; }
deadline=$(( $(date +%s) + ${DEMO_TIMEOUT:-60} ))
until p=$(phases) && [ -n "$p" ] && ! grep -qxE '\[(Pending)?\]' <<<"$p"; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "demo: ApiTokens not reconciled after ${DEMO_TIMEOUT:-60}s; operator log tail:" >&2
    tail -n 30 "$state/operator.log" >&2
    exit 1
  fi
  sleep 1
done

kubectl get apitokens -A
# Kubernetes 1.34 creates no Secrets by itself, so any Secret here is the operator's.
secret=$(kubectl get secrets -n "$ns" -o jsonpath='{.items[0].metadata.name}')
echo "demo: keys of Secret $ns/$secret (values not shown):"
# shellcheck disable=SC2016 # expanded by the inner shell / kubectl
kubectl get secret -n "$ns" "$secret" -o go-template='{{range $k, $v := .data}}  {{$k}}{{"\n"}}{{end}}'
