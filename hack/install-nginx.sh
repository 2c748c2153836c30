#!/usr/bin/env bash
# Installs nginx from Debian's packages when it is missing and prints the binary's path. The
# htpasswd tests (tests/htpasswd_nginx.rs) start it as a child process with their own prefix and
# config, so nothing of the package's own configuration or service is used:
#   export TOKENMINT_NGINX=$(hack/install-nginx.sh)
# Debian 12's `nginx` package carries the binary with auth_basic built in; `nginx-light` is only a
# transitional package that pulls `nginx` plus the echo module.
set -euo pipefail

find_nginx() {
  local bin
  for bin in "${TOKENMINT_NGINX:-}" "$(command -v nginx 2>/dev/null || true)" /usr/sbin/nginx; do
    if [ -n "$bin" ] && [ -x "$bin" ]; then
      echo "$bin"
      return 0
    fi
  done
  return 1
}

if ! bin=$(find_nginx); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "install-nginx: installing Debian's nginx package" >&2
  start=$(date +%s)
  # Quiet on success; on failure the output is all there is to go by.
  log=$(mktemp)
  # The package's postinst would start the nginx service on port 80; the tests run their own
  # nginx, so forbid service starts for the length of the install (Debian's policy-rc.d: 101).
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
  fi
  trap 'rm -f "$log"; [ -z "$policy" ] || $sudo rm -f "$policy"' EXIT
  if ! { $sudo apt-get update -qq &&
         $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-nginx: apt-get install nginx failed" >&2
    exit 1
  fi
  echo "install-nginx: installed in $(( $(date +%s) - start ))s" >&2
  bin=$(find_nginx) || { echo "install-nginx: nginx still not found after installing" >&2; exit 1; }
fi

# Without the module the tests' config would not even load; say so here rather than there.
if "$bin" -V 2>&1 | grep -q -- '--without-http_auth_basic_module'; then
  echo "install-nginx: $bin is built without auth_basic" >&2
  exit 1
fi
echo "$bin"
