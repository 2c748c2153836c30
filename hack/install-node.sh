#!/usr/bin/env bash
# Installs what the local node needs from Debian's packages, each only when missing: containerd
# and runc (the container runtime), the CNI plugins (bridge, host-local, portmap, loopback),
# iptables and conntrack (kube-proxy), umoci and skopeo (images built without a Docker engine),
# busybox-static (the test pods' toolbox) and gcc (the pause program). No service is started:
# hack/node.sh runs containerd as a child of the cluster with its own config.
set -euo pipefail
. "$(dirname "$0")/lib/apt-install.sh"

need=()
have() { [ -x "$1" ] || command -v "$1" >/dev/null 2>&1; }
have /usr/bin/containerd || need+=(containerd)
have /usr/sbin/runc || need+=(runc)
have /usr/lib/cni/bridge || need+=(containernetworking-plugins)
have iptables || need+=(iptables)
have conntrack || need+=(conntrack)
have umoci || need+=(umoci)
have skopeo || need+=(skopeo)
have /bin/busybox || need+=(busybox-static)
have gcc || need+=(gcc libc6-dev)
[ ${#need[@]} -eq 0 ] || apt_install node "${need[@]}"
