#!/usr/bin/env bash
# Build the CNI plugins msb's network tests and a Kubernetes/nerdctl setup
# use (bridge, host-local, portmap, loopback) from the Go module proxy.
#
#   hack/build-cni.sh OUTDIR        -> OUTDIR/{bridge,host-local,portmap,loopback}
#
# Env: CNI_VERSION (default v1.10.0), GO. Cached: a rerun with all four
# present does nothing.
set -euo pipefail

OUTDIR=${1:?usage: $0 OUTDIR}
CNI_VERSION=${CNI_VERSION:-v1.10.0}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
plugins=(main/bridge ipam/host-local meta/portmap main/loopback)

have=1
for p in "${plugins[@]}"; do [[ -x $OUTDIR/${p#*/} ]] || have=0; done
if ((have)); then
	echo "CNI plugins $CNI_VERSION (cached) in $OUTDIR"
	exit 0
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
pkgs=()
for p in "${plugins[@]}"; do pkgs+=("github.com/containernetworking/plugins/plugins/$p@$CNI_VERSION"); done
# Outside the module, so go install resolves the plugins' own go.mod.
(cd / && CGO_ENABLED=0 GOBIN=$OUTDIR "$GO" install -trimpath "${pkgs[@]}")
echo "CNI plugins $CNI_VERSION -> $OUTDIR"
