# Sourced by hack/install-*.sh: `apt_install TOOL PACKAGE...` installs Debian packages quietly, with
# every service start forbidden for the length of the install (the tests run the tools as child
# processes with their own config, never the package's service). Prints the apt output only on
# failure, then exits.
apt_install() {
  local tool=$1 sudo="" log policy="" start
  shift
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "install-$tool: installing Debian's $* package" >&2
  start=$(date +%s)
  log=$(mktemp)
  # A postinst would start the service (nginx on port 80, caddy's admin API on 2019); Debian's
  # policy-rc.d answering 101 forbids it. systemd is usually absent in containers anyway.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
  fi
  if ! { $sudo apt-get update -qq &&
         $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"; [ -z "$policy" ] || $sudo rm -f "$policy"
    echo "install-$tool: apt-get install $* failed" >&2
    exit 1
  fi
  rm -f "$log"; [ -z "$policy" ] || $sudo rm -f "$policy"
  echo "install-$tool: installed in $(( $(date +%s) - start ))s" >&2
}

# `find_bin CANDIDATE...`: the first candidate that is an executable file (empty ones are skipped).
find_bin() {
  local bin
  for bin in "$@"; do
    if [ -n "$bin" ] && [ -x "$bin" ]; then
      echo "$bin"
      return 0
    fi
  done
  return 1
}

# `ensure_installed TOOL PACKAGE CANDIDATE...`: prints the first candidate that is an executable,
# installing PACKAGE first when none is. The package's own path must be among the candidates.
ensure_installed() {
  local tool=$1 package=$2 bin
  shift 2
  if ! bin=$(find_bin "$@"); then
    apt_install "$tool" "$package"
    bin=$(find_bin "$@") || { echo "install-$tool: $tool still not found after installing" >&2; exit 1; }
  fi
  echo "$bin"
}
