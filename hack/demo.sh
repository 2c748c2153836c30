#!/usr/bin/env bash
# `make demo`: cluster up (a control plane and its node), the operator image built here and
# installed by Helm as Pods, the examples applied; waits until every ApiToken has been
# reconciled and shows the result; then a verifier's htpasswd output checked by nginx, and a
# gateway Pod (nginx asking the chart's tokenmint authz) checking a client Pod's token before and
# after a revocation.
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

cargo build --quiet --bin kubectl-apitoken
bin="${CARGO_TARGET_DIR:-$root/target}/debug"   # where cargo build puts the plugin
export PATH="$bin:$PATH"   # kubectl finds the plugin kubectl-apitoken there
# Stops the process of pid file $1 if it still is one whose command line contains $2 (what an
# earlier version of this demo ran on the host).
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
stop_previous "$state/authz.pid" tokenmint
stop_previous "$state/nginx.pid" nginx

# The operator image built here (no registry: imported into the node), and the pinned helm.
hack/build-image.sh >/dev/null
hack/node.sh import "${TOKENMINT_IMAGE_OUT:-$root/target/image}/tokenmint.tar" >/dev/null
helm=$(hack/install-tools.sh)

# The gateway step below revokes this token, and revocation is final: start it afresh.
kubectl delete apitoken -n "$ns" gateway-client --ignore-not-found --wait >/dev/null
# Every example but app-deployment.yaml, whose image (curlimages/curl) no registry here serves;
# the client Pod below consumes a token the same way. The verifier the chart's authz watches is
# among them: authz is ready only once it can read it.
examples=()
for f in examples/*.yaml; do
  [ "$f" = examples/app-deployment.yaml ] || examples+=(-f "$f")
done
kubectl apply --server-side "${examples[@]}"

# The chart installed by Helm with tokenmint authz for the gateway verifier of
# examples/authz-gateway.yaml.
"$helm" upgrade --install tokenmint charts/tokenmint --namespace tokenmint-system --create-namespace \
  --set image.pullPolicy=Never --set authz.enabled=true --set authz.replicas=1 \
  --set authz.verifier.namespace="$ns" --set authz.verifier.name=gateway \
  --set authz.output=gateway-tokens --set authz.usage.granularity=1m \
  --set authz.usage.flushInterval=2s --set consumers.enabled=true --set consumers.window=1s \
  --wait --timeout 180s >/dev/null
# A release from an earlier run may have been scaled to 0 by `make test`.
kubectl -n tokenmint-system scale deployment/tokenmint --replicas=1 >/dev/null
kubectl -n tokenmint-system rollout status deployment/tokenmint --timeout 120s >/dev/null
echo "demo: operator running as a Pod (helm release tokenmint in tokenmint-system; logs: kubectl -n tokenmint-system logs deploy/tokenmint)"


# Some examples are meant to end up revoked or expired, so "Ready" is not the goal:
# wait until every ApiToken has a status.phase other than Pending.
phases() { kubectl get apitokens -A -o jsonpath='{range .items[*]}[{.status.phase}]{"\n"}{end}'; }
deadline=$(( $(date +%s) + ${DEMO_TIMEOUT:-60} ))
until p=$(phases) && [ -n "$p" ] && ! grep -qxE '\[(Pending)?\]' <<<"$p"; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "demo: ApiTokens not reconciled after ${DEMO_TIMEOUT:-60}s; operator log tail:" >&2
    kubectl -n tokenmint-system logs deploy/tokenmint --tail 30 >&2
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
. hack/lib/free-port.sh

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

# ---------------------------------------------------------------- the gateway: Pods on the node
# A gateway Pod runs Debian's nginx (tokenmint.local/nginx:1, built by cluster-up): each request
# is checked with `auth_request` against the chart's tokenmint authz (its Service), which watches
# the sha256-map output of verifier `gateway`; a second nginx server in the Pod stands in for the
# app and answers with the X-Tokenmint-* headers it received. A client Pod reads gateway-client's
# token from its Secret (an environment variable, as an app would) and asks twice a second.
authz_ip=$(kubectl -n tokenmint-system get service tokenmint-authz -o jsonpath='{.spec.clusterIP}')
forward=""
for h in token role scope filter; do
  forward+="auth_request_set \$tm_$h \$upstream_http_x_tokenmint_$h; proxy_set_header X-Tokenmint-$h \$tm_$h;"
done
kubectl -n "$ns" delete pod gateway client --ignore-not-found --wait >/dev/null
kubectl -n "$ns" delete deployment client --ignore-not-found --wait >/dev/null
kubectl apply --server-side -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: gateway-nginx, namespace: $ns}
data:
  nginx.conf: |
    daemon off; pid /tmp/nginx.pid; error_log stderr notice;
    events { worker_connections 64; }
    http {
      access_log off; default_type text/plain;
      client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy; fastcgi_temp_path /tmp/fastcgi;
      uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi;
      server {
        listen 127.0.0.1:8081;
        location / { return 200 "the app saw: token=\$http_x_tokenmint_token role=\$http_x_tokenmint_role scope=\$http_x_tokenmint_scope filter=\$http_x_tokenmint_filter\n"; }
      }
      server {
        listen 8080;
        location = /_tokenmint/top_pages {
          internal;
          proxy_pass http://$authz_ip:8080/verify?scope=PIPES:READ:top_pages;
          proxy_pass_request_body off; proxy_set_header Content-Length "";
        }
        location /pipes/top_pages {
          auth_request /_tokenmint/top_pages;
          $forward
          proxy_pass http://127.0.0.1:8081;
        }
      }
    }
---
apiVersion: v1
kind: Pod
metadata: {name: gateway, namespace: $ns, labels: {app: gateway}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: nginx
      image: tokenmint.local/nginx:1
      imagePullPolicy: Never
      args: [-p, /tmp/, -c, /etc/gateway/nginx.conf]
      securityContext: {runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumeMounts:
        - {name: config, mountPath: /etc/gateway, readOnly: true}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - {name: config, configMap: {name: gateway-nginx}}
    - {name: tmp, emptyDir: {}}
YAML
kubectl -n "$ns" wait pod/gateway --for=condition=Ready --timeout 60s >/dev/null
gateway_ip=$(kubectl -n "$ns" get pod gateway -o jsonpath='{.status.podIP}')
# The client is a Deployment that gateway-client names as its consumer (spec.consumers): it reads
# the token from an environment variable, so after a rotation tokenmint restarts it, once.
kubectl apply --server-side -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: $ns}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: client
          image: tokenmint.local/toolbox:1
          imagePullPolicy: Never
          env:
            - name: API_AUTHORIZATION
              valueFrom: {secretKeyRef: {name: gateway-client, key: authorization-bearer}}
          command: [/bin/sh, -c]
          args:
            - |
              last=""
              while true; do
                # busybox nc stops at the end of its input: keep it open long enough for the answer.
                out=\$( (printf 'GET /pipes/top_pages HTTP/1.0\r\nAuthorization: %s\r\n\r\n' "\$API_AUTHORIZATION"; sleep 0.3) | nc -w 2 $gateway_ip 8080)
                code=\$(printf '%s' "\$out" | head -n 1 | cut -d' ' -f2)
                if [ "\$code" != "\$last" ]; then
                  echo "HTTP \$code \$(printf '%s' "\$out" | grep '^the app saw' || true)"
                  last=\$code
                fi
                sleep 0.5
              done
YAML
kubectl -n "$ns" rollout status deployment/client --timeout 60s >/dev/null
# The client's running pod (a restart replaces it).
client_pod() {
  kubectl -n "$ns" rollout status deployment/client --timeout 60s >/dev/null
  # shellcheck disable=SC2016 # a go-template, not shell
  kubectl -n "$ns" get pods -l app=client -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{if eq .status.phase "Running"}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}{{end}}' | tail -n 1
}
pod=$(client_pod)
# Prints the client pod's new log lines until one starts with "HTTP $1", within 60 s.
shown=0
client_until() {
  local deadline=$(( $(date +%s) + 60 )) lines
  while :; do
    mapfile -t lines < <(kubectl -n "$ns" logs "$pod")
    while [ "$shown" -lt "${#lines[@]}" ]; do
      echo "  client pod $pod: ${lines[$shown]}"
      shown=$((shown + 1))
      case "${lines[$((shown - 1))]}" in "HTTP $1"*) return 0 ;; esac
    done
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "demo: the client never got HTTP $1" >&2
      exit 1
    fi
    sleep 0.5
  done
}
echo "demo: gateway pod $gateway_ip (nginx + the chart's tokenmint authz) checks client pod requests to /pipes/top_pages:"
client_until 200
# authz records the use (written every 2 s here, 30 s by default) and the operator folds it in.
for _ in $(seq 60); do
  [ -n "$(kubectl get apitoken -n "$ns" gateway-client -o jsonpath='{.status.lastUsedAt}')" ] && break
  sleep 0.5
done
echo "demo: last use, as authz recorded it (LAST USED: never = checked by authz, not used; unknown = no authz reports):"
kubectl apitoken list -n "$ns" | sed 's/^/  /'

# A rotation: the new credential is staged, published by the verifier, promoted; then tokenmint
# restarts the consumer once (the previous credential stays valid for the overlap meanwhile).
kubectl apitoken rotate -n "$ns" gateway-client --wait >/dev/null
fingerprint=$(kubectl get apitoken -n "$ns" gateway-client -o jsonpath='{.status.fingerprint}')
for _ in $(seq 120); do
  state=$(kubectl get apitoken -n "$ns" gateway-client -o jsonpath='{.status.consumers[0].state}|{.status.consumers[0].fingerprint}|{.status.consumers[0].restartedAt}')
  [ "${state%%|*}" = Current ] && [ "$(cut -d'|' -f2 <<<"$state")" = "$fingerprint" ] && break
  sleep 0.5
done
echo "demo: after kubectl apitoken rotate gateway-client: status.consumers[0] = $state (state|credential|restartedAt);"
echo "  Deployment client restarted once: generation $(kubectl -n "$ns" get deployment client -o jsonpath='{.metadata.generation}'), pod template annotation credential.tokenmint.dev/gateway-client=$(kubectl -n "$ns" get deployment client -o jsonpath='{.spec.template.metadata.annotations.credential\.tokenmint\.dev/gateway-client}')"
pod=$(client_pod)
shown=0
client_until 200
kubectl apitoken revoke -n "$ns" gateway-client --yes --wait
echo "demo: after the revocation:"
client_until 401
# The gateway stays for a look (kubectl -n tokenmint-demo logs gateway); the client stops asking.
kubectl -n "$ns" delete deployment client --wait=false >/dev/null

# ---------------------------------------------------------------- row filters enforced by Trino
# examples/trino-tenants.yaml: one query per tenant through a real Trino reading the trino output.
hack/demo-trino.sh
