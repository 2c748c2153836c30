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
bin="${CARGO_TARGET_DIR:-$root/target}/debug"   # where cargo build (below) puts the binaries
export PATH="$bin:$PATH"   # kubectl finds the plugin kubectl-apitoken there
# Stops the process of pid file $1 if it still is one whose command line contains $2.
stop_previous() {
  local pid
  [ -f "$1" ] && pid=$(cat "$1") || return 0
  if kill -0 "$pid" 2>/dev/null && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}
stop_previous "$state/operator.pid" tokenmint
# shellcheck disable=SC1091
. "$state/env"   # OPERATOR_METRICS_PORT: reserved by cluster-up.sh
port=$OPERATOR_METRICS_PORT
# Runs "$@" detached from this shell, its pid in file $1, its output in file $2.
detach() {
  local pidfile=$1 log=$2
  shift 2
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$log" 2>&1 &
}
detach "$state/operator.pid" "$state/operator.log" \
  "$bin/tokenmint" run --metrics-addr "127.0.0.1:$port"
echo "demo: operator running (metrics http://127.0.0.1:$port/metrics, log $state/operator.log)"

# The gateway step below revokes this token, and revocation is final: start it afresh.
kubectl delete apitoken -n "$ns" gateway-client --ignore-not-found --wait >/dev/null
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

nginx_bin=$(hack/install-nginx.sh)   # Debian's package, installed when missing
free_port() {   # the first port from $1 on that nothing listens on
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

# ---------------------------------------------------------------- a server checks a verifier output
# A verifier output checked by a real nginx. The demo
# copies the output into nginx's auth_basic_user_file itself, as the kubelet would for a mounted
# Secret. A throwaway token, so the examples stay as they are for the next run.
web="$state/demo-nginx"
mkdir -p "$web/www/protected" "$web/tmp"
echo "hello from behind nginx" >"$web/www/protected/index.txt"
web_port=$(free_port 18470)
cat >"$web/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $web/nginx.pid; error_log $web/error.log;
events { worker_connections 16; }
http {
  access_log off; default_type text/plain;
  client_body_temp_path $web/tmp/body; proxy_temp_path $web/tmp/proxy;
  fastcgi_temp_path $web/tmp/fastcgi; uwsgi_temp_path $web/tmp/uwsgi; scgi_temp_path $web/tmp/scgi;
  server {
    listen 127.0.0.1:$web_port;
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
web_pid=$!
trap 'kill "$web_pid" 2>/dev/null || true' EXIT   # this one is only for the demo's two requests
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$web_port/" && break; sleep 0.1; done
ask() { curl -s -o /dev/null -w '%{http_code}' -u "$user:$pass" "http://127.0.0.1:$web_port/protected/index.txt"; }
echo "demo: nginx checks the credentials of ApiTokenVerifier $ns/web (output Secret web-htpasswd):"
echo "  GET /protected/ with $client's credential: HTTP $(ask)"
kubectl apitoken revoke --yes -n "$ns" "$client" >/dev/null 2>&1
mirror absent
echo "  after kubectl apitoken revoke $client:       HTTP $(ask)"
kubectl delete apitoken -n "$ns" "$client" --wait=false >/dev/null

# ---------------------------------------------------------------- the gateway: nginx + tokenmint authz
# nginx checks each request with `auth_request` against `tokenmint authz`, which watches the
# sha256-map output of verifier `gateway` (examples/authz-gateway.yaml); a second nginx server
# stands in for the app and answers with the X-Tokenmint-* headers it received.
stop_previous "$state/authz.pid" tokenmint
stop_previous "$state/nginx.pid" nginx
authz_port=$(free_port 18480)
detach "$state/authz.pid" "$state/authz.log" \
  "$bin/tokenmint" authz --verifier "$ns/gateway" --output gateway-tokens \
  --listen "127.0.0.1:$authz_port"
app_port=$(free_port $((authz_port + 1)))
nginx_port=$(free_port $((app_port + 1)))
prefix="$state/nginx"
mkdir -p "$prefix/tmp"
forward=""
for h in token role scope filter; do
  forward+="auth_request_set \$tm_$h \$upstream_http_x_tokenmint_$h; proxy_set_header X-Tokenmint-$h \$tm_$h;"
done
cat >"$prefix/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $prefix/nginx.pid; error_log $prefix/error.log notice;
events { worker_connections 64; }
http {
  access_log off; default_type text/plain;
  client_body_temp_path $prefix/tmp/body; proxy_temp_path $prefix/tmp/proxy;
  fastcgi_temp_path $prefix/tmp/fastcgi; uwsgi_temp_path $prefix/tmp/uwsgi; scgi_temp_path $prefix/tmp/scgi;
  server {
    listen 127.0.0.1:$app_port;
    location / { return 200 "the app saw: token=\$http_x_tokenmint_token role=\$http_x_tokenmint_role scope=\$http_x_tokenmint_scope filter=\$http_x_tokenmint_filter\n"; }
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location = /_tokenmint/top_pages {
      internal;
      proxy_pass http://127.0.0.1:$authz_port/verify?scope=PIPES:READ:top_pages;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
    }
    location /pipes/top_pages {
      auth_request /_tokenmint/top_pages;
      $forward
      proxy_pass http://127.0.0.1:$app_port;
    }
  }
}
CONF
detach "$state/nginx.pid" "$prefix/stderr.log" \
  "$nginx_bin" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log"
deadline=$(( $(date +%s) + 30 ))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$authz_port/readyz")" = 200 ] \
  && (exec 3<>"/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "demo: authz or nginx not up after 30s; logs:" >&2
    tail -n 20 "$state/authz.log" "$prefix/error.log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "demo: nginx on 127.0.0.1:$nginx_port checks /pipes/top_pages with tokenmint authz (log $state/authz.log)"
bearer=$(kubectl apitoken reveal -n "$ns" gateway-client)
# The app's answer when let in; only the status when refused.
request() {
  local out
  out=$(curl -s -w '\nHTTP %{http_code}' -H "Authorization: Bearer $bearer" \
    "http://127.0.0.1:$nginx_port/pipes/top_pages")
  case "$out" in
    *"HTTP 200") echo "  $out" ;;
    *) echo "  ${out##*$'\n'}" ;;
  esac
}
# The map reaches authz through its watch within a second of the token's Secret.
until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $bearer" \
  "http://127.0.0.1:$nginx_port/pipes/top_pages")" = 200 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "demo: the token was never let in" >&2; exit 1; }
  sleep 0.2
done
echo "demo: GET /pipes/top_pages with the Bearer token of gateway-client:"
request
kubectl apitoken revoke -n "$ns" gateway-client --yes --wait
echo "demo: the same request right after the revocation:"
request
