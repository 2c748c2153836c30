#!/usr/bin/env bash
# The local node beside the control plane: containerd, kubelet, kube-scheduler and kube-proxy,
# started by hack/cluster-up.sh and torn down by hack/cluster-down.sh.
#   hack/node.sh up     start the node and wait until it is Ready (needs root: containers); refuses
#                       when kube-proxy or CNI chains are already in iptables (down removes them all)
#   hack/node.sh status exit 0 if every node process runs
#   hack/node.sh import ARCHIVE   import an image (a docker-archive) into the node's containerd
#   hack/node.sh kill CONTAINER   SIGKILL one container's process (the tests' crash)
#   hack/node.sh down   stop it and undo what it did to this machine: containers, mounts, network
#                       namespaces, the CNI bridge, iptables chains, ip_forward
# State, logs and pids are in .cluster/node/. What took time to find:
# - without CAP_SYS_RESOURCE every sandbox fails ("can't get final child's PID from pipe") until
#   the CRI config sets restrict_oom_score_adj;
# - cgroups v1 needs cgroupDriver cgroupfs and failCgroupV1 false;
# - the kubelet refuses a loopback node IP: the machine's own address is looked up at start;
# - containerd 1.6 keeps its run directory (/run/containerd) and the system's netns directory
#   (/run/netns) whatever its config says, so down cleans those of our pods too.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.cluster"
node="$state/node"
pki="$state/pki"
NODE_NAME=tokenmint-node
POD_SUBNET=10.244.0.0/24
BRIDGE=tmcni0
ctr_() { ctr --address "$node/containerd.sock" -n k8s.io "$@"; }

alive() { # name binary
  local pid
  pid=$(cat "$node/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}

launch() { # name binary args...
  local name=$1 binary=$2
  shift 2
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$node/$name.pid" "$binary" "$@" \
    </dev/null >>"$node/$name.log" 2>&1 &
}

fail() { # component message
  echo "node: $2" >&2
  echo "--- last lines of $node/$1.log ---" >&2
  tail -n 30 "$node/$1.log" >&2 || true
  exit 1
}

. "$root/hack/lib/kubeconfig.sh"

up() {
  [ "$(id -u)" -eq 0 ] || { echo "node: containers need root; run as root" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$state/env"
  local bin="$state/bin" images
  images=$("$root/hack/build-images.sh")
  mkdir -p "$node/cni" "$node/containerd" "$node/kubelet" "$node/pod-logs"

  # down removes every KUBE-* and CNI-* chain: so none may be here before us. Chains left by a
  # cluster of ours are gone by now (cluster-up runs cluster-down on stale state); any other are
  # another Kubernetes node's or CNI's on this machine, which ours would share and then delete.
  local save foreign=""
  for save in iptables-save ip6tables-save; do
    command -v "$save" >/dev/null || continue
    foreign+=$("$save" | grep -oE '^:(KUBE|CNI)-[^ ]+' | head -3 | tr '\n' ' ' || true)
  done
  if [ -n "$foreign" ]; then
    echo "node: iptables already has kube-proxy or CNI chains ($foreign...): another Kubernetes" >&2
    echo "node: node on this machine, or a cluster removed without make cluster-down. Ours would share" >&2
    echo "node: them and delete them at cluster-down; remove them first, or use another machine." >&2
    exit 1
  fi
  touch "$node/iptables.ours"   # from here on, the KUBE-* and CNI-* chains are ours to remove

  # What down restores: the forwarding switch and the network namespaces that were already here.
  cat /proc/sys/net/ipv4/ip_forward >"$node/ip_forward.before"
  ls /run/netns 2>/dev/null >"$node/netns.before" || true

  cat >"$node/cni/10-tokenmint.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tokenmint",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$node/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$node/containerd.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$node/containerd.sock"
[ttrpc]
  address = "$node/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "tokenmint.local/pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni"
EOF
  launch containerd /usr/bin/containerd --config "$node/containerd.toml"
  for _ in $(seq 100); do
    ctr_ version >/dev/null 2>&1 && break
    alive containerd containerd || { sleep 0.2; alive containerd containerd || fail containerd "containerd exited during startup"; }
    sleep 0.1
  done
  ctr_ version >/dev/null 2>&1 || fail containerd "containerd not answering after 10s"
  for archive in "$images"/*.tar; do
    ctr_ images import --no-unpack "$archive" >/dev/null ||
      fail containerd "importing $archive failed"
  done

  kubeconfig "$node/kubelet.kubeconfig" kubelet
  kubeconfig "$node/scheduler.kubeconfig" scheduler
  kubeconfig "$node/proxy.kubeconfig" proxy
  cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$node/containerd.sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: AlwaysAllow}
podLogsDir: $node/pod-logs
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  launch kubelet "$bin/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet-pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  launch kube-scheduler "$bin/kube-scheduler" --kubeconfig "$node/scheduler.kubeconfig" \
    --authentication-kubeconfig "$node/scheduler.kubeconfig" --authorization-kubeconfig "$node/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT"
  cat >"$node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $node/proxy.kubeconfig}
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
iptables: {masqueradeAll: true, localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  launch kube-proxy "$bin/kube-proxy" --config "$node/kube-proxy.yaml"

  local timeout=${CLUSTER_UP_TIMEOUT:-90} deadline c
  deadline=$(( $(date +%s) + timeout ))
  until [ "$("$bin/kubectl" --kubeconfig "$state/kubeconfig" get node "$NODE_NAME" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
    for c in containerd:containerd kubelet:kubelet kube-scheduler:kube-scheduler kube-proxy:kube-proxy; do
      alive "${c%%:*}" "${c#*:}" || { sleep 0.2; alive "${c%%:*}" "${c#*:}" || fail "${c%%:*}" "${c%%:*} exited during startup"; }
    done
    [ "$(date +%s)" -lt "$deadline" ] || fail kubelet "node $NODE_NAME not Ready after ${timeout}s"
    sleep 0.2
  done
}

stop() { # name binary
  local pid
  pid=$(cat "$node/$1.pid" 2>/dev/null) || return 0
  rm -f "$node/$1.pid"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null || return 0
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "node: $1 (pid $pid) ignored TERM for 10s, killing" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  [ -d "$node" ] || return 0
  stop kube-proxy kube-proxy
  stop kube-scheduler kube-scheduler
  stop kubelet kubelet
  # Every container and sandbox of ours, then containerd, then any shim left of it.
  if alive containerd containerd; then
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks kill -a -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
    for _ in $(seq 50); do
      [ -z "$(ctr_ tasks ls -q 2>/dev/null | head -1)" ] && break
      for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks rm -f "$task" >/dev/null 2>&1 || true; done
      sleep 0.1
    done
    stop containerd containerd
  fi
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $node/containerd.sock" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts: the kubelet's volumes and containerd's snapshots under .cluster/node, and our
  # sandboxes' shm under containerd's fixed run directory; deepest first.
  local mounts
  mounts=$(awk -v node="$node" '$2 ~ "^"node || $2 ~ "^/run/containerd/io.containerd.grpc.v1.cri/sandboxes/" { print $2 }' /proc/mounts | sort -r)
  for m in $mounts; do umount -l "$m" 2>/dev/null || true; done
  # Network namespaces CNI made for our pods, and the bridge (their veths go with them).
  local ns
  for ns in $(ls /run/netns 2>/dev/null || true); do
    grep -qx "$ns" "$node/netns.before" 2>/dev/null && continue
    case "$ns" in cni-*) ip netns delete "$ns" 2>/dev/null || true ;; esac
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  # kube-proxy's and the kubelet's KUBE-* chains, CNI's CNI-* chains, and every rule naming them.
  local save restore
  local pairs="iptables-save:iptables-restore ip6tables-save:ip6tables-restore"
  [ -f "$node/iptables.ours" ] || pairs=""   # up refused: the chains there are someone else's
  for pair in $pairs; do
    save=${pair%%:*}; restore=${pair#*:}
    command -v "$save" >/dev/null || continue
    "$save" | grep -v -e 'KUBE-' -e 'CNI-' | "$restore" 2>/dev/null || true
  done
  [ -f "$node/ip_forward.before" ] && cat "$node/ip_forward.before" >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
  # The kubelet's cgroups (kubepods) under each v1 controller, deepest first.
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} + 2>/dev/null || true
  # The kubelet's symlinks to our pods' logs.
  find /var/log/containers -maxdepth 1 -type l -lname "$node/*" -delete 2>/dev/null || true
}

# Whether every node process we started still runs.
status() {
  alive containerd containerd && alive kubelet kubelet && alive kube-scheduler kube-scheduler &&
    alive kube-proxy kube-proxy
}

# Imports a docker-archive (`make image`'s) into the node's containerd.
import() { # archive
  [ -f "${1:-}" ] || { echo "node: import needs an image archive; no file ${1:-}" >&2; exit 1; }
  alive containerd containerd || { echo "node: containerd is not running; make cluster-up first" >&2; exit 1; }
  ctr_ images import --no-unpack "$1" >/dev/null || { echo "node: importing $1 failed" >&2; exit 1; }
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  import) import "${2:-}" ;;
  # SIGKILL of one container's process (as the kernel's OOM killer or a crash would end it): the
  # tests' way to kill a pod without the graceful stop that `kubectl delete --force` still gives.
  kill) ctr_ tasks kill --signal SIGKILL "${2:?container id}" ;;
  *) echo "usage: hack/node.sh up|down|status|import ARCHIVE|kill CONTAINER_ID" >&2; exit 2 ;;
esac
