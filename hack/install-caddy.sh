#!/usr/bin/env bash
# Installs Caddy from Debian's packages when it is missing and prints the binary's path. The
# gateway-snippet test (tests/gateway_snippets.rs) runs README's Caddyfile as a child process with
# its own config, HOME and data dirs, admin API off, so the package's service and config are unused:
#   export TOKENMINT_CADDY=$(hack/install-caddy.sh)
# Debian 12 ships Caddy 2.6.2, which has `forward_auth`.
set -euo pipefail
. "$(dirname "$0")/lib/apt-install.sh"

bin=$(ensure_installed caddy caddy "${TOKENMINT_CADDY:-}" "$(command -v caddy 2>/dev/null || true)" /usr/bin/caddy)

# The README's snippet needs forward_auth; an older Caddy would fail the test with a config error.
# The list is read whole before it is searched: `caddy list-modules | grep -q` under pipefail fails
# whenever grep exits at the match while caddy is still writing (SIGPIPE), which CI hit once.
modules=$("$bin" list-modules 2>/dev/null || true)
if ! grep -qx 'http.handlers.reverse_proxy' <<<"$modules"; then
  echo "install-caddy: $bin lacks the reverse_proxy handler that forward_auth needs" >&2
  exit 1
fi
echo "$bin"
