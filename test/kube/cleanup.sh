#!/usr/bin/env bash
# cleanup.sh — undo cluster.sh and test/critest/setup.sh: stop kubelet (first, so that it starts
# nothing more), kube-apiserver and etcd; then critest's cleanup.sh removes the CRI pods, stops
# containerd, its shims and VMs, unmounts what is under containerd's root and state and deletes
# the netns; then kubelet's mounts under its root dir (volumes: tmpfs, binds) are unmounted and
# its root dir, its device plugin socket, the pod logs, the /var/log/containers links to them and the cgroups below
# /$CG_ROOT are removed. Safe to run any time, also with nothing set up. Exits 1 when something
# could not be removed (it says what).
set -uo pipefail
source "$(dirname "$0")/common.sh"
problems=0

# stop PIDFILE: TERM, wait up to 10 s, then KILL.
stop() {
	local p i
	alive "$1" || { rm -f "$1"; return 0; }
	p=$(cat "$1")
	kill -TERM "$p" 2>/dev/null
	for ((i = 0; i < 50; i++)); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.2
	done
	kill -KILL "$p" 2>/dev/null && sleep 0.5
	rm -f "$1"
}
for p in kubelet apiserver etcd; do
	[[ -e $KRUN/$p.pid ]] && log "stopping $p" && stop "$KRUN/$p.pid"
done

"$CRITEST_DIR/cleanup.sh" || problems=1

for m in $(findmnt -rn -o TARGET | grep -E "^$KUBELET_ROOT(/|$)" | sort -r); do
	umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || { log "cannot unmount $m"; problems=1; }
done
rm -rf "$KUBELET_ROOT" "$POD_LOGS" || problems=1
# kubelet's device plugin socket has a fixed path: remove it, and the directories if empty
rm -f /var/lib/kubelet/device-plugins/kubelet.sock
rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null
for l in /var/log/containers/*; do
	[[ -L $l && $(readlink "$l") == "$POD_LOGS"/* ]] && rm -f "$l"
done
rmdir /var/log/containers 2>/dev/null
for h in /sys/fs/cgroup/*/"$CG_ROOT"; do
	[[ -d $h ]] || continue
	find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
	[[ -d $h ]] && { log "cannot remove cgroup $h (processes left in it?)"; problems=1; }
done
exit $problems
