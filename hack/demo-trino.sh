#!/usr/bin/env bash
# `make demo-trino`: row filters enforced by a real Trino. Runs after `make demo` (the operator running,
# examples/trino-tenants.yaml applied): starts Trino 476 on the host with HTTPS, password file and file-based
# access control read from a copy of the verifier output `warehouse-trino` (as the kubelet would mount it),
# then queries one table as tenant 42 and as tenant 7 with each token's username and password, and stops
# Trino. Trino comes from Maven Central once (hack/install-trino.sh) and starts in 15-30 s.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
state="$root/.cluster"
ns=tokenmint-demo
export KUBECONFIG="$state/kubeconfig"
export PATH="$state/bin:$PATH"

hack/cluster-up.sh --status >/dev/null || { echo "demo-trino: run make demo first" >&2; exit 1; }
trino_home=$(hack/install-trino.sh)
java="${TOKENMINT_JAVA:-/usr/lib/jvm/temurin-25-jdk-amd64/bin/java}"
kubectl apply --server-side -f examples/trino-tenants.yaml >/dev/null
kubectl -n "$ns" wait --for=condition=Ready apitokenverifier/warehouse --timeout=60s >/dev/null

dir="$state/demo-trino"
rm -rf "$dir" && mkdir -p "$dir/etc/catalog" "$dir/data" "$dir/auth"
. hack/lib/free-port.sh
http=$(free_port 18480); https=$(free_port $((http + 1)))
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$dir/etc/key.pem" -out "$dir/etc/cert.pem" 2>/dev/null
cat "$dir/etc/key.pem" "$dir/etc/cert.pem" >"$dir/etc/tls.pem"
cat >"$dir/etc/config.properties" <<CONF
coordinator=true
node-scheduler.include-coordinator=true
http-server.http.port=$http
http-server.https.enabled=true
http-server.https.port=$https
http-server.https.keystore.path=$dir/etc/tls.pem
http-server.authentication.type=PASSWORD
internal-communication.shared-secret=$(openssl rand -hex 32)
discovery.uri=http://127.0.0.1:$http
CONF
printf 'password-authenticator.name=file\nfile.password-file=%s\nfile.refresh-period=1s\n' \
  "$dir/auth/password.db" >"$dir/etc/password-authenticator.properties"
printf 'access-control.name=file\nsecurity.config-file=%s\nsecurity.refresh-period=1s\n' \
  "$dir/auth/rules.json" >"$dir/etc/access-control.properties"
echo connector.name=tpch >"$dir/etc/catalog/tpch.properties"
# The output Secret's two keys, as a mounted volume would hold them.
for key in password.db rules.json; do
  kubectl -n "$ns" get secret warehouse-trino -o "jsonpath={.data.${key//./\\.}}" | base64 -d >"$dir/auth/$key"
done

echo "demo-trino: starting Trino 476 on https://127.0.0.1:$https (password file and rules from Secret $ns/warehouse-trino)"
(cd "$dir" && exec "$java" -Xmx1G -XX:+UseG1GC -Djdk.attach.allowAttachSelf=true --enable-native-access=ALL-UNNAMED \
  -cp "$trino_home/lib/*" -Dnode.environment=demo -Dnode.id=demo -Dnode.data-dir="$dir/data" \
  -Dplugin.dir="$trino_home/plugin" -Dcatalog.config-dir=etc/catalog -Dconfig=etc/config.properties \
  io.trino.server.TrinoServer >"$dir/trino.log" 2>&1) &
trino_pid=$!
trap 'kill $trino_pid 2>/dev/null; wait $trino_pid 2>/dev/null || true' EXIT
for _ in $(seq 180); do
  curl -sf "http://127.0.0.1:$http/v1/info" | grep -q '"starting":false' && break
  kill -0 $trino_pid 2>/dev/null || { tail -20 "$dir/trino.log"; exit 1; }
  sleep 1
done

# Trino's client protocol: POST the statement, follow nextUri; prints rows or the error.
query() { # user password sql
  local r next
  r=$(curl -sS --cacert "$dir/etc/cert.pem" -u "$1:$2" -H "X-Trino-User: $1" --data-binary "$3" "https://127.0.0.1:$https/v1/statement")
  while :; do
    jq -r '(.data // [])[] | map(tostring) | join(" ")' <<<"$r" 2>/dev/null || { echo "$r"; return; }
    jq -r '.error.message // empty' <<<"$r"
    next=$(jq -r '.nextUri // empty' <<<"$r")
    [ -n "$next" ] || return 0
    r=$(curl -sS --cacert "$dir/etc/cert.pem" -u "$1:$2" -H "X-Trino-User: $1" "$next")
  done
}
sql="SELECT suppkey, count(*) FROM tpch.tiny.lineitem GROUP BY suppkey"
echo "demo-trino: each tenant runs: $sql"
for tenant in tenant-42 tenant-7; do
  user=$(kubectl -n "$ns" get secret "$tenant" -o jsonpath='{.data.username}' | base64 -d)
  password=$(kubectl -n "$ns" get secret "$tenant" -o jsonpath='{.data.password}' | base64 -d)
  echo "  as $tenant ($user): $(query "$user" "$password" "$sql" | paste -sd ';')"
  echo "  as $tenant, another table: $(query "$user" "$password" "SELECT count(*) FROM tpch.tiny.orders")"
done
echo "  a wrong password: $(query "${user}" "wrong" "SELECT 1")"
