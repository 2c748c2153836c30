#!/usr/bin/env bash
# Builds the images the local node runs, without a Docker engine (umoci writes an OCI layout,
# skopeo turns it into a docker-archive that `ctr images import` takes), and caches them outside
# git, keyed by what goes into them. Prints the directory holding the archives:
#   pause.tar    tokenmint.local/pause:1    the pod sandbox (hack/node/pause.c, static)
#   toolbox.tar  tokenmint.local/toolbox:1  Debian's static busybox: sh, cat, nc, ... for test pods
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
"$here/install-node.sh"
cache_root="${TOKENMINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmint}"
key=$( { cat "$here/node/pause.c" "$0"; sha256sum /bin/busybox; } | sha256sum | cut -c1-12)
out="$cache_root/images-$key"
if [ -f "$out/pause.tar" ] && [ -f "$out/toolbox.tar" ]; then
  echo "$out"
  exit 0
fi

start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out.tmp"

# image NAME REF ENTRYPOINT: an image of the files in $work/NAME-root, run as ENTRYPOINT.
image() {
  local name=$1 ref=$2 entrypoint=$3 layout
  layout="$work/$name-oci"
  umoci init --layout "$layout"
  umoci new --image "$layout:$name"
  umoci unpack --image "$layout:$name" "$work/$name-bundle" >/dev/null
  cp -a "$work/$name-root/." "$work/$name-bundle/rootfs/"
  umoci repack --image "$layout:$name" "$work/$name-bundle"
  umoci config --image "$layout:$name" --config.entrypoint "$entrypoint" --config.user 65534
  skopeo copy --quiet "oci:$layout:$name" "docker-archive:$out.tmp/$name.tar:$ref"
}

mkdir -p "$work/pause-root"
gcc -static -O2 -s -o "$work/pause-root/pause" "$here/node/pause.c"
image pause tokenmint.local/pause:1 /pause

mkdir -p "$work/toolbox-root/bin" "$work/toolbox-root/tmp"
chmod 1777 "$work/toolbox-root/tmp"
cp /bin/busybox "$work/toolbox-root/bin/busybox"
# No wget: Debian's static busybox crashes in it (a static glibc's name lookup); nc speaks HTTP.
for applet in sh cat cp cut date echo env grep head ls nc printf sleep sha256sum tail test; do
  ln -s busybox "$work/toolbox-root/bin/$applet"
done
image toolbox tokenmint.local/toolbox:1 /bin/sh

rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-images: built pause and toolbox in $(( $(date +%s) - start ))s" >&2
echo "$out"
