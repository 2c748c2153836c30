# Sourced by hack/demo.sh and hack/demo-trino.sh: `free_port N` prints the first loopback port from N on
# that nothing listens on.
free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}
