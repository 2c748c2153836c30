#!/usr/bin/env bash
# Installs nginx from Debian's packages when it is missing and prints the binary's path. The
# htpasswd, authz and gateway-snippet tests start it as a child process with their own prefix and
# config, so nothing of the package's own configuration or service is used:
#   export TOKENMINT_NGINX=$(hack/install-nginx.sh)
# Debian 12's `nginx` package carries the binary with auth_basic built in; `nginx-light` is only a
# transitional package that pulls `nginx` plus the echo module.
set -euo pipefail
. "$(dirname "$0")/lib/apt-install.sh"

bin=$(ensure_installed nginx nginx "${TOKENMINT_NGINX:-}" "$(command -v nginx 2>/dev/null || true)" /usr/sbin/nginx)

# Without the module the tests' config would not even load; say so here rather than there.
# Read whole before searching, so a SIGPIPE under pipefail cannot hide the answer.
build=$("$bin" -V 2>&1 || true)
if grep -q -- '--without-http_auth_basic_module' <<<"$build"; then
  echo "install-nginx: $bin is built without auth_basic" >&2
  exit 1
fi
echo "$bin"
