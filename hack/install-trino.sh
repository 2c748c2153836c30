#!/usr/bin/env bash
# Installs a pinned Trino server from Maven Central into a cache outside git and prints the path of
# its directory. Only what the Trino tests (tests/trino.rs) and `make demo-trino` start is unpacked:
# the server's libraries and the tpch, memory and password-authenticators plugins (file-based access
# control is built into the server). A second call with the cache warm is instant:
#   export TOKENMINT_TRINO=$(hack/install-trino.sh)
# Trino 476 needs Java 24 or newer; it runs on the Temurin 25 JDK in /usr/lib/jvm (TOKENMINT_JAVA).
set -euo pipefail

TRINO_VERSION=476
# Maven Central's published SHA-1 of trino-server-476.tar.gz, pinned here so a changed artifact fails.
TRINO_SHA1=c9b38be4017ebd2f7095455aaac772fb40247ebe
PLUGINS="tpch memory password-authenticators"

cache_root="${TOKENMINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmint}"
dir="$cache_root/trino-$TRINO_VERSION"

# The tests run Trino on this JDK (TOKENMINT_JAVA overrides it); say so now rather than at the first test.
java="${TOKENMINT_JAVA:-/usr/lib/jvm/temurin-25-jdk-amd64/bin/java}"
if ! "$java" -version 2>&1 | grep -Eq 'version "(2[4-9]|[3-9][0-9])'; then
  echo "install-trino: Trino $TRINO_VERSION needs Java 24 or newer at $java (set TOKENMINT_JAVA)" >&2
  exit 1
fi

if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi

start=$(date +%s)
echo "install-trino: downloading trino-server $TRINO_VERSION (about 820 MB, once)" >&2
mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.trino-$TRINO_VERSION-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
url="https://repo1.maven.org/maven2/io/trino/trino-server/$TRINO_VERSION/trino-server-$TRINO_VERSION.tar.gz"
curl -fsSL --retry 3 -o "$tmp/server.tar.gz" "$url"
echo "$TRINO_SHA1  $tmp/server.tar.gz" | sha1sum -c --quiet - >&2
members=("trino-server-$TRINO_VERSION/lib")
for p in $PLUGINS; do members+=("trino-server-$TRINO_VERSION/plugin/$p"); done
tar -xzf "$tmp/server.tar.gz" -C "$tmp" "${members[@]}"
rm "$tmp/server.tar.gz"
touch "$tmp/trino-server-$TRINO_VERSION/.complete"
rm -rf "$dir"
mv "$tmp/trino-server-$TRINO_VERSION" "$dir"
echo "install-trino: installed in $(( $(date +%s) - start ))s" >&2
echo "$dir"
