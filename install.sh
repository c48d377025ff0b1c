#!/usr/bin/env bash
# install.sh — install msb on Debian 12 / Ubuntu 24.04 and run the demo:
# a container that prints from inside its own microVM.
#
#   sudo ./install.sh            install, then run the demo
#   sudo ./install.sh --no-demo  install only
#
# Uses only distro packages (apt) and Go modules (the Go module proxy).
# Idempotent: a rerun rebuilds the binaries and the guest image in place.
# Env: PREFIX (/usr/local), MSB_LIB (/var/lib/msb), MSB_CACHE (/var/cache/msb).
set -euo pipefail

cd "$(dirname "$0")"
PREFIX=${PREFIX:-/usr/local}
MSB_LIB=${MSB_LIB:-/var/lib/msb}
MSB_CACHE=${MSB_CACHE:-/var/cache/msb}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
demo=1
for a in "$@"; do
	case $a in
	--no-demo) demo=0 ;;
	*) echo "install.sh: unknown argument $a (use --no-demo)" >&2; exit 2 ;;
	esac
done

step() { printf '\n==> %s\n' "$*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (sudo ./install.sh): it installs packages and writes $PREFIX/bin, $MSB_LIB, /etc/msb"
[[ -x $GO ]] || die "Go not found: install Go 1.26 (/usr/local/go) first"

step "installing distro packages (qemu, busybox, libseccomp, e2fsprogs)"
pkgs=(qemu-system-x86 busybox-static libseccomp-dev pkg-config e2fsprogs xz-utils zstd)
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
CGO_ENABLED=0 "$GO" build -trimpath -o "$MSB_CACHE/msb-agent" ./cmd/msb-agent
install -m 0755 "$MSB_CACHE/msb-runtime" "$MSB_CACHE/containerd-shim-msb-v2" "$PREFIX/bin/"
"$PREFIX/bin/msb-runtime" --version | sed -n 1p

step "building static runc for the guest"
hack/build-runc.sh "$MSB_CACHE"

step "building the guest image in $MSB_LIB (kernel from the distro's kernel package)"
CACHE=$MSB_CACHE AGENT=$MSB_CACHE/msb-agent hack/build-guest-image.sh "$MSB_LIB"

step "configuration"
mkdir -p /etc/msb
if [[ -e /etc/msb/config.toml ]]; then
	echo "/etc/msb/config.toml exists: left as it is"
else
	cat >/etc/msb/config.toml <<TOML
# msb configuration (see docs/configuration.md)
backend = "auto"
kernel = "$MSB_LIB/vmlinux"
initrd = "$MSB_LIB/initrd.cpio"
qemu = "qemu-system-x86_64"
vcpus = 1
memory_mib = 256
overhead_mib = 128
boot_timeout = "2m"
TOML
	echo "wrote /etc/msb/config.toml"
fi
if [[ -r /dev/kvm ]] && [[ -w /dev/kvm ]]; then echo "KVM: usable"; else echo "KVM: not usable here, VMs run under TCG emulation (slow but isolated)"; fi

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
fi
step "done"
