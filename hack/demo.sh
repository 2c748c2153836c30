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
cargo build --quiet --bin tokenmint --bin kubectl-apitoken
export PATH="$PATH:$root/target/debug"   # kubectl finds the plugin kubectl-apitoken here
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

# A verifier output checked by a real nginx (Debian's package, installed when missing). The demo
# copies the output into nginx's auth_basic_user_file itself, as the kubelet would for a mounted
# Secret. A throwaway token, so the examples stay as they are for the next run.
nginx_bin=$(hack/install-nginx.sh)
web="$state/demo-nginx"
mkdir -p "$web/www/protected" "$web/tmp"
echo "hello from behind nginx" >"$web/www/protected/index.txt"
nginx_port=$(( 20000 + RANDOM % 20000 ))
cat >"$web/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $web/nginx.pid; error_log $web/error.log;
events { worker_connections 16; }
http {
  access_log off; default_type text/plain;
  client_body_temp_path $web/tmp/body; proxy_temp_path $web/tmp/proxy;
  fastcgi_temp_path $web/tmp/fastcgi; uwsgi_temp_path $web/tmp/uwsgi; scgi_temp_path $web/tmp/scgi;
  server {
    listen 127.0.0.1:$nginx_port;
    root $web/www;
    location /protected/ { auth_basic "tokenmint demo"; auth_basic_user_file $web/htpasswd; }
  }
}
CONF
client="demo-nginx-$(date +%s)"
kubectl apply --server-side -f - >/dev/null <<YAML
apiVersion: tokenmint.dev/v1alpha1
kind: ApiToken
metadata: {name: $client, namespace: $ns}
spec: {role: reader, audiences: [web], description: make demo}
YAML
kubectl wait -n "$ns" --for=jsonpath='{.status.phase}'=Active --timeout 30s "apitoken/$client" >/dev/null
user=$(kubectl get secret -n "$ns" "$client" -o jsonpath='{.data.username}' | base64 -d)
pass=$(kubectl get secret -n "$ns" "$client" -o jsonpath='{.data.password}' | base64 -d)
# Copies the verifier's output to nginx's file once it does (or, with "absent", no longer) list $user.
mirror() {
  for _ in $(seq 100); do
    kubectl get secret -n "$ns" web-htpasswd -o jsonpath='{.data.auth}' | base64 -d >"$web/htpasswd.next"
    if { [ "$1" = present ] && grep -q "^$user:" "$web/htpasswd.next"; } ||
       { [ "$1" = absent ] && ! grep -q "^$user:" "$web/htpasswd.next"; }; then
      mv "$web/htpasswd.next" "$web/htpasswd"; return 0
    fi
    sleep 0.2
  done
  echo "demo: the verifier output never got to $1 for $client" >&2; return 1
}
mirror present
"$nginx_bin" -p "$web" -c "$web/nginx.conf" </dev/null >"$web/stderr.log" 2>&1 &
nginx_pid=$!
trap 'kill "$nginx_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break; sleep 0.1; done
ask() { curl -s -o /dev/null -w '%{http_code}' -u "$user:$pass" "http://127.0.0.1:$nginx_port/protected/index.txt"; }
echo "demo: nginx checks the credentials of ApiTokenVerifier $ns/web (output Secret web-htpasswd):"
echo "  GET /protected/ with $client's credential: HTTP $(ask)"
kubectl apitoken revoke --yes -n "$ns" "$client" >/dev/null 2>&1
mirror absent
echo "  after kubectl apitoken revoke $client:       HTTP $(ask)"
kubectl delete apitoken -n "$ns" "$client" --wait=false >/dev/null
