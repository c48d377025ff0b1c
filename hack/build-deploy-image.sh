#!/usr/bin/env bash
# Build the msb node installer image (deploy/msb-deploy.yaml runs it) as an
# OCI image-layout tar for `ctr image import`: no registry needed.
#
#   hack/build-deploy-image.sh [-o OUT.tar] [-name REF]
#       (default OUT: $MSB_CACHE/msb-deploy-image.tar, REF: msb.local/msb-deploy:latest)
#
# One layer: the host's static busybox (the installer's shell and tools) and
# /opt/msb-deploy: node-install.sh, hack/containerd-config.sh, bin/ (msb-runtime,
# containerd-shim-msb-v2) and msb/ (the guest image: what install.sh built in
# $MSB_LIB, less its demo). Deterministic for the same inputs.
#
# Env: MSB_LIB (/var/lib/msb: the guest image, from install.sh or
#      hack/build-guest-image.sh), BIN_DIR (prebuilt msb-runtime and
#      containerd-shim-msb-v2; default: built from this tree with go, as
#      install.sh does), BUSYBOX (/bin/busybox, static), MSB_CACHE (/var/cache/msb),
#      STAGE (keep the image's tree there instead of a temp dir), GO.
set -euo pipefail

cd "$(dirname "$0")/.."
MSB_LIB=${MSB_LIB:-/var/lib/msb}
MSB_CACHE=${MSB_CACHE:-/var/cache/msb}
BUSYBOX=${BUSYBOX:-/bin/busybox}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
out=$MSB_CACHE/msb-deploy-image.tar
name=msb.local/msb-deploy:latest
while (($#)); do
	case $1 in
	-o) out=$2; shift 2 ;;
	-name) name=$2; shift 2 ;;
	*) echo "usage: $0 [-o OUT.tar] [-name REF]" >&2; exit 2 ;;
	esac
done
die() { echo "build-deploy-image.sh: $*" >&2; exit 1; }

[[ -s $MSB_LIB/manifest.json && -e $MSB_LIB/vmlinux ]] || die "no guest image in $MSB_LIB (run install.sh or hack/build-guest-image.sh, or set MSB_LIB)"
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || die "$BUSYBOX is not a static busybox (apt-get install busybox-static, or set BUSYBOX)"
tag=${name##*/}
[[ $tag == *:* ]] && tag=${tag##*:} || tag=latest

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=${STAGE:-$work/rootfs}
rm -rf "$stage"
mkdir -p "$stage/opt/msb-deploy/bin" "$stage/opt/msb-deploy/msb" "$stage/bin" "$stage/tmp" "$stage/etc"
chmod 1777 "$stage/tmp"

if [[ -n ${BIN_DIR:-} ]]; then
	for b in msb-runtime containerd-shim-msb-v2; do install -m 0755 "$BIN_DIR/$b" "$stage/opt/msb-deploy/bin/$b"; done
else
	"$GO" build -trimpath -o "$stage/opt/msb-deploy/bin/msb-runtime" ./cmd/msb-runtime
	"$GO" build -trimpath -o "$stage/opt/msb-deploy/bin/containerd-shim-msb-v2" ./cmd/containerd-shim-msb-v2
fi
install -m 0755 deploy/node-install.sh "$stage/opt/msb-deploy/node-install.sh"
install -m 0644 hack/containerd-config.sh "$stage/opt/msb-deploy/containerd-config.sh"
# the guest image as config/config.go's defaults name it (install.sh's demo/ and its containerd marker stay out)
for f in vmlinux vmlinuz initrd.cpio rootfs.img manifest.json kernel.release krunroot modules; do
	[[ -e $MSB_LIB/$f ]] && cp -a "$MSB_LIB/$f" "$stage/opt/msb-deploy/msb/"
done

install -m 0755 "$BUSYBOX" "$stage/bin/busybox"
for a in $("$stage/bin/busybox" --list-full); do
	[[ $a == */* && $a != bin/busybox ]] || continue
	mkdir -p "$stage/$(dirname "$a")"
	ln -sf "$(realpath -m -s --relative-to="/$(dirname "$a")" /bin/busybox)" "$stage/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"

# the layer, then the OCI layout around it
tar -C "$stage" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | awk '{print $1}')
gzip -n -6 <"$work/layer.tar" >"$work/layer.tar.gz"
rm -f "$work/layer.tar"
mkdir -p "$work/oci/blobs/sha256"
blob() { # FILE -> prints "DIGEST SIZE", moves FILE into blobs
	local d s
	d=$(sha256sum "$1" | awk '{print $1}')
	s=$(stat -c %s "$1")
	mv "$1" "$work/oci/blobs/sha256/$d"
	echo "$d $s"
}
read -r layer_d layer_s < <(blob "$work/layer.tar.gz")
printf '{"created":"1970-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/opt/msb-deploy/node-install.sh","run"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"msb hack/build-deploy-image.sh"}]}' "$diff_id" >"$work/config.json"
read -r config_d config_s < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$config_d" "$config_s" "$layer_d" "$layer_s" >"$work/manifest.json"
read -r man_d man_s < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' "$man_d" "$man_s" "$name" "$tag" >"$work/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
mkdir -p "$(dirname "$out")"
tar -C "$work/oci" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "build-deploy-image.sh: $name (manifest sha256:$man_d, layer $((layer_s >> 20)) MiB) -> $out"
