#!/usr/bin/env bash
# Starts a local control plane (etcd, kube-apiserver, kube-controller-manager) on
# loopback with free ports, and a node beside it (containerd, kubelet, kube-scheduler,
# kube-proxy: hack/node.sh). State, certificates and logs live in .cluster/ at the
# repo root. Idempotent: a healthy running cluster is left alone.
#   hack/cluster-up.sh                    start (or confirm) the cluster
#   hack/cluster-up.sh --status           exit 0 if the cluster is up and ready, 1 otherwise
#   hack/cluster-up.sh --start COMPONENT  relaunch one component (etcd, kube-apiserver or
#                                         kube-controller-manager) of the existing cluster with
#                                         the same flags, ports and state, and wait until it is
#                                         healthy; the rest is left as it is (tests/faults.rs)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.cluster"
pki="$state/pki"
start_ns=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - start_ns) / 1000000 ))ms"; }
components=(etcd kube-apiserver kube-controller-manager)

# The apiserver answers /readyz only with a client cert; 3s caps a hung server.
readyz() {
  [ -f "$state/env" ] || return 1
  # shellcheck disable=SC1091
  . "$state/env"
  curl -fsS --max-time 3 --cacert "$state/pki/ca.crt" --cert "$state/pki/admin.crt" \
    --key "$state/pki/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

# A recorded PID counts only if that process is still the binary we started
# (guards against PID reuse after a reboot or crash).
alive() {
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "$1" "/proc/$pid/cmdline" 2>/dev/null
}

running() {
  for c in "${components[@]}"; do alive "$c" || return 1; done
  readyz && "$root/hack/node.sh" status
}

if [ "${1:-}" = "--status" ]; then running; exit; fi

restart=""   # the component named by --start; empty for a whole new cluster
if [ "${1:-}" = "--start" ]; then
  restart=${2:-}
  case "$restart" in
    etcd | kube-apiserver | kube-controller-manager) ;;
    *) echo "cluster-up: --start takes one of: ${components[*]}" >&2; exit 2 ;;
  esac
  if [ ! -f "$state/env" ] || [ ! -d "$state/bin/" ]; then
    echo "cluster-up: no cluster in $state to start $restart in; run hack/cluster-up.sh" >&2
    exit 1
  fi
  # shellcheck disable=SC1091
  . "$state/env"
  bin="$state/bin"   # the binaries the cluster was started with
fi

# Free ports: connection refused means nobody listens. Picked below the Linux
# ephemeral range so outgoing connections do not grab them in the meantime.
taken=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    case "$taken" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

. "$root/hack/lib/kubeconfig.sh"

ossl() { openssl "$@" 2>/dev/null; }
cert() { # name subject extensions
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
    -keyout "$pki/$1.key" -out "$pki/$1.csr"
  ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/$1.crt" -extfile <(printf '%s\n' "$3")
  rm -f "$pki/$1.csr"
}


# The state of a new cluster: binaries, free ports, PKI, the KCM's kubeconfig.
new_state() {
  if running; then
    echo "cluster-up: already running (kubeconfig: $state/kubeconfig) [$(elapsed)]"
    exit 0
  fi
  if [ -d "$state" ]; then
    echo "cluster-up: removing stale state in $state" >&2
    "$root/hack/cluster-down.sh" >/dev/null
  fi

  bin=$("$root/hack/build-controlplane.sh")
  mkdir -p "$pki"
  ln -sfn "$bin" "$state/bin"   # lets tests, the demo and humans find the pinned kubectl

  ETCD_PORT=$(free_port); taken+="$ETCD_PORT "
  ETCD_PEER_PORT=$(free_port); taken+="$ETCD_PEER_PORT "
  APISERVER_PORT=$(free_port); taken+="$APISERVER_PORT "
  OPERATOR_METRICS_PORT=$(free_port); taken+="$OPERATOR_METRICS_PORT "   # for the demo operator (hack/demo.sh)
  KUBELET_PORT=$(free_port); taken+="$KUBELET_PORT "
  KUBELET_HEALTHZ_PORT=$(free_port); taken+="$KUBELET_HEALTHZ_PORT "
  SCHEDULER_PORT=$(free_port); taken+="$SCHEDULER_PORT "
  PROXY_HEALTHZ_PORT=$(free_port); taken+="$PROXY_HEALTHZ_PORT "
  PROXY_METRICS_PORT=$(free_port); taken+="$PROXY_METRICS_PORT "
  # The kubelet refuses a loopback node IP, and pods reach the API server through this address.
  NODE_IP=$(ip -4 route get 1 | awk '{ for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit } }')
  [ -n "$NODE_IP" ] || { echo "cluster-up: this machine has no IPv4 address with a route; the node needs one" >&2; exit 1; }
  for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT OPERATOR_METRICS_PORT KUBELET_PORT KUBELET_HEALTHZ_PORT \
           SCHEDULER_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT NODE_IP; do
    printf '%s=%s\n' "$v" "${!v}"
  done >"$state/env"

  # --- PKI: throwaway CA, serving cert, client certs, service-account key pair ---
  ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=tokenmint-local-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt"
  cert apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
  cert admin "/O=system:masters/CN=tokenmint-admin" "extendedKeyUsage=clientAuth"
  # The KCM keeps its own name in audit/logs but gets full rights: with
  # --use-service-account-credentials=false its controllers act as this identity.
  cert kcm "/O=system:masters/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  # The node's identities, each under the API server's built-in RBAC for its role.
  cert kubelet "/O=system:nodes/CN=system:node:tokenmint-node" "extendedKeyUsage=clientAuth"
  cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  cert proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  # kube-apiserver to the kubelet (logs, exec, port-forward).
  cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
  ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

  kubeconfig "$state/kcm.kubeconfig" kcm
}

# setsid + nohup: the processes outlive this script and the terminal/make that ran
# it. The wrapper records its own PID and then execs, so the PID is the binary's.
# The log is appended to, so a relaunch (--start) keeps what the last process wrote.
launch() { # name args...
  local name=$1; shift
  # shellcheck disable=SC2016 # expanded by the inner shell / kubectl
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$state/$name.pid" "$bin/$name" "$@" \
    </dev/null >>"$state/$name.log" 2>&1 &
}

# A new cluster that fails to start is stopped (logs kept); a failed --start leaves the
# other components running.
fail() { # component message
  echo "cluster-up: $2" >&2
  echo "--- last lines of $state/$1.log ---" >&2
  tail -n 30 "$state/$1.log" >&2 || true
  [ -n "$restart" ] || "$root/hack/cluster-down.sh" --keep-logs >/dev/null 2>&1 || true
  exit 1
}

# One function per component holds its command line, for a new cluster and for --start.
# (Bodies not indented: the command lines are as they were, so blame and merges follow them.)

# etcd: fsync off and a big quota, because this is disposable test state and a
# benchmark writes 10k+ objects.
start_etcd() {
launch etcd --name tokenmint --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "tokenmint=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --quota-backend-bytes 8589934592 --log-level warn
}

etcd_health() { curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1; }

wait_etcd() {
  for _ in $(seq 100); do
    etcd_health && break
    alive etcd || sleep 0.2   # the pid file may not be written yet
    alive etcd || fail etcd "etcd exited during startup"
    sleep 0.1
  done
  etcd_health || fail etcd "etcd not healthy after 10s"
}

start_kube_apiserver() {
launch kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
  --kubelet-client-certificate "$pki/apiserver-kubelet.crt" --kubelet-client-key "$pki/apiserver-kubelet.key" \
  --kubelet-preferred-address-types InternalIP \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true --profiling=false
}

start_kube_controller_manager() {
launch kube-controller-manager --kubeconfig "$state/kcm.kubeconfig" \
  --controllers garbagecollector,namespace,serviceaccount,serviceaccount-token,clusterrole-aggregation,deployment,replicaset,endpoints-controller,endpointslice-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller,node-lifecycle-controller \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials=false --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0 --kube-api-qps 200 --kube-api-burst 400
}

# The KCM serves no health endpoint here (--secure-port 0): it counts as healthy once the
# garbage collector, which deletes a token's Secret with it, has synced since the last --start.
wait_kcm() {
  local timeout=${CLUSTER_UP_TIMEOUT:-60} deadline kcm=kube-controller-manager
  deadline=$(( $(date +%s) + timeout ))
  until awk '/^--- cluster-up.sh --start/ { synced = 0 } /all resource monitors have synced/ { synced = 1 }
             END { exit !synced }' "$state/$kcm.log"; do
    alive $kcm || { sleep 0.2; alive $kcm || fail $kcm "$kcm exited during startup"; }
    [ "$(date +%s)" -lt "$deadline" ] || fail $kcm "$kcm's garbage collector not synced after ${timeout}s"
    sleep 0.2
  done
}

# Waits for the apiserver's readyz while each named component stays alive.
wait_readyz() { # component...
  local timeout=${CLUSTER_UP_TIMEOUT:-60} deadline c
  deadline=$(( $(date +%s) + timeout ))
  until readyz; do
    for c in "$@"; do alive "$c" || { sleep 0.2; alive "$c" || fail "$c" "$c exited during startup"; }; done
    [ "$(date +%s)" -lt "$deadline" ] || fail kube-apiserver "kube-apiserver not ready after ${timeout}s"
    sleep 0.2
  done
}

if [ -n "$restart" ]; then
  if alive "$restart"; then
    echo "cluster-up: $restart is already running (pid $(cat "$state/$restart.pid"))"
  else
    echo "--- cluster-up.sh --start $restart at $(date -u +%Y-%m-%dT%H:%M:%SZ) ---" >>"$state/$restart.log"
    "start_${restart//-/_}"
  fi
  case "$restart" in
    etcd) wait_etcd ;;
    kube-apiserver) wait_readyz kube-apiserver ;;
    kube-controller-manager) wait_kcm ;;
  esac
  echo "cluster-up: $restart healthy (pid $(cat "$state/$restart.pid")) in $(elapsed)"
  exit 0
fi

new_state
start_etcd
wait_etcd
# KCM retries until the apiserver is up, so both start together; wait for readyz.
start_kube_apiserver
start_kube_controller_manager
wait_readyz "${components[@]}"

kubeconfig "$state/kubeconfig" admin
if ! "$root/hack/node.sh" up; then
  "$root/hack/cluster-down.sh" --keep-logs >/dev/null 2>&1 || true
  exit 1
fi
echo "cluster-up: ready at https://127.0.0.1:$APISERVER_PORT in $(elapsed) (KUBECONFIG=$state/kubeconfig)"
