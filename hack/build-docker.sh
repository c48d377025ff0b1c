#!/usr/bin/env bash
# Build Docker Engine (dockerd, docker-proxy) from the Go module proxy for
# the Docker end-to-end test (test/e2e/docker_test.go), and make sure a
# docker CLI is there.
#
#   hack/build-docker.sh OUTDIR   -> OUTDIR/{dockerd,docker-proxy[,docker]}
#
# dockerd takes about 13 min on 2 cores the first time; a rerun with both
# present does nothing. The CLI: `docker` on PATH if there is one, else the
# one in Debian 12's docker.io package (20.10, API 1.41, which dockerd v29
# still serves), extracted alone: no daemon, service or dependency is
# installed. Env: DOCKER_VERSION (default v2.0.0-beta.24), GO.
set -euo pipefail

OUTDIR=${1:?usage: $0 OUTDIR}
DOCKER_VERSION=${DOCKER_VERSION:-v2.0.0-beta.24}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [[ -x $OUTDIR/dockerd && -x $OUTDIR/docker-proxy ]]; then
	echo "dockerd $DOCKER_VERSION (cached) in $OUTDIR"
else
	tmp=$(mktemp -d "$OUTDIR/.build-XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	# Outside the module, so go install resolves moby's own go.mod.
	(cd / && GOBIN=$tmp "$GO" install -trimpath \
		"github.com/moby/moby/v2/cmd/dockerd@$DOCKER_VERSION" \
		"github.com/moby/moby/v2/cmd/docker-proxy@$DOCKER_VERSION")
	mv "$tmp/dockerd" "$tmp/docker-proxy" "$OUTDIR/"
	echo "dockerd $DOCKER_VERSION -> $OUTDIR"
fi

if command -v docker >/dev/null; then
	echo "docker CLI: $(command -v docker) ($(docker --version))"
elif [[ -x $OUTDIR/docker ]]; then
	echo "docker CLI (cached): $OUTDIR/docker"
else
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download docker.io >/dev/null && dpkg-deb -x docker.io_*.deb x)
	install -m 0755 "$tmp/x/usr/bin/docker" "$OUTDIR/docker"
	rm -rf "$tmp"
	echo "docker CLI from Debian's docker.io -> $OUTDIR/docker"
fi
