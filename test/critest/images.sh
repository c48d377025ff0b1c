#!/usr/bin/env bash
# images.sh REGISTRY(host:port) — build the substitute images critest v1.37.0 pulls and push
# them to REGISTRY under the exact repository:tag names critest asks for (certs.d mirrors
# send registry.k8s.io, gcr.io, ... there). Nothing is fetched: the layers are made here,
# deterministically (same digests every run), from fakeweb and Debian's busybox (both from
# build-tools.sh). Run it where REGISTRY is reachable (setup.sh runs it in the test netns).
#
# What stands in for what:
#   e2e-test-images/busybox:1.29-2, test-image-*   busybox (hard links, like the real image)
#   e2e-test-images/nginx:1.14-2, hostnet-nginx    fakeweb as /usr/sbin/nginx (HTTP on :80 / :12003)
#   e2e-test-images/httpd:2.4.39-4                 fakeweb as httpd-foreground
#   e2e-test-images/nonewprivs:1.3                 fakeweb as a setuid-root "Effective uid: N" printer
#   pause:3.9, pause:3.10.1 (the sandbox image)     fakeweb as /pause (user 65535)
# Env: see common.sh (CRITEST_CACHE, CRITEST_WORK).
set -euo pipefail
source "$(dirname "$0")/common.sh"
R=${1:?usage: images.sh REGISTRY}
L=$RUN/layers
FAKEWEB=$BIN/fakeweb
BB=$CRITEST_CACHE/busybox/bin/busybox
[[ -x $FAKEWEB && -x $BB ]] || die "run build-tools.sh first"
rm -rf "$L"
mkdir -p "$L"
TAR=(tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu)
mkroot() { rm -rf "$1" && mkdir -p "$1"; }

# ---- busybox base layer
r=$L/rootfs-busybox
mkroot "$r"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,tmp,var/www,var/run,var/spool/mail,dev,proc,sys}
chmod 1777 "$r/tmp"
chmod 700 "$r/root"
install -m 0755 "$BB" "$r/bin/busybox"
for lib in $(ldd "$BB" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
	mkdir -p "$r$(dirname "$lib")"
	cp -L "$lib" "$r$lib"
done
for a in $("$BB" --list); do
	# hard links like the upstream image: the MaskedPaths spec masks /bin/ls's path
	[[ $a == busybox ]] || ln -f "$r/bin/busybox" "$r/bin/$a"
done
# critest execs pgrep and ipcs; a busybox build may lack them: minimal stand-ins
if [[ ! -e $r/bin/pgrep ]]; then
	cat >"$r/bin/pgrep" <<'S'
#!/bin/sh
# minimal pgrep PATTERN: pids whose comm matches
pat=$1; rc=1
for d in /proc/[0-9]*; do
  c=$(cat "$d/comm" 2>/dev/null) || continue
  if echo "$c" | grep -q -- "$pat"; then echo "${d#/proc/}"; rc=0; fi
done
exit $rc
S
	chmod 755 "$r/bin/pgrep"
fi
if [[ ! -e $r/bin/ipcs ]]; then
	cat >"$r/bin/ipcs" <<'S'
#!/bin/sh
# minimal "ipcs -m"
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
[ -r /proc/sysvipc/shm ] && awk 'NR>1{printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n",$1,$2,$8,$3,$4,$7}' /proc/sysvipc/shm
exit 0
S
	chmod 755 "$r/bin/ipcs"
fi
# upstream busybox's users and groups (test/ctrsuite's images use them too)
cp "$CRITEST_DIR/busybox-etc/passwd" "$CRITEST_DIR/busybox-etc/group" "$r/etc/"
"${TAR[@]}" -C "$r" -cf "$L/busybox.tar" .

# ---- marker layers: one distinct file per test image, so their digests differ
for n in test-image-1 test-image-2 test-image-3 test-image-tags test-image-tag test-image-latest test-image-digest sandbox; do
	r=$L/rootfs-$n
	mkroot "$r"
	echo "$n" >"$r/.$n"
	"${TAR[@]}" -C "$r" -cf "$L/marker-$n.tar" .
done

# ---- predefined group: user 1000 in group 50000
r=$L/rootfs-predef
mkroot "$r"
mkdir -p "$r/etc" "$r/home/default-user"
cp "$L/rootfs-busybox/etc/passwd" "$L/rootfs-busybox/etc/group" "$r/etc/"
echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >>"$r/etc/passwd"
echo 'default-user:x:1000:' >>"$r/etc/group"
echo 'group-defined-in-image:x:50000:default-user' >>"$r/etc/group"
"${TAR[@]}" -C "$r" -cf "$L/predef.tar" .

# ---- fakeweb as nginx, httpd, the nonewprivs checker, pause
r=$L/rootfs-nginx
mkroot "$r"
mkdir -p "$r/usr/sbin" "$r/var/run" "$r/usr/share/nginx/html"
install -m 0755 "$FAKEWEB" "$r/usr/sbin/nginx"
echo '<h1>Welcome to nginx!</h1>' >"$r/usr/share/nginx/html/index.html"
"${TAR[@]}" -C "$r" -cf "$L/nginx.tar" .
r=$L/rootfs-httpd
mkroot "$r"
install -D -m 0755 "$FAKEWEB" "$r/usr/local/bin/httpd-foreground"
"${TAR[@]}" -C "$r" -cf "$L/httpd.tar" .
r=$L/rootfs-nnp
mkroot "$r"
install -D -m 4755 "$FAKEWEB" "$r/usr/local/bin/nnp"
"${TAR[@]}" -C "$r" -cf "$L/nnp.tar" .
r=$L/rootfs-pause
mkroot "$r"
install -m 0755 "$FAKEWEB" "$r/pause"
"${TAR[@]}" -C "$r" -cf "$L/pause.tar" .

# ---- push
P=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# mk REF CMD USER ENV LAYER...: CMD comma-separated or ""; USER, ENV (extra k=v) or ""
mk() {
	local ref=$1 cmd=$2 user=$3 env=$4 t
	shift 4
	local args=() m=(--set-platform linux/amd64 -e "PATH=$P")
	for t in "$@"; do args+=(-f "$L/$t"); done
	crane append --oci-empty-base --insecure "${args[@]}" -t "$R/$ref" >/dev/null
	[[ -n $cmd ]] && m+=(--cmd "$cmd")
	[[ -n $user ]] && m+=(--user "$user")
	[[ -n $env ]] && m+=(-e "$env")
	crane mutate --insecure "$R/$ref" "${m[@]}" -t "$R/$ref" >/dev/null
	echo "$ref $(crane digest --insecure "$R/$ref")"
}
tag() { crane tag --insecure "$R/$1" "$2" >/dev/null && echo "$1 -> :$2"; }

# registry.k8s.io/e2e-test-images/*
mk e2e-test-images/busybox:1.29-2 sh "" "" busybox.tar
mk e2e-test-images/nginx:1.14-2 "nginx,-g,daemon off;" "" "" busybox.tar nginx.tar
mk e2e-test-images/httpd:2.4.39-4 httpd-foreground "" "" busybox.tar httpd.tar
mk e2e-test-images/nonewprivs:1.3 /usr/local/bin/nnp "" "" busybox.tar nnp.tar
# registry.k8s.io/pause (k8s.gcr.io/pause through its mirror too); the sandbox image differs
mk pause:3.9 "" "65535:65535" "" pause.tar
crane mutate --insecure "$R/pause:3.9" --entrypoint /pause -t "$R/pause:3.9" >/dev/null
mk pause:3.10.1 "" "65535:65535" "" pause.tar marker-sandbox.tar
crane mutate --insecure "$R/pause:3.10.1" --entrypoint /pause -t "$R/pause:3.10.1" >/dev/null
tag pause:3.10.1 3.10
tag pause:3.10.1 3.10.2
# gcr.io/k8s-staging-cri-tools/*
S=k8s-staging-cri-tools
mk $S/test-image-user-uid:latest sh 1002 "" busybox.tar
mk $S/test-image-user-username:latest sh www-data "" busybox.tar
mk $S/test-image-user-uid-group:latest sh 1003:1004 "" busybox.tar
mk $S/test-image-user-username-group:latest sh www-data:1004 "" busybox.tar
mk $S/test-image-predefined-group:latest sh 1000 "" busybox.tar predef.tar
mk $S/test-image-latest:latest sh "" "" busybox.tar marker-test-image-latest.tar
mk $S/test-image-tag:test sh "" "" busybox.tar marker-test-image-tag.tar
tag $S/test-image-tag:test all
mk $S/test-image-digest:latest sh "" "" busybox.tar marker-test-image-digest.tar
for i in 1 2 3; do mk $S/test-image-$i:latest sh "" "" busybox.tar marker-test-image-$i.tar; done
mk $S/test-image-tags:1 sh "" "" busybox.tar marker-test-image-tags.tar
tag $S/test-image-tags:1 2
tag $S/test-image-tags:1 3
mk $S/hostnet-nginx-amd64:latest "nginx,-g,daemon off;" "" "FAKEWEB_PORT=12003" busybox.tar nginx.tar
