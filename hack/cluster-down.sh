#!/usr/bin/env bash
# Stops exactly the processes hack/cluster-up.sh (and hack/demo.sh) recorded in
# .cluster/*.pid and removes the state. Safe to run when nothing is running.
#   --keep-logs   keep .cluster/*.log (used when startup failed, for debugging)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.cluster"
[ -d "$state" ] || { echo "cluster-down: nothing to stop"; exit 0; }

# Only signal a PID whose command line still names the binary we started there.
ours() { kill -0 "$1" 2>/dev/null && grep -q "$2" "/proc/$1/cmdline" 2>/dev/null; }

# The node first (its pods, mounts, network and iptables chains; hack/node.sh), then the
# control plane. One at a time, clients before servers: an apiserver whose etcd is already gone
# stalls its graceful shutdown. Each gets 10s after TERM, then KILL.
# The demo's nginx and tokenmint authz come first: they are clients of the rest.
"$root/hack/node.sh" down
for name in nginx authz operator kube-controller-manager kube-apiserver etcd; do
  f="$state/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f"); rm -f "$f"
  bin=$name; case $name in operator | authz) bin=tokenmint ;; esac
  if [ -z "$pid" ] || ! ours "$pid" "$bin"; then continue; fi
  kill -TERM "$pid"
  for _ in $(seq 100); do ours "$pid" "$bin" || continue 2; sleep 0.1; done
  echo "cluster-down: $name (pid $pid) ignored TERM for 10s, killing" >&2
  kill -KILL "$pid" 2>/dev/null || true
done

if [ "${1:-}" = "--keep-logs" ]; then
  find "$state" -mindepth 1 -maxdepth 1 ! -name '*.log' -exec rm -rf {} +
else
  rm -rf "$state"
fi
echo "cluster-down: stopped"
