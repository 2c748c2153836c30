#!/usr/bin/env bash
# Builds the images the local node runs, without a Docker engine (umoci writes an OCI layout,
# skopeo turns it into a docker-archive that `ctr images import` takes), and caches them outside
# git, keyed by what goes into them. Prints the directory holding the archives:
#   pause.tar    tokenmint.local/pause:1    the pod sandbox (hack/node/pause.c, static)
#   toolbox.tar  tokenmint.local/toolbox:1  Debian's static busybox: sh, cat, nc, ... for test pods
#   nginx.tar    tokenmint.local/nginx:1    Debian's nginx with exactly the libraries it links: the
#                                           gateway in front of a tokenmint authz sidecar
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
"$here/install-node.sh"
nginx=$("$here/install-nginx.sh")
cache_root="${TOKENMINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmint}"
key=$( { cat "$here/node/pause.c" "$0"; sha256sum /bin/busybox "$nginx"; } | sha256sum | cut -c1-12)
out="$cache_root/images-$key"
if [ -f "$out/pause.tar" ] && [ -f "$out/toolbox.tar" ] && [ -f "$out/nginx.tar" ]; then
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

# No shell, no package: the binary, the libraries ldd names (the loader among them) and a /tmp.
# Its config comes from a ConfigMap; nothing under /etc/nginx is used.
mkdir -p "$work/nginx-root/usr/sbin" "$work/nginx-root/tmp"
chmod 1777 "$work/nginx-root/tmp"
cp "$nginx" "$work/nginx-root/usr/sbin/nginx"
for lib in $(ldd "$nginx" | grep -o '/[^ ]*'); do
  mkdir -p "$work/nginx-root$(dirname "$lib")"
  cp -L "$lib" "$work/nginx-root$lib"
done
image nginx tokenmint.local/nginx:1 /usr/sbin/nginx

rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-images: built pause, toolbox and nginx in $(( $(date +%s) - start ))s" >&2
echo "$out"
