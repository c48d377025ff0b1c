#!/usr/bin/env bash
# cleanup.sh — undo setup.sh and whatever the critest run left: remove the CRI pods, stop
# containerd, the shims and VMs it started (processes whose command line names its socket
# $CTD_STATE/containerd.sock, and their children), the registry, unmount what is mounted under
# /var/lib/$CRITEST_NAME and /run/$CRITEST_NAME (snapshots, pod netns), delete the network
# namespace $CRITEST_NETNS (with the CNI bridge, veths and iptables rules in it) and the
# scratch files. Logs in $CRITEST_WORK/out stay. Safe to run any time, also with nothing set up.
# Exits 1 when something could not be removed (it says what).
# Env: see common.sh.
set -uo pipefail
source "$(dirname "$0")/common.sh"
problems=0

# descendants PID: the pids of PID's children, recursively.
descendants() {
	local c
	for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
		echo "$c"
		descendants "$c"
	done
}
# stop PID...: TERM, wait up to 10 s, then KILL.
stop() {
	local p i
	(($#)) || return 0
	kill -TERM "$@" 2>/dev/null
	for i in $(seq 50); do
		for p in "$@"; do kill -0 "$p" 2>/dev/null && break; done
		kill -0 "$p" 2>/dev/null || return 0
		sleep 0.2
	done
	kill -KILL "$@" 2>/dev/null
	sleep 0.5
}
# ours: pids of processes whose command line names our containerd socket
# (the shims containerd started for us) — nothing else matches that path.
ours() {
	local d
	for d in /proc/[0-9]*; do
		[[ $d == /proc/$$ ]] && continue
		tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -qF -- "-address $SOCK" && echo "${d#/proc/}"
	done
}

if alive "$RUN/containerd.pid"; then
	if [[ -e $NETNS_PATH ]]; then
		pods=$(crictl_ pods -q 2>/dev/null || true)
		if [[ -n $pods ]]; then
			log "removing $(wc -w <<<"$pods") pods"
			timeout 300 "$BIN/crictl" --config "$RUN/crictl.yaml" rmp -f $pods >/dev/null 2>&1 ||
				log "crictl rmp failed: the shims are stopped below"
		fi
	fi
	log "stopping containerd (pid $(cat "$RUN/containerd.pid"))"
	stop "$(cat "$RUN/containerd.pid")"
fi
shims=$(ours)
if [[ -n $shims ]]; then
	all=$(for s in $shims; do echo "$s"; descendants "$s"; done)
	log "stopping $(wc -w <<<"$shims") leftover shims and their children: $(echo $all)"
	# shellcheck disable=SC2086
	stop $all
fi
# Parked pool VMs (pool_size in MSB_CONFIG) outlive their shims; the
# lock in the pool waits for a refill still booting.
if [[ -d $CTD_STATE/msb/pool ]]; then
	rt=msb-runtime
	[[ -x ${MSB_BIN_DIR:-}/msb-runtime ]] && rt=$MSB_BIN_DIR/msb-runtime
	"$rt" pool drain --pool-root "$CTD_STATE/msb/pool" >/dev/null 2>&1 || { log "pool drain failed"; problems=1; }
fi
if alive "$RUN/registry.pid"; then
	log "stopping the registry (pid $(cat "$RUN/registry.pid"))"
	stop "$(cat "$RUN/registry.pid")"
fi
rm -f "$RUN/containerd.pid" "$RUN/registry.pid"

for prefix in "$CTD_ROOT" "$CTD_STATE"; do
	for m in $(findmnt -rn -o TARGET | grep -E "^$prefix(/|$)" | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || { log "cannot unmount $m"; problems=1; }
	done
done
if [[ -e $NETNS_PATH ]]; then
	log "deleting network namespace $CRITEST_NETNS"
	ip netns del "$CRITEST_NETNS" || problems=1
fi
# libcni's result cache of our network (the IPAM state is under $RUN)
rm -f /var/lib/cni/results/"$CNI_NET"-*
rm -rf "$CTD_ROOT" "$CTD_STATE" "$RUN" 2>/dev/null || { log "cannot remove $CTD_ROOT, $CTD_STATE or $RUN"; problems=1; }

left=$(ours)
[[ -z $left ]] || { log "still running: $left"; problems=1; }
exit $problems
