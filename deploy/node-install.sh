#!/bin/sh
# deploy/node-install.sh — install msb on the node whose root is mounted at
# $HOST_ROOT, from the installer image's payload (kata-deploy's pattern: the
# DaemonSet in deploy/msb-deploy.yaml runs it; docs/kubernetes.md).
#
#   node-install.sh install     copy the binaries and the guest image, write
#                               /etc/msb/config.toml if absent, add the msb
#                               runtime to containerd's config, restart it
#   node-install.sh uninstall   undo exactly that (what it replaced comes back)
#   node-install.sh run         install, then wait for SIGTERM (the DaemonSet's
#                               container; its preStop hook runs uninstall)
#   node-install.sh cleanup     uninstall, then wait (deploy/msb-cleanup.yaml,
#                               for nodes whose preStop uninstall did not run)
#
# POSIX sh: the image has only busybox. What it installs, as install.sh does:
# /usr/local/bin/{msb-runtime,containerd-shim-msb-v2} (containerd finds the
# shim on its PATH, the shim finds msb-runtime beside itself) and the guest
# image in /var/lib/msb (config/config.go's defaults). What it installed, and
# what it moved aside, is listed in $MSB_DEPLOY_STATE on the node.
#
# containerd: a config of version 2 or later read by containerd 2.x gets a
# drop-in ($CONTAINERD_DROPIN) named in its `imports` (nothing to edit where
# an imports glob already covers it); containerd 1.x, which replaces a whole
# plugin table from an import, and a version 1 config get the entry appended
# as install.sh does (hack/containerd-config.sh, shared with it). Either way
# containerd validates the result (`config dump`) before it is kept, and
# uninstall puts the original back byte for byte.
#
# Env (paths are the node's):
#   HOST_ROOT          where the node's root is mounted (/host; or the first argument after the command)
#   MSB_DEPLOY_SRC     the payload: bin/ and msb/ (default: this script's directory)
#   CONTAINERD         the node's containerd binary (containerd, looked up on PATH there)
#   CONTAINERD_CONFIG  its config (/etc/containerd/config.toml)
#   CONTAINERD_DROPIN  the drop-in (/etc/containerd/conf.d/msb.toml)
#   CONTAINERD_SERVICE the systemd unit restarted (containerd)
#   MSB_HOST_EXEC      how node commands run: nsenter (into PID 1's mount
#                      namespace: the DaemonSet's hostPID) or chroot (into HOST_ROOT)
#   MSB_RESTART_CMD    a shell command that restarts containerd on the node, instead of systemctl
#   MSB_SKIP_RESTART=1 do not restart containerd (tests; restart it yourself)
#   MSB_DEPLOY_STATE   the installer's record on the node (/var/lib/msb-deploy)
set -eu

cmd=${1:-}
[ $# -lt 2 ] || HOST_ROOT=$2
HOST_ROOT=${HOST_ROOT:-/host}
here=$(cd "$(dirname "$0")" && pwd)
MSB_DEPLOY_SRC=${MSB_DEPLOY_SRC:-$here}
CONTAINERD=${CONTAINERD:-containerd}
CONTAINERD_CONFIG=${CONTAINERD_CONFIG:-/etc/containerd/config.toml}
CONTAINERD_DROPIN=${CONTAINERD_DROPIN:-/etc/containerd/conf.d/msb.toml}
CONTAINERD_SERVICE=${CONTAINERD_SERVICE:-containerd}
MSB_HOST_EXEC=${MSB_HOST_EXEC:-nsenter}
MSB_DEPLOY_STATE=${MSB_DEPLOY_STATE:-/var/lib/msb-deploy}
BY="msb node-install.sh"

die() { echo "node-install.sh: $*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

if [ -r "$here/containerd-config.sh" ]; then
	. "$here/containerd-config.sh" # in the image
else
	. "$here/../hack/containerd-config.sh" # in the source tree
fi

# host_exec CMD ARG...: run CMD on the node, seeing the node's files, with
# the usual PATH (CMD looked up there).
host_exec() {
	local tool
	case $MSB_HOST_EXEC in
	nsenter) set -- nsenter -t 1 -m -- "$@" ;;
	chroot) set -- chroot "$HOST_ROOT" "$@" ;;
	*) die "MSB_HOST_EXEC=$MSB_HOST_EXEC: use nsenter or chroot" ;;
	esac
	tool=$(command -v "$1") || die "no $1 in the installer's PATH"
	shift
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$tool" "$@"
}
ctdcfg_containerd() { host_exec "$CONTAINERD" "$@"; }
ctdcfg_bin=$CONTAINERD

st=$HOST_ROOT$MSB_DEPLOY_STATE
ctd_changed=0

# owned PATH: whether the installer put PATH there.
owned() { [ -e "$st/files" ] && grep -qxF "$1" "$st/files"; }

# mkparents DIR: mkdir -p on the node, listing each directory it creates
# (uninstall removes them when empty).
mkparents() {
	local d=$1 missing=""
	while [ ! -d "$HOST_ROOT$d" ]; do
		missing="$d $missing"
		d=$(dirname "$d")
	done
	for d in $missing; do mkdir "$HOST_ROOT$d"; done
	for d in $missing; do
		[ "$d" = "$MSB_DEPLOY_STATE" ] || echo "$d" >>"$st/dirs"
	done
}

# place SRC DEST: install the file or directory SRC as the node's DEST: a
# replacement is renamed into place (a running shim keeps its binary); what
# the node had there, not installed by us, is kept in $st/backup.
place() {
	local src=$1 dest=$2 h=$HOST_ROOT$2
	mkparents "$(dirname "$dest")"
	rm -rf "$h.msb-new"
	cp -a "$src" "$h.msb-new"
	if ! owned "$dest"; then
		if [ -e "$h" ] || [ -L "$h" ]; then
			mkdir -p "$(dirname "$st/backup$dest")"
			mv "$h" "$st/backup$dest"
			echo "moved the node's $dest aside to $MSB_DEPLOY_STATE/backup$dest"
		fi
		echo "$dest" >>"$st/files"
	elif { [ -f "$h" ] && cmp -s "$h.msb-new" "$h"; } || { [ -d "$h" ] && diff -r "$h.msb-new" "$h" >/dev/null 2>&1; }; then
		rm -rf "$h.msb-new"
		placed=0
		return 0
	fi
	if [ -d "$h" ] && [ ! -L "$h" ]; then rm -rf "$h"; fi
	mv -f "$h.msb-new" "$h"
	echo "installed $dest"
	placed=1
}

# unplace DEST: undo place DEST (a failed install's rollback).
unplace() {
	rm -rf "$HOST_ROOT$1"
	if [ -e "$st/backup$1" ] || [ -L "$st/backup$1" ]; then mv "$st/backup$1" "$HOST_ROOT$1"; fi
	grep -vxF "$1" "$st/files" >"$st/files.new" || true
	mv "$st/files.new" "$st/files"
}

sha() { sha256sum "$1" | awk '{print $1}'; }

# top_imports FILE: the top-level imports line (before the first table).
top_imports() {
	awk '/^[[:space:]]*\[/ {exit} /^[[:space:]]*imports[[:space:]]*=/ {print NR ":" $0; exit}' "$1"
}

# ctd_sees_msb: whether the node's containerd reads the msb runtime from its config.
ctd_sees_msb() {
	host_exec "$CONTAINERD" --config "$CONTAINERD_CONFIG" config dump 2>/dev/null | grep -q 'io\.containerd\.msb\.v2'
}

# ctd_configure: add the msb runtime to the node's containerd config.
ctd_configure() {
	local cfg=$HOST_ROOT$CONTAINERD_CONFIG major ver tmp imp n
	step "containerd config: runtime msb for $CONTAINERD_CONFIG"
	major=$(host_exec "$CONTAINERD" --version 2>/dev/null | awk '{v = $3; sub(/^v/, "", v); split(v, a, "."); print a[1]; exit}')
	case $major in '' | *[!0-9]*) die "cannot run the node's containerd ($CONTAINERD --version through $MSB_HOST_EXEC): set CONTAINERD to its path on the node" ;; esac
	if [ ! -e "$cfg" ]; then
		mkparents "$(dirname "$CONTAINERD_CONFIG")"
		ctdcfg_add "$cfg" "$CONTAINERD_CONFIG" "" "$BY"
		echo created >"$st/ctd.mode"
		sha "$cfg" >"$st/ctd.sum"
		ctd_changed=1
		return 0
	fi
	if grep -q 'io\.containerd\.msb\.v2' "$cfg"; then
		echo "$CONTAINERD_CONFIG already has the msb runtime: left as it is"
		return 0
	fi
	ver=$(ctdcfg_version "$cfg")
	if [ "$ver" -lt 2 ] || [ "$major" -lt 2 ]; then
		# containerd 1.x replaces a whole plugin table from an import
		ctdcfg_add "$cfg" "$CONTAINERD_CONFIG" "$st/ctd.orig" "$BY"
		if ! ctd_sees_msb; then
			# e.g. containerd 2.2 drops a version 1 config's plugins.cri
			mv "$st/ctd.orig" "$cfg"
			die "the node's containerd does not see the msb runtime appended to $CONTAINERD_CONFIG (config version $ver; $CONTAINERD config dump): left the file as it was; migrate it (containerd config migrate) and retry"
		fi
		echo append >"$st/ctd.mode"
		sha "$cfg" >"$st/ctd.sum"
		ctd_changed=1
		return 0
	fi
	tmp=$(mktemp)
	{
		printf '# written by %s (deploy/): its uninstall removes it\nversion = %s\n\n' "$BY" "$ver"
		ctdcfg_entry "$ver" "$BY"
	} >"$tmp"
	chmod 0644 "$tmp"
	place "$tmp" "$CONTAINERD_DROPIN"
	rm -f "$tmp"
	[ "$placed" = 0 ] || ctd_changed=1
	[ -e "$st/ctd.mode" ] || echo dropin >"$st/ctd.mode"
	imp=$(top_imports "$cfg")
	if printf '%s' "$imp" | grep -qF -e "$(dirname "$CONTAINERD_DROPIN")/*.toml" -e "$CONTAINERD_DROPIN"; then
		echo "$CONTAINERD_CONFIG (config version $ver) imports $CONTAINERD_DROPIN already: not edited"
		return 0
	fi
	cp -p "$cfg" "$st/ctd.orig"
	if [ -z "$imp" ]; then
		# top-level keys precede the first table: after the version line
		awk -v add="imports = ['$CONTAINERD_DROPIN']" '{print} !done && /^[[:space:]]*version[[:space:]]*=/ {print add; done = 1}' "$st/ctd.orig" >"$cfg"
	else
		n=${imp%%:*}
		imp=${imp#*:}
		case $imp in
		*\]*) ;;
		*) mv "$st/ctd.orig" "$cfg" && die "$CONTAINERD_CONFIG: its imports span lines: add '$CONTAINERD_DROPIN' to them by hand" ;;
		esac
		awk -v n="$n" -v p="'$CONTAINERD_DROPIN'" 'NR == n {
			i = match($0, /\][^]]*$/); head = substr($0, 1, i - 1); tail = substr($0, i)
			sep = (head ~ /\[[[:space:]]*$/) ? "" : ", "
			$0 = head sep p tail
		} {print}' "$st/ctd.orig" >"$cfg"
	fi
	if ! ctd_sees_msb; then
		mv "$st/ctd.orig" "$cfg"
		unplace "$CONTAINERD_DROPIN"
		die "containerd does not take $CONTAINERD_CONFIG importing $CONTAINERD_DROPIN ($CONTAINERD --config $CONTAINERD_CONFIG config dump): left the file as it was"
	fi
	sha "$cfg" >"$st/ctd.sum"
	echo "added '$CONTAINERD_DROPIN' to the imports of $CONTAINERD_CONFIG (config version $ver)"
	ctd_changed=1
}

# ctd_unconfigure: take the msb runtime out of the node's containerd config.
ctd_unconfigure() {
	local cfg=$HOST_ROOT$CONTAINERD_CONFIG mode
	[ -e "$st/ctd.mode" ] || return 0
	mode=$(cat "$st/ctd.mode")
	step "containerd config: removing runtime msb ($mode)"
	ctd_changed=1
	if [ "$mode" = created ]; then
		if [ -e "$cfg" ] && [ "$(sha "$cfg")" = "$(cat "$st/ctd.sum")" ]; then
			rm -f "$cfg"
			echo "removed $CONTAINERD_CONFIG (written by the installer)"
		else
			echo "warning: $CONTAINERD_CONFIG changed since the installer wrote it: left; remove its msb runtime by hand"
		fi
	elif [ -e "$st/ctd.orig" ]; then
		if [ -e "$cfg" ] && [ "$(sha "$cfg")" = "$(cat "$st/ctd.sum")" ]; then
			mv "$st/ctd.orig" "$cfg"
			echo "restored $CONTAINERD_CONFIG as it was before the install"
		else
			# edited since: remove only our lines
			cp -p "$cfg" "$cfg.msb-uninstall"
			awk -v p="'$CONTAINERD_DROPIN'" -v by="# added by $BY:" '
				$0 == "imports = [" p "]" {next}
				{ i = index($0, ", " p); if (i) $0 = substr($0, 1, i - 1) substr($0, i + length(", " p)) }
				skip { if ($0 ~ /privileged_without_host_devices/) skip = 0; next }
				index($0, by) == 1 { skip = 1; blank = 0; next }
				blank { print ""; blank = 0 }
				$0 == "" { blank = 1; next }
				{ print }
				END { if (blank) print "" }' "$cfg.msb-uninstall" >"$cfg"
			rm -f "$cfg.msb-uninstall"
			echo "warning: $CONTAINERD_CONFIG changed since the install: removed only the installer's lines"
		fi
	fi
}

# ctd_restart: restart the node's containerd when its config changed.
ctd_restart() {
	if [ "$ctd_changed" = 0 ]; then
		echo "containerd's config unchanged: no restart"
	elif [ "${MSB_SKIP_RESTART:-0}" = 1 ]; then
		echo "containerd's config changed: restart skipped (MSB_SKIP_RESTART=1): restart containerd to load it"
	elif [ -n "${MSB_RESTART_CMD:-}" ]; then
		step "restarting containerd: $MSB_RESTART_CMD"
		host_exec sh -c "$MSB_RESTART_CMD" || die "MSB_RESTART_CMD failed"
	elif [ -d "$HOST_ROOT/run/systemd/system" ]; then
		step "restarting containerd: systemctl restart $CONTAINERD_SERVICE"
		host_exec systemctl restart "$CONTAINERD_SERVICE" || die "systemctl restart $CONTAINERD_SERVICE failed on the node"
	else
		die "containerd's config changed but the node runs no systemd: set MSB_RESTART_CMD to what restarts containerd there (or MSB_SKIP_RESTART=1 and restart it yourself)"
	fi
}

install_msb() {
	local f tmp
	[ -d "$HOST_ROOT" ] || die "no node root at $HOST_ROOT"
	[ -x "$MSB_DEPLOY_SRC/bin/containerd-shim-msb-v2" ] && [ -e "$MSB_DEPLOY_SRC/msb/vmlinux" ] ||
		die "no payload in $MSB_DEPLOY_SRC (bin/, msb/): run the installer image (hack/build-deploy-image.sh), or set MSB_DEPLOY_SRC"
	mkparents "$MSB_DEPLOY_STATE"
	rm -f "$st/installed"
	step "msb binaries into /usr/local/bin, the guest image into /var/lib/msb"
	for f in msb-runtime containerd-shim-msb-v2; do
		place "$MSB_DEPLOY_SRC/bin/$f" "/usr/local/bin/$f"
	done
	for f in "$MSB_DEPLOY_SRC"/msb/*; do
		place "$f" "/var/lib/msb/${f##*/}"
	done
	if [ -e "$HOST_ROOT/etc/msb/config.toml" ] && ! owned /etc/msb/config.toml; then
		echo "/etc/msb/config.toml exists: left as it is"
	else
		tmp=$(mktemp)
		msbcfg_default /var/lib/msb >"$tmp"
		chmod 0644 "$tmp"
		place "$tmp" /etc/msb/config.toml
		rm -f "$tmp"
	fi
	ctd_configure
	ctd_restart
	for f in /usr/bin/qemu-system-x86_64 /usr/local/bin/qemu-system-x86_64; do
		[ -x "$HOST_ROOT$f" ] && break
		f=""
	done
	[ -n "$f" ] || echo "warning: no qemu-system-x86_64 on the node: msb's VMs need it (Debian/Ubuntu: apt-get install qemu-system-x86)"
	date -u +%Y-%m-%dT%H:%M:%SZ >"$st/installed"
	echo "msb installed on the node (record: $MSB_DEPLOY_STATE)"
}

uninstall_msb() {
	local list dirs p
	[ -d "$st" ] || { echo "msb was not installed here by node-install.sh ($MSB_DEPLOY_STATE absent): nothing to do"; return 0; }
	rm -f "$st/installed"
	ctd_unconfigure
	step "removing what the installer put on the node"
	list=$(cat "$st/files" 2>/dev/null || true)
	for p in $list; do
		rm -rf "$HOST_ROOT$p" "$HOST_ROOT$p.msb-new"
		if [ -e "$st/backup$p" ] || [ -L "$st/backup$p" ]; then
			mv "$st/backup$p" "$HOST_ROOT$p"
			echo "restored the node's $p"
		else
			echo "removed $p"
		fi
	done
	dirs=$(cat "$st/dirs" 2>/dev/null || true)
	rm -rf "$st"
	for p in $(printf '%s\n' $dirs | sed '1!G;h;$!d'); do
		rmdir "$HOST_ROOT$p" 2>/dev/null || true
	done
	# last: from a preStop hook, the restart may cut the hook's exec session
	ctd_restart
	echo "msb removed from the node"
}

# wait_term: sleep until SIGTERM (the DaemonSet's container).
wait_term() {
	trap 'exit 0' TERM INT
	while :; do
		sleep 3600 &
		wait $! || true
	done
}

case $cmd in
install) install_msb ;;
uninstall) uninstall_msb ;;
run)
	install_msb
	wait_term
	;;
cleanup)
	uninstall_msb
	wait_term
	;;
*)
	echo "usage: node-install.sh install|uninstall|run|cleanup [HOST_ROOT]" >&2
	exit 2
	;;
esac
