#!/usr/bin/env bash
# A `make demo` operator watches every namespace and would race the operators that the tests and
# the benches start (two operators on one token: conflicts, retries, numbers that mean nothing).
# Stops it if it runs: the demo's Helm release scaled to 0 replicas (and its pods gone), or an
# operator process an earlier version of the demo ran on the host. `make demo` starts it again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pidfile="$root/.cluster/operator.pid"
if pid=$(cat "$pidfile" 2>/dev/null) && grep -q tokenmint "/proc/$pid/cmdline" 2>/dev/null; then
  echo "${1:-tokenmint}: stopping the demo operator (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  rm -f "$pidfile"
fi
kubectl=("$root/.cluster/bin/kubectl" --kubeconfig "$root/.cluster/kubeconfig" -n tokenmint-system)
if [ -x "$root/.cluster/bin/kubectl" ] &&
  replicas=$("${kubectl[@]}" get deployment tokenmint -o jsonpath='{.spec.replicas}' 2>/dev/null) &&
  [ "$replicas" != 0 ]; then
  echo "${1:-tokenmint}: scaling the demo operator (helm release tokenmint in tokenmint-system) to 0"
  "${kubectl[@]}" scale deployment tokenmint --replicas=0 >/dev/null
  "${kubectl[@]}" wait pod --for=delete --timeout 60s \
    -l app.kubernetes.io/instance=tokenmint,app.kubernetes.io/component!=authz >/dev/null 2>&1 || true
fi
