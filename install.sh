#!/usr/bin/env bash
# install.sh — install msb on Debian 12 / Ubuntu 24.04 and run the demo:
# a container that prints from inside its own microVM.
#
#   sudo ./install.sh            install, then run the demo
#   sudo ./install.sh --no-demo  install only
#
# Uses only distro packages (apt) and Go modules (the Go module proxy).
# Idempotent: a rerun rebuilds the binaries and the guest image in place.
# Env: PREFIX (/usr/local), MSB_LIB (/var/lib/msb), MSB_CACHE (/var/cache/msb),
#      MSB_KERNEL (msb: build msb's own guest kernel from linux-source-6.1, once
#      per machine, cached; distro: the distribution's kernel package),
#      MSB_GUEST_RUNTIME (crun: the distribution's crun runs containers in the
#      guest, the default, ADR 021; runc: a static runc build).
set -euo pipefail

cd "$(dirname "$0")"
PREFIX=${PREFIX:-/usr/local}
MSB_LIB=${MSB_LIB:-/var/lib/msb}
MSB_CACHE=${MSB_CACHE:-/var/cache/msb}
MSB_KERNEL=${MSB_KERNEL:-msb}
MSB_GUEST_RUNTIME=${MSB_GUEST_RUNTIME:-crun}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
demo=1
for a in "$@"; do
	case $a in
	--no-demo) demo=0 ;;
	*) echo "install.sh: unknown argument $a (use --no-demo)" >&2; exit 2 ;;
	esac
done

step() { printf '\n==> %s\n' "$*"; }
# shellcheck source=hack/containerd-config.sh
. hack/containerd-config.sh
ctdcfg_containerd() { "$ctdcfg_bin" "$@"; }
die() { echo "install.sh: $*" >&2; exit 1; }

[[ $MSB_KERNEL == msb || $MSB_KERNEL == distro ]] || die "MSB_KERNEL=$MSB_KERNEL: use msb (msb's own guest kernel) or distro (the distribution's kernel package)"
[[ $MSB_GUEST_RUNTIME == crun || $MSB_GUEST_RUNTIME == runc ]] || die "MSB_GUEST_RUNTIME=$MSB_GUEST_RUNTIME: use crun (the distribution's crun in the guest) or runc (a static runc build)"
[[ $(id -u) == 0 ]] || die "run as root (sudo ./install.sh): it installs packages and writes $PREFIX/bin, $MSB_LIB, /etc/msb"
[[ -x $GO ]] || die "Go not found: install Go 1.26 (/usr/local/go) first"

step "installing distro packages (qemu, qemu-img, busybox, libseccomp, e2fsprogs, iptables)"
pkgs=(qemu-system-x86 qemu-utils busybox-static libseccomp-dev pkg-config e2fsprogs xz-utils zstd iptables)
# The guest kernel's source and what building it takes.
[[ $MSB_KERNEL == distro ]] || pkgs+=(linux-source-6.1 bc bison flex libelf-dev)
# The guest's OCI runtime, copied into the image with its libraries.
[[ $MSB_GUEST_RUNTIME == runc ]] || pkgs+=(crun)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
	echo "all present"
fi

step "building msb binaries into $PREFIX/bin"
mkdir -p "$MSB_CACHE" "$PREFIX/bin"
"$GO" build -trimpath -o "$MSB_CACHE/msb-runtime" ./cmd/msb-runtime
"$GO" build -trimpath -o "$MSB_CACHE/containerd-shim-msb-v2" ./cmd/containerd-shim-msb-v2
# Stripped: the agent sits in every guest's initramfs, unpacked into guest RAM.
CGO_ENABLED=0 "$GO" build -trimpath -ldflags '-s -w' -o "$MSB_CACHE/msb-agent" ./cmd/msb-agent
# Parked VMs (warm start, pool_size) run the binaries and image being
# replaced: the old msb-runtime stops them (the pool refills itself).
if [[ -d /run/msb/shim/pool && -x $PREFIX/bin/msb-runtime ]]; then
	"$PREFIX/bin/msb-runtime" pool drain || true
fi
install -m 0755 "$MSB_CACHE/msb-runtime" "$MSB_CACHE/containerd-shim-msb-v2" "$PREFIX/bin/"
"$PREFIX/bin/msb-runtime" --version | sed -n 1p

step "building static runc (containerd's runc shim; the guest's runtime with MSB_GUEST_RUNTIME=runc)"
hack/build-runc.sh "$MSB_CACHE"

if [[ $MSB_KERNEL == msb ]]; then
	step "building msb's guest kernel (Linux 6.1 from linux-source-6.1, guest/kconfig/msb.config; built once, cached in $MSB_CACHE/kernel)"
	kstart=$(date +%s)
	kdir=$(hack/build-kernel.sh "$MSB_CACHE" | tail -n1)
	echo "guest kernel ready in $(($(date +%s) - kstart)) s: $kdir"
	step "building the guest image in $MSB_LIB (msb's kernel, read-only root disk, $MSB_GUEST_RUNTIME)"
	MSB_GUEST_RUNTIME=$MSB_GUEST_RUNTIME CACHE=$MSB_CACHE AGENT=$MSB_CACHE/msb-agent KERNEL_DIR=$kdir hack/build-guest-image.sh "$MSB_LIB"
else
	step "building the guest image in $MSB_LIB (kernel from the distro's kernel package, $MSB_GUEST_RUNTIME)"
	MSB_GUEST_RUNTIME=$MSB_GUEST_RUNTIME CACHE=$MSB_CACHE AGENT=$MSB_CACHE/msb-agent hack/build-guest-image.sh "$MSB_LIB"
fi

step "CNI plugins (bridge, host-local, portmap, loopback) for nerdctl and Kubernetes pod networks"
CNI_VERSION=${CNI_VERSION:-v1.10.0}
CNI_VERSION=$CNI_VERSION hack/build-cni.sh "$MSB_CACHE/cni/bin-$CNI_VERSION"
mkdir -p /opt/cni/bin
for p in bridge host-local portmap loopback; do
	# Never replace plugins the machine already has.
	[[ -e /opt/cni/bin/$p ]] || { install -m 0755 "$MSB_CACHE/cni/bin-$CNI_VERSION/$p" /opt/cni/bin/ && echo "installed /opt/cni/bin/$p"; }
done

step "configuration"
mkdir -p /etc/msb
if [[ -e /etc/msb/config.toml ]]; then
	echo "/etc/msb/config.toml exists: left as it is"
else
	msbcfg_default "$MSB_LIB" >/etc/msb/config.toml
	echo "wrote /etc/msb/config.toml"
fi
# The qemu line of --version runs the cached KVM probe (docs/backends.md).
qemu_line=$("$PREFIX/bin/msb-runtime" --version | grep '^backend qemu:' || true)
case $qemu_line in
*"(kvm)") echo "KVM: usable" ;;
*) echo "KVM: not usable here, VMs run under TCG emulation (slow but isolated): ${qemu_line#backend qemu: }" ;;
esac

# ============================================================================
# containerd (docs/containerd.md). Installs containerd v2.4.x,
# ctr, containerd's runc shim and runc when no containerd is there; writes the
# msb runtime entry into /etc/containerd/config.toml without clobbering it;
# (re)starts containerd; imports the default image. Skip all of it with
# MSB_SKIP_CONTAINERD=1. Env: CONTAINERD_VERSION (hack/build-containerd.sh),
# CONTAINERD_CONFIG (/etc/containerd/config.toml), CONTAINERD_ADDRESS
# (/run/containerd/containerd.sock), MSB_IMAGE (msb.local/busybox:latest).
# ============================================================================
CONTAINERD_CONFIG=${CONTAINERD_CONFIG:-/etc/containerd/config.toml}
CONTAINERD_ADDRESS=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
CONTAINERD_LOG=/var/log/containerd.log
MSB_IMAGE=${MSB_IMAGE:-msb.local/busybox:latest}
ctd_marker=$MSB_LIB/containerd.installed # present: install.sh manages $PREFIX/bin/containerd
ctd_pidfile=/run/msb/containerd.pid      # containerd started by install.sh (no systemd)
ctd_sys_path=$PREFIX/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ctd_changed=0 # set when the binary or the config changed: containerd must restart

ctd_ctr() { PATH=$ctd_sys_path ctr --address "$CONTAINERD_ADDRESS" "$@"; }
ctd_up() { ctd_ctr version >/dev/null 2>&1; }

# containerd_install: build and install containerd + ctr + runc shim (+ runc)
# unless a containerd that install.sh does not manage is on PATH.
containerd_install() {
	step "containerd"
	local have
	have=$(PATH=$ctd_sys_path command -v containerd || true)
	if [[ -n $have && ! ( -e $ctd_marker && $have == "$PREFIX/bin/containerd" ) ]]; then
		echo "using the installed $("$have" --version | awk '{print $1, $3}') at $have (not managed by install.sh)"
		PATH=$ctd_sys_path command -v ctr >/dev/null || die "containerd at $have but no ctr on PATH"
	else
		hack/build-containerd.sh "$MSB_CACHE/bin"
		local b
		for b in containerd ctr containerd-shim-runc-v2; do
			if ! cmp -s "$MSB_CACHE/bin/$b" "$PREFIX/bin/$b"; then
				install -m 0755 "$MSB_CACHE/bin/$b" "$PREFIX/bin/$b"
				echo "installed $PREFIX/bin/$b"
				[[ $b == containerd ]] && ctd_changed=1
			fi
		done
		mkdir -p "$(dirname "$ctd_marker")"
		"$PREFIX/bin/containerd" --version >"$ctd_marker"
		echo "containerd: $(awk '{print $3}' "$ctd_marker") in $PREFIX/bin (managed by install.sh)"
	fi
	if PATH=$ctd_sys_path command -v runc >/dev/null; then
		echo "runc: $(PATH=$ctd_sys_path command -v runc)"
	else
		install -D -m 0755 "$MSB_CACHE/runc" /usr/local/sbin/runc
		echo "installed /usr/local/sbin/runc ($(/usr/local/sbin/runc --version | head -1))"
	fi
}

# containerd_config: add the msb runtime entry (CRI runtime handler "msb")
# in the plugin naming of the config's version; create a minimal config in
# the version this containerd writes by default when there is none
# (hack/containerd-config.sh, shared with deploy/node-install.sh).
containerd_config() {
	step "containerd config: runtime msb in $CONTAINERD_CONFIG"
	ctdcfg_bin=$(PATH=$ctd_sys_path command -v containerd)
	ctdcfg_add "$CONTAINERD_CONFIG" "$CONTAINERD_CONFIG" "$CONTAINERD_CONFIG.msb-backup-$(date +%Y%m%d%H%M%S)" "msb install.sh"
	((ctdcfg_changed == 0)) || ctd_changed=1
}

# containerd_start: (re)start containerd when something changed or it is
# not running, through systemd when systemd runs, else in the background.
containerd_start() {
	step "containerd service"
	local ctd
	ctd=$(PATH=$ctd_sys_path command -v containerd)
	local unit=/etc/systemd/system/containerd.service own_unit=0
	# our own unit for the containerd install.sh manages, unless another one exists
	if [[ -d /run/systemd/system && -e $ctd_marker && $ctd == "$PREFIX/bin/containerd" ]] &&
		{ grep -qs 'msb install.sh' "$unit" || ! systemctl cat containerd.service >/dev/null 2>&1; }; then
		own_unit=1
	fi
	if [[ -d /run/systemd/system ]] && { ((own_unit)) || systemctl cat containerd.service >/dev/null 2>&1; }; then
		if ((own_unit)); then
			cat >"$unit.tmp" <<UNIT
# written by msb install.sh (containerd's upstream unit, for $ctd)
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$ctd --config $CONTAINERD_CONFIG
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
UNIT
			if ! cmp -s "$unit.tmp" "$unit"; then
				mv "$unit.tmp" "$unit"
				echo "wrote $unit"
				ctd_changed=1
			else
				rm -f "$unit.tmp"
			fi
			systemctl daemon-reload
		fi
		systemctl enable containerd.service >/dev/null 2>&1 || true
		if ((ctd_changed)) || ! systemctl is-active -q containerd.service; then
			systemctl restart containerd.service
			echo "containerd (re)started by systemd (logs: journalctl -u containerd)"
		else
			echo "containerd running, nothing changed"
		fi
	else
		local pid=""
		[[ -r $ctd_pidfile ]] && pid=$(cat "$ctd_pidfile")
		if [[ -n $pid ]] && ! [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$ctd"* ]]; then
			pid="" # stale
		fi
		if [[ -z $pid ]] && ctd_up; then
			# running, but not started by us: restart it only if it is this binary
			local p
			for p in $(pgrep -x containerd || true); do
				[[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$ctd"* ]] && pid=$p # "* (deleted)" once replaced
			done
			if [[ -z $pid ]]; then
				((ctd_changed)) && echo "warning: a containerd not started by install.sh serves $CONTAINERD_ADDRESS: restart it to load $CONTAINERD_CONFIG"
				echo "containerd running (not managed here)"
				return 0
			fi
			mkdir -p "$(dirname "$ctd_pidfile")"
			echo "$pid" >"$ctd_pidfile"
		fi
		if [[ -n $pid ]] && ctd_up && ! ((ctd_changed)); then
			echo "containerd running (pid $pid), nothing changed (log: $CONTAINERD_LOG)"
			return 0
		fi
		if [[ -n $pid ]]; then
			echo "stopping containerd (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			local i
			for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; }
		fi
		mkdir -p "$(dirname "$ctd_pidfile")"
		# no systemd here: a background daemon in its own session, logging to a file
		PATH=$ctd_sys_path setsid "$ctd" --config "$CONTAINERD_CONFIG" </dev/null >>"$CONTAINERD_LOG" 2>&1 &
		echo $! >"$ctd_pidfile"
		echo "containerd started in the background (pid $!, no systemd here; log: $CONTAINERD_LOG)"
	fi
	local i
	for ((i = 0; i < 300; i++)); do
		ctd_up && break
		sleep 0.1
	done
	if ! ctd_up; then
		[[ -d /run/systemd/system ]] && journalctl -u containerd -n 30 --no-pager >&2 || tail -n 30 "$CONTAINERD_LOG" >&2 || true
		die "containerd does not answer on $CONTAINERD_ADDRESS (log: $CONTAINERD_LOG or journalctl -u containerd)"
	fi
	echo "containerd $(ctd_ctr version 2>/dev/null | awk '/Server:/ {s=1} s && /Version:/ {print $2; exit}') serving on $CONTAINERD_ADDRESS"
}

# containerd_image: build the default image (hack/mkimage, from the host's
# busybox) and import it into the default namespace.
containerd_image() {
	step "default image $MSB_IMAGE (busybox, built locally: no registry needed)"
	"$GO" run ./hack/mkimage -o "$MSB_CACHE/busybox-image.tar" -name "$MSB_IMAGE"
	ctd_ctr -n default image import "$MSB_CACHE/busybox-image.tar"
	ctd_ctr -n default image ls | awk -v img="$MSB_IMAGE" 'NR == 1 || $1 == img'
}

# demo_ctr: the containerd demo: prints the guest kernel's release.
demo_ctr() {
	step "demo: ctr run --rm --runtime io.containerd.msb.v2 $MSB_IMAGE msb-demo uname -r"
	ctd_ctr -n default run --rm --runtime io.containerd.msb.v2 "$MSB_IMAGE" "msb-demo-$$" uname -r
	echo "host kernel: $(uname -r)"
}

if [[ ${MSB_SKIP_CONTAINERD:-0} != 1 ]]; then
	containerd_install
	containerd_config
	containerd_start
	containerd_image
fi
# ============================================================================
# end of the containerd section
# ============================================================================

step "demo bundle in $MSB_LIB/demo"
bundle=$MSB_LIB/demo
rm -rf "$bundle"
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for t in sh echo cat uname id hostname ls env; do ln -sf busybox "$bundle/rootfs/bin/$t"; done
"$PREFIX/bin/msb-runtime" spec --bundle "$bundle"
sed -i 's/"sh"$/"sh", "-c", "echo hello from a microVM: kernel $(uname -r), hostname $(hostname)"/' "$bundle/config.json"

if ((demo)); then
	step "demo: msb-runtime run --bundle $bundle msb-demo"
	"$PREFIX/bin/msb-runtime" run --bundle "$bundle" "msb-demo-$$" </dev/null
	echo "host kernel: $(uname -r)"
	if [[ ${MSB_SKIP_CONTAINERD:-0} != 1 ]]; then
		demo_ctr
	fi
fi
step "done"
