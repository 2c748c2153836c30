#!/usr/bin/env bash
# `make image`: the operator image, built without a Docker engine and reproducibly (the same commit
# gives the same digest). The same layout as the Dockerfile's: a static (musl) release binary at
# /tokenmint on an otherwise empty image but for /etc/passwd and /etc/group naming nonroot (65532)
# and CA certificates; user 65532:65532, entrypoint `/tokenmint run`, port 8080. Written to
#   target/image/oci/           an OCI image layout (tag: the chart's appVersion)
#   target/image/tokenmint.tar  a docker-archive of it, named ghcr.io/tokenmint/tokenmint:<appVersion>,
#                               which `ctr images import` (the local node) and `skopeo copy` (a registry) take
# (TOKENMINT_IMAGE_OUT: elsewhere) and prints the image's digest (its manifest's). Every file's time and the image's creation time
# are the commit's time; the layer tar is sorted and owned by root; gzip stores no name or time.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. hack/lib/apt-install.sh
command -v skopeo >/dev/null || apt_install image skopeo
command -v musl-gcc >/dev/null || apt_install image musl-tools   # ring's C code, for the musl target
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2

version=$(awk '$1 == "appVersion:" { gsub(/"/, "", $2); print $2 }' charts/tokenmint/Chart.yaml)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

# Paths in the binary (panic locations) name /src and /cargo, not this machine's directories.
# TOKENMINT_IMAGE_BIN: assemble around that binary instead (tests/node.rs checks the assembly).
binary=${TOKENMINT_IMAGE_BIN:-${CARGO_TARGET_DIR:-$root/target}/$target/release/tokenmint}
if [ -z "${TOKENMINT_IMAGE_BIN:-}" ]; then
  RUSTFLAGS="--remap-path-prefix=$root=/src --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
    cargo build --release --locked --target "$target" --bin tokenmint >&2
fi

out=${TOKENMINT_IMAGE_OUT:-$root/target/image}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fs="$work/rootfs"
mkdir -p "$fs/etc/ssl/certs"
install -m 0755 "$binary" "$fs/tokenmint"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$fs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$fs/etc/group"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/ca-certificates.crt"
chmod 0755 "$fs" "$fs/etc" "$fs/etc/ssl" "$fs/etc/ssl/certs"
chmod 0644 "$fs/etc/passwd" "$fs/etc/group"

blobs="$work/oci/blobs/sha256"
mkdir -p "$blobs"
blob() { # file: moves it into the layout under its digest, prints "digest size"
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$blobs/$digest"
  echo "$digest $size"
}

tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$fs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 "$work/layer.tar"
read -r layer layer_size < <(blob "$work/layer.tar.gz")

printf '{"architecture":"amd64","config":{"Entrypoint":["/tokenmint","run"],"ExposedPorts":{"8080/tcp":{}},"User":"65532:65532"},"created":"%s","history":[{"created":"%s","created_by":"hack/build-image.sh"}],"os":"linux","rootfs":{"diff_ids":["sha256:%s"],"type":"layers"}}' \
  "$created" "$created" "$diff_id" >"$work/config.json"
read -r config config_size < <(blob "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
read -r manifest manifest_size < <(blob "$work/manifest.json")

printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest" "$manifest_size" "$version" >"$work/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"

rm -rf "$out"
mkdir -p "$out"
mv "$work/oci" "$out/oci"
skopeo copy --quiet "oci:$out/oci:$version" "docker-archive:$out/tokenmint.tar:ghcr.io/tokenmint/tokenmint:$version" >&2
echo "image: ghcr.io/tokenmint/tokenmint:$version sha256:$manifest ($(du -h "$out/tokenmint.tar" | cut -f1) archive) in $out" >&2
echo "sha256:$manifest"
