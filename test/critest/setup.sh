#!/usr/bin/env bash
# setup.sh — start the private containerd critest runs against, and its loopback registry,
# both inside a network namespace of their own. Undo it all with cleanup.sh.
#
# Nothing of the machine's containerd is touched (/etc/containerd, /run/containerd) and the
# host's network namespace gets nothing: the namespace $CRITEST_NETNS (ip netns add, lo up)
# holds the registry (crane registry serve on 127.0.0.1:$CRITEST_REG_PORT), containerd's
# streaming server (127.0.0.1), the CNI bridge crit0 (10.99.0.0/16) and its iptables rules.
# Private paths:
#   config, certs.d mirrors, CNI conf, pid files   $CRITEST_WORK/run
#   containerd root                                /var/lib/$CRITEST_NAME
#   containerd state, sockets, pod netns mounts    /run/$CRITEST_NAME (containerd.sock)
#   logs                                           $CRITEST_LOGDIR (default $CRITEST_WORK/run):
#                                                  containerd.log (the shims log there too), registry.log
# Runtime handlers: runc (io.containerd.runc.v2 with $RUNC_BIN) and msb (io.containerd.msb.v2,
# privileged_without_host_devices = true, as install.sh writes it). Every registry is mirrored
# to the loopback one, which serves the substitute images of images.sh.
# Env: see common.sh; CRITEST_LOGDIR; CRITEST_EXTRA_CONFIG (TOML appended to containerd's config:
# tables of their own, such as another runtime handler).
set -euo pipefail
source "$(dirname "$0")/common.sh"
LOGDIR=${CRITEST_LOGDIR:-$RUN}
CONFIG=$RUN/config.toml
CERTS=$RUN/certs.d
NETD=$RUN/net.d

for b in crane crictl critest fakeweb; do
	[[ -x $BIN/$b ]] || die "missing $BIN/$b: run build-tools.sh"
done
CONTAINERD_BIN=${CONTAINERD_BIN:-$(command -v containerd || echo /var/cache/msb/bin/containerd)}
[[ -x $CONTAINERD_BIN ]] || die "no containerd (install.sh builds one into /var/cache/msb/bin)"
if [[ -z ${RUNC_BIN:-} ]]; then
	RUNC_BIN=/var/cache/msb/runc
	[[ -x $RUNC_BIN ]] || RUNC_BIN=/var/cache/msb/bin/runc
fi
[[ -x $RUNC_BIN ]] || die "no runc at $RUNC_BIN"
CNI_BIN=/opt/cni/bin
for p in bridge loopback host-local portmap; do
	[[ -x $CNI_BIN/$p ]] || die "missing CNI plugin $CNI_BIN/$p (install.sh installs it)"
done
ctd_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[[ -n ${MSB_BIN_DIR:-} ]] && ctd_path=$MSB_BIN_DIR:$ctd_path
PATH=$ctd_path command -v containerd-shim-msb-v2 >/dev/null || die "containerd-shim-msb-v2 is not on $ctd_path"

if [[ -e $NETNS_PATH ]] || alive "$RUN/containerd.pid" || alive "$RUN/registry.pid" || [[ -e $CTD_STATE ]]; then
	die "a previous run is still set up (netns $CRITEST_NETNS, $CTD_STATE or $RUN): run cleanup.sh first"
fi
mkdir -p "$RUN" "$LOGDIR" "$CERTS" "$NETD" "$CTD_ROOT" "$CTD_STATE"

log "network namespace $CRITEST_NETNS"
ip netns add "$CRITEST_NETNS"
ip -n "$CRITEST_NETNS" link set lo up

log "registry on $REG (in $CRITEST_NETNS)"
# nsenter and setsid exec: $! is the server itself
nsenter --net="$NETNS_PATH" -- setsid crane registry serve --address "$REG" >"$LOGDIR/registry.log" 2>&1 </dev/null &
echo $! >"$RUN/registry.pid"
for _ in $(seq 100); do
	innetns curl -sf "http://$REG/v2/" >/dev/null && break
	sleep 0.1
done
innetns curl -sf "http://$REG/v2/" >/dev/null || die "the registry did not come up: $LOGDIR/registry.log"
log "building and pushing the substitute images"
innetns "$CRITEST_DIR/images.sh" "$REG" >"$LOGDIR/images.txt" 2>&1 || die "images.sh failed: $LOGDIR/images.txt"

for h in _default registry.k8s.io k8s.gcr.io gcr.io docker.io quay.io; do
	mkdir -p "$CERTS/$h"
	cat >"$CERTS/$h/hosts.toml" <<H
# every pull is served by the loopback registry of the critest netns
server = "http://$REG"
[host."http://$REG"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
H
done

snap=overlayfs
t=$CTD_ROOT/.ovltest
mkdir -p "$t"/{l,u,w,m}
if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
	umount "$t/m"
else
	snap=native
	log "overlayfs unusable under $CTD_ROOT: snapshotter native"
fi
rm -rf "$t"
# A process without CAP_SYS_RESOURCE may not lower oom_score_adj: containerd then
# fails every sandbox unless it keeps scores at or above its own.
restrict_oom=false
capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if (((0x$capeff >> 24) & 1)); then :; else
	restrict_oom=true
	log "no CAP_SYS_RESOURCE here: restrict_oom_score_adj = true"
fi

cat >"$CONFIG" <<C
# containerd config written by test/critest/setup.sh
version = 3
root = '$CTD_ROOT'
state = '$CTD_STATE'

[grpc]
  address = '$SOCK'

[ttrpc]
  address = '$SOCK.ttrpc'

[debug]
  level = 'info'

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = '$CTD_ROOT/opt'

  [plugins.'io.containerd.nri.v1.nri']
    socket_path = '$CTD_STATE/nri/nri.sock'

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = '$snap'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$SANDBOX_IMAGE'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '$CERTS'

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    restrict_oom_score_adj = $restrict_oom
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        sandboxer = 'podsandbox'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$RUNC_BIN'
          Root = '$CTD_STATE/runc'
          SystemdCgroup = false
      # as install.sh writes it
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.msb]
        runtime_type = 'io.containerd.msb.v2'
        sandboxer = 'podsandbox'
        privileged_without_host_devices = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$CNI_BIN']
      conf_dir = '$NETD'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.transfer.v1.local']
    config_path = '$CERTS'
${CRITEST_EXTRA_CONFIG:-}
C
cat >"$NETD/10-critest.conflist" <<N
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge", "bridge": "crit0", "isGateway": true, "ipMasq": true, "promiscMode": true,
      "ipam": { "type": "host-local", "dataDir": "$RUN/cni-ipam", "ranges": [[{ "subnet": "10.99.0.0/16" }]], "routes": [{ "dst": "0.0.0.0/0" }] }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
N

cat >"$RUN/crictl.yaml" <<Y
runtime-endpoint: unix://$SOCK
image-endpoint: unix://$SOCK
timeout: 60
Y

log "containerd $("$CONTAINERD_BIN" --version | awk '{print $3}') (snapshotter $snap; log $LOGDIR/containerd.log)"
# the shim keeps its state under containerd's (removed by cleanup.sh); short:
# it holds unix sockets named by 64-hex sandbox ids (108-byte limit)
env_=(PATH="$ctd_path" MSB_SHIM_STATE_ROOT="$CTD_STATE/msb")
[[ -n ${MSB_CONFIG:-} ]] && env_+=(MSB_CONFIG="$MSB_CONFIG")
nsenter --net="$NETNS_PATH" -- setsid env -i "${env_[@]}" HOME="$HOME" "$CONTAINERD_BIN" --config "$CONFIG" >"$LOGDIR/containerd.log" 2>&1 </dev/null &
echo $! >"$RUN/containerd.pid"
for _ in $(seq 150); do
	crictl_ info >/dev/null 2>&1 && break
	alive "$RUN/containerd.pid" || break
	sleep 0.2
done
crictl_ info >/dev/null || die "containerd's CRI is not ready; see $LOGDIR/containerd.log"
crictl_ pull registry.k8s.io/e2e-test-images/busybox:1.29-2 >/dev/null || die "pulling through the mirror failed; see $LOGDIR/containerd.log"
crictl_ rmi registry.k8s.io/e2e-test-images/busybox:1.29-2 >/dev/null
log "ready: $SOCK (containerd pid $(cat "$RUN/containerd.pid"))"
