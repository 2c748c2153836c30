#!/usr/bin/env bash
# Installs the pinned helm from the Go module proxy into a cache outside git, keyed
# by version, and prints the path of the binary. A second call with the cache warm
# is instant. Used by the chart tests (tests/install.rs) and CI:
#   export TOKENMINT_HELM=$(hack/install-tools.sh)
set -euo pipefail

HELM_VERSION=v3.21.4

cache_root="${TOKENMINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmint}"
dir="$cache_root/helm-$HELM_VERSION"
helm="$dir/helm"

if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi

command -v go >/dev/null || { echo "install-tools: go is not installed" >&2; exit 1; }
start=$(date +%s)
echo "install-tools: building helm $HELM_VERSION" >&2
# Build into a temporary directory and rename, so an interrupted build never leaves a
# half-written binary that a later call would trust.
mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.helm-$HELM_VERSION-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Stamp what helm's own release build (its Makefile) stamps: its version, and the Kubernetes
# version `helm template` and `helm lint` assume, derived from the client-go it is built with
# (v0.N -> 1.N). Unstamped, helm assumes Kubernetes 1.20 and rejects the chart's kubeVersion.
go_mod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$go_mod")
k8s_minor=$(echo "$client_go" | cut -d. -f2)
[ -n "$k8s_minor" ] || { echo "install-tools: cannot find helm's client-go version in $go_mod" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mkdir -p "$dir"
mv "$tmp/helm" "$helm"
echo "install-tools: built helm $HELM_VERSION in $(( $(date +%s) - start ))s" >&2
echo "$helm"
