# common.sh — settings shared by the test/kube scripts; sourced, not run.
#
# The cluster reuses test/critest's containerd setup (setup.sh, cleanup.sh) under its own name,
# so its containerd, netns and CNI network are apart from a critest run's:
#   network namespace, containerd root/state   msb-kube (/var/lib/msb-kube, /run/msb-kube)
#   scratch (certs, configs, etcd data)         $KUBE_WORK/run (default /tmp/msb-kube/run)
#   logs                                        $KUBE_WORK/out/DATE (etcd, apiserver, kubelet,
#                                               containerd with the shims' lines)
#   kubelet root, pod logs                      /var/lib/msb-kube-kubelet, /var/log/msb-kube-pods
#   kubelet's cgroup root (cgroupfs)            /msb-kube in every cgroup v1 hierarchy
# Env: KUBE_WORK, KUBE_CACHE (build.sh), MSB_BIN_DIR and MSB_CONFIG (as for critest).

export CRITEST_NAME=msb-kube
export KUBE_WORK=${KUBE_WORK:-/tmp/msb-kube}
export CRITEST_WORK=$KUBE_WORK
KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../critest/common.sh
source "$KUBE_DIR/../critest/common.sh"

NODE=msb-node                       # the node's name
NODE_IP=10.98.0.1                   # on a dummy interface of the netns: kubelet refuses a loopback node IP
KRUN=$RUN/kube                      # certs, kubeconfig, configs, etcd data (removed by cleanup.sh)
KUBELET_ROOT=/var/lib/msb-kube-kubelet
POD_LOGS=/var/log/msb-kube-pods
CG_ROOT=msb-kube                    # kubelet's cgroupRoot, below each v1 hierarchy's root
KUBECONFIG_=$KRUN/admin.kubeconfig
IMAGE=msb.local/busybox:latest      # install.sh's busybox image, imported (imagePullPolicy: Never)

# kc ARGS...: kubectl as the cluster's admin, in the netns (the API server is on its loopback).
kc() { innetns "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_" "$@"; }

log() { echo "[kube $(date +%T)] $*" >&2; }
die() { echo "kube: $*" >&2; exit 1; }
