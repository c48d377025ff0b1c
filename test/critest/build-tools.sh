#!/usr/bin/env bash
# build-tools.sh — build the tools critest runs with, into $CRITEST_CACHE/bin
# (default /var/cache/msb/critest/bin); a rerun with everything built does nothing.
#
#   crane    v0.22.1  go install github.com/google/go-containerregistry/cmd/crane (the loopback
#                     registry and the image pushes)
#   crictl   v1.37.0  go build ./cmd/crictl from the module sigs.k8s.io/cri-tools (copied out of
#   critest  v1.37.0  the module cache); critest is `go test -c ./cmd/critest`
#   fakeweb           test/critest/fakeweb, static: pause, web servers, the nonewprivs checker
#   critest-summary   test/critest/summary: reads critest's JSON report, checks expected-failures.txt
#   busybox           Debian's dynamically linked busybox (apt-get download busybox, unpacked, not
#                     installed) into $CRITEST_CACHE/busybox: critest's MaskedPaths spec needs a
#                     busybox that execs its applets (busybox-static runs them in-process)
#
# The two project programs are rebuilt when their source changes (a hash of it is kept beside).
# Env: see common.sh (CRITEST_CACHE).
set -euo pipefail
source "$(dirname "$0")/common.sh"
mkdir -p "$BIN"
LDF="-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}"

if [[ ! -x $BIN/crane || ! -e $BIN/.crane-$CRANE_VERSION ]]; then
	log "building crane $CRANE_VERSION"
	(cd "$CRITEST_CACHE" && GOBIN=$BIN go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION")
	touch "$BIN/.crane-$CRANE_VERSION"
fi

if [[ ! -x $BIN/crictl || ! -x $BIN/critest || ! -e $BIN/.cri-tools-$CRI_TOOLS_VERSION ]]; then
	log "building crictl and critest $CRI_TOOLS_VERSION"
	mod=$(cd "$CRITEST_CACHE" && go mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -d $mod ]] || die "go mod download sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION gave no directory"
	src=$CRITEST_CACHE/src/cri-tools-$CRI_TOOLS_VERSION
	rm -rf "$src"
	mkdir -p "$(dirname "$src")"
	cp -r "$mod" "$src"
	chmod -R u+w "$src"
	(cd "$src" && go build -o "$BIN/crictl" -ldflags "$LDF" ./cmd/crictl)
	(cd "$src" && go test -c -o "$BIN/critest" -ldflags "$LDF" ./cmd/critest)
	touch "$BIN/.cri-tools-$CRI_TOOLS_VERSION"
fi

# build_local NAME PKGDIR [go build flags...]: build a program of this
# repository unless the binary was built from the same source.
build_local() {
	local name=$1 dir=$2 sum
	shift 2
	sum=$(cat "$REPO_ROOT/$dir"/*.go "$REPO_ROOT/go.mod" | sha256sum | cut -d' ' -f1)
	if [[ -x $BIN/$name && $(cat "$BIN/.$name.sha256" 2>/dev/null) == "$sum" ]]; then
		return
	fi
	log "building $name"
	(cd "$REPO_ROOT" && go build -trimpath "$@" -o "$BIN/$name" "./$dir")
	echo "$sum" >"$BIN/.$name.sha256"
}
CGO_ENABLED=0 build_local fakeweb test/critest/fakeweb -ldflags '-s -w'
build_local critest-summary test/critest/summary

bb=$CRITEST_CACHE/busybox/bin/busybox
if [[ ! -x $bb ]]; then
	log "fetching Debian's busybox (apt-get download busybox)"
	deb=$CRITEST_CACHE/deb
	mkdir -p "$deb"
	if ! ls "$deb"/busybox_*.deb >/dev/null 2>&1; then
		(cd "$deb" && apt-get download busybox >/dev/null 2>&1) ||
			(apt-get update -qq && cd "$deb" && apt-get download busybox >/dev/null)
	fi
	rm -rf "$CRITEST_CACHE/busybox.tmp"
	dpkg -x "$(ls "$deb"/busybox_*.deb | sort | tail -n1)" "$CRITEST_CACHE/busybox.tmp"
	[[ -x $CRITEST_CACHE/busybox.tmp/bin/busybox ]] || die "the busybox package has no bin/busybox"
	rm -rf "$CRITEST_CACHE/busybox"
	mv "$CRITEST_CACHE/busybox.tmp" "$CRITEST_CACHE/busybox"
fi
