#!/usr/bin/env bash
# A `make demo` operator watches every namespace and would race the operators that the tests and
# the benches start (two operators on one token: conflicts, retries, numbers that mean nothing).
# Stops it if it runs; `make demo` starts it again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pidfile="$root/.cluster/operator.pid"
if pid=$(cat "$pidfile" 2>/dev/null) && grep -q tokenmint "/proc/$pid/cmdline" 2>/dev/null; then
  echo "${1:-tokenmint}: stopping the demo operator (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  rm -f "$pidfile"
fi
