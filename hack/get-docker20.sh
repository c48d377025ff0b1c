#!/usr/bin/env bash
# Fetch Docker Engine 20.10 as Debian 12 ships it (docker.io) for the
# Docker 20.10 end-to-end test (test/e2e/docker20_test.go), which runs
# msb-runtime as a runc-compatible runtime ("runtimes": {"msb": {"path":
# ...}}). Only the binaries are extracted: no daemon, service or
# dependency is installed on the machine.
#
#   hack/get-docker20.sh OUTDIR   -> OUTDIR/{dockerd,docker-proxy,docker}
#
# A rerun with all three present does nothing.
set -euo pipefail

OUTDIR=${1:?usage: $0 OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [[ -x $OUTDIR/dockerd && -x $OUTDIR/docker-proxy && -x $OUTDIR/docker ]]; then
	echo "Docker 20.10 (cached) in $OUTDIR: $("$OUTDIR/dockerd" --version)"
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp" # apt's download user must write here
(cd "$tmp" && apt-get download docker.io >/dev/null && dpkg-deb -x docker.io_*.deb x)
install -m 0755 "$tmp/x/usr/sbin/dockerd" "$tmp/x/usr/sbin/docker-proxy" "$tmp/x/usr/bin/docker" "$OUTDIR/"
echo "Docker 20.10 from Debian's docker.io -> $OUTDIR: $("$OUTDIR/dockerd" --version)"
