#!/usr/bin/env bash
# Installs a pinned tool from the Go module proxy into a cache outside git, keyed by
# version, and prints the path of the binary. A second call with the cache warm is
# instant. Used by the chart tests (tests/install.rs) and CI:
#   export TOKENMINT_HELM=$(hack/install-tools.sh)              # helm (the default)
#   export TOKENMINT_PROMTOOL=$(hack/install-tools.sh promtool) # promtool, for the alert rules
set -euo pipefail

HELM_VERSION=v3.21.4
# A Prometheus v3 release; its Go module is versioned v0.<3 * 100 + minor>.<patch> (v3.16.0 is
# v0.316.0), since the module never adopted the /v3 import path.
PROMETHEUS_VERSION=v3.16.0

cache_root="${TOKENMINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmint}"

# Stamp what helm's own release build (its Makefile) stamps: its version, and the Kubernetes
# version `helm template` and `helm lint` assume, derived from the client-go it is built with
# (v0.N -> 1.N). Unstamped, helm assumes Kubernetes 1.20 and rejects the chart's kubeVersion.
build_helm() { # gobin
  local go_mod client_go k8s_minor ldflags pkg
  go_mod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$go_mod")
  k8s_minor=$(echo "$client_go" | cut -d. -f2)
  [ -n "$k8s_minor" ] || { echo "install-tools: cannot find helm's client-go version in $go_mod" >&2; exit 1; }
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  CGO_ENABLED=0 GOBIN="$1" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# promtool checks and unit-tests rules; it needs none of Prometheus' service discoveries, which
# the remove_all_sd tag leaves out (promtool imports the Kubernetes one itself, so that stays).
build_promtool() { # gobin
  local major minor patch module ldflags
  IFS=. read -r major minor patch <<<"${PROMETHEUS_VERSION#v}"
  module="v0.$((major * 100 + minor)).$patch"
  ldflags="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}"
  ldflags+=" -X github.com/prometheus/common/version.Branch=release-$major.$minor"
  CGO_ENABLED=0 GOBIN="$1" go install -trimpath -tags remove_all_sd -ldflags "$ldflags" \
    "github.com/prometheus/prometheus/cmd/promtool@$module"
}

tool=${1:-helm}
case "$tool" in
  helm) version=$HELM_VERSION ;;
  promtool) version=$PROMETHEUS_VERSION ;;
  *) echo "usage: hack/install-tools.sh [helm|promtool]" >&2; exit 2 ;;
esac
dir="$cache_root/$tool-$version"
bin="$dir/$tool"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "install-tools: go is not installed" >&2; exit 1; }
start=$(date +%s)
echo "install-tools: building $tool $version" >&2
# Build into a temporary directory and rename, so an interrupted build never leaves a
# half-written binary that a later call would trust.
mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.$tool-$version-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"build_$tool" "$tmp"
mkdir -p "$dir"
mv "$tmp/$tool" "$bin"
echo "install-tools: built $tool $version in $(( $(date +%s) - start ))s" >&2
echo "$bin"
