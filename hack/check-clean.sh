#!/usr/bin/env bash
# After `make test`: every test namespace is gone, and nothing of tokenmint's (ApiTokens,
# ApiTokenVerifiers, Secrets labelled managed-by tokenmint) is left in a namespace that no longer
# exists: such orphans stay in etcd, and a cluster-wide operator would keep trying to serve them.
# Exits non-zero naming what is left. TOKENMINT_KEEP_NS=1 (kept namespaces) skips the check.
set -euo pipefail

[ "${TOKENMINT_KEEP_NS:-}" = 1 ] && { echo "check-clean: TOKENMINT_KEEP_NS=1, not checked"; exit 0; }
kubectl=${TOKENMINT_KUBECTL:-kubectl}
wait_for=${TOKENMINT_CLEAN_WITHIN:-240}

# Tests delete their namespaces as they finish; the namespace controller empties each first.
deadline=$(( $(date +%s) + wait_for ))
while left=$("$kubectl" get namespaces -l tokenmint.dev/test=true -o name) && [ -n "$left" ]; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "check-clean: test namespaces still there after ${wait_for}s:" >&2
    echo "$left" >&2
    exit 1
  fi
  sleep 2
done

existing=$("$kubectl" get namespaces -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
objects=$(
  "$kubectl" get apitokens,apitokenverifiers -A \
    -o jsonpath='{range .items[*]}{.metadata.namespace} {.kind}/{.metadata.name}{"\n"}{end}'
  "$kubectl" get secrets -A -l app.kubernetes.io/managed-by=tokenmint \
    -o jsonpath='{range .items[*]}{.metadata.namespace} Secret/{.metadata.name}{"\n"}{end}'
)
orphans=$(while read -r ns what; do
  [ -n "$ns" ] || continue
  grep -qxF "$ns" <<<"$existing" || echo "$ns $what"
done <<<"$objects")
if [ -n "$orphans" ]; then
  echo "check-clean: $(wc -l <<<"$orphans") objects left in namespaces that no longer exist, e.g.:" >&2
  head -5 <<<"$orphans" >&2
  exit 1
fi
echo "check-clean: no test namespace and no orphaned tokenmint object left"
