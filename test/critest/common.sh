# common.sh — settings shared by the test/critest scripts; sourced, not run.
#
# Env knobs (all optional):
#   CRITEST_CACHE     built tools (crane, crictl, critest, fakeweb, busybox), kept between runs
#                     (default /var/cache/msb/critest)
#   CRITEST_NAME      this run's name (default msb-critest): the network namespace, containerd's
#                     root /var/lib/NAME and state /run/NAME, and the CNI network are named after it,
#                     so that runs with distinct names (and CRITEST_WORK) can go on side by side
#   CRITEST_WORK      this run's scratch files and the kept logs (default /tmp/msb-critest)
#   CRITEST_NETNS     name of the network namespace everything runs in (default CRITEST_NAME)
#   CRITEST_REG_PORT  the loopback registry's port inside that namespace (default 5000)
#   CONTAINERD_BIN    containerd to run (default: containerd on PATH, else /var/cache/msb/bin)
#   RUNC_BIN          runc for the runc handler (default /var/cache/msb/runc, else /var/cache/msb/bin/runc)
#   MSB_BIN_DIR       directory put first on containerd's PATH, e.g. one holding a freshly built
#                     containerd-shim-msb-v2 (default: none; the installed shim is used)
#   MSB_CONFIG        msb config file handed to the shim (default: msb's own, /etc/msb/config.toml)

CRITEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CRITEST_DIR/../.." && pwd)
CRITEST_CACHE=${CRITEST_CACHE:-/var/cache/msb/critest}
CRITEST_WORK=${CRITEST_WORK:-/tmp/msb-critest}
CRITEST_NAME=${CRITEST_NAME:-msb-critest}
[[ $CRITEST_NAME =~ ^[a-z0-9][a-z0-9-]{0,23}$ ]] || {
	echo "critest: CRITEST_NAME=$CRITEST_NAME: use 1-24 lowercase letters, digits and dashes" >&2
	exit 1
}
CRITEST_NETNS=${CRITEST_NETNS:-$CRITEST_NAME}
CRITEST_REG_PORT=${CRITEST_REG_PORT:-5000}

CRI_TOOLS_VERSION=v1.37.0
CRANE_VERSION=v0.22.1

BIN=$CRITEST_CACHE/bin
RUN=$CRITEST_WORK/run                  # removed by cleanup.sh
CTD_ROOT=/var/lib/$CRITEST_NAME         # containerd root (removed by cleanup.sh)
CTD_STATE=/run/$CRITEST_NAME            # containerd state and sockets (removed by cleanup.sh)
CNI_NET=$CRITEST_NAME                   # the CNI network's name (libcni caches results by it)
SOCK=$CTD_STATE/containerd.sock
NETNS_PATH=/run/netns/$CRITEST_NETNS
REG=127.0.0.1:$CRITEST_REG_PORT
SANDBOX_IMAGE=registry.k8s.io/pause:3.10.1

export PATH=$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin
export HOME=${HOME:-/root} # go needs a cache dir

# innetns CMD...: run CMD in the test network namespace (the network only:
# mounts stay the host's, so cleanup.sh sees and undoes them).
innetns() { nsenter --net="$NETNS_PATH" -- "$@"; }

# crictl against the private containerd, from inside the namespace (its
# streaming URLs are on the namespace's loopback).
# $RUN/crictl.yaml (written by setup.sh) names the socket.
crictl_() { innetns "$BIN/crictl" --config "$RUN/crictl.yaml" "$@"; }

log() { echo "[critest $(date +%T)] $*" >&2; }
die() { echo "critest: $*" >&2; exit 1; }

# alive PIDFILE: the process named there still runs.
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
