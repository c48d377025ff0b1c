#!/usr/bin/env bash
# cluster.sh KUBE-BIN-DIR LOGDIR — start a one-node cluster in the msb-kube network namespace,
# which test/critest/setup.sh has made with its containerd (handlers runc and msb, CNI bridge):
# etcd, kube-apiserver and kubelet (the binaries of build.sh), with certificates and
# service-account keys made here by openssl. Undo it with cleanup.sh.
#
# - The netns gets an interface (msbk0, a veth pair in it) with $NODE_IP: kubelet refuses a loopback node IP, and the
#   API server reaches the kubelet at that InternalIP (and advertises it, so its endpoint
#   reconciler is not needed: --endpoint-reconciler-type=none all the same, nothing else runs).
# - kubelet: cgroupfs driver like the test's containerd, failCgroupV1: false (these hosts are
#   cgroup v1), cgroupRoot /$CG_ROOT, its own root dir, cert dir and pod log dir, syncFrequency
#   10s, 2 dead containers kept per container (not 1): kubelet's container GC (every minute)
#   counts a restarted container that is created but not yet started as dead, and with 1 it can
#   remove the previous instance in that window, so `kubectl logs --previous` finds nothing (msb
#   starts a container in its pod VM in about a second, which widens the window). Its device
#   plugin socket stays /var/lib/kubelet/device-plugins/kubelet.sock (a fixed path; cleanup.sh
#   removes it).
# - No scheduler or controller manager: pods are bound with nodeName; the default
#   ServiceAccount and the kube-root-ca.crt ConfigMap (which the controller manager would make)
#   are made here.
# - install.sh's busybox image is imported into containerd's k8s.io namespace as $IMAGE.
set -euo pipefail
source "$(dirname "$0")/common.sh"
KBIN=${1:?usage: cluster.sh KUBE-BIN-DIR LOGDIR}
LOGDIR=${2:?usage: cluster.sh KUBE-BIN-DIR LOGDIR}
IMAGE_TAR=${MSB_BUSYBOX_IMAGE:-/var/cache/msb/busybox-image.tar}
[[ -s $IMAGE_TAR ]] || die "no busybox image at $IMAGE_TAR (install.sh writes it)"
[[ -e $NETNS_PATH ]] || die "no netns $CRITEST_NETNS: run test/critest/setup.sh first"
mkdir -p "$KRUN" "$LOGDIR"

# start NAME CMD...: run CMD in the netns, in a session of its own, logging to LOGDIR/NAME.log
# (nsenter and setsid exec: the pid kept is the program's own).
start() {
	local name=$1
	shift
	nsenter --net="$NETNS_PATH" -- setsid "$@" >"$LOGDIR/$name.log" 2>&1 </dev/null &
	echo $! >"$KRUN/$name.pid"
}
# waitfor WHAT SECONDS PIDFILE CMD...: poll CMD until it succeeds; fail when the process dies.
waitfor() {
	local what=$1 secs=$2 pidf=$3 i
	shift 3
	for ((i = 0; i < secs * 2; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		alive "$pidf" || die "$what died; see its log in $LOGDIR"
		sleep 0.5
	done
	die "$what not ready after ${secs}s; see its log in $LOGDIR"
}

log "node address $NODE_IP (interface msbk0 in $CRITEST_NETNS)"
# (a veth pair with both ends in the netns: the kernel here has no dummy links)
ip -n "$CRITEST_NETNS" link add msbk0 type veth peer name msbk1
ip -n "$CRITEST_NETNS" addr add "$NODE_IP/24" dev msbk0
ip -n "$CRITEST_NETNS" link set msbk1 up
ip -n "$CRITEST_NETNS" link set msbk0 up

log "certificates and service-account keys"
(
	cd "$KRUN"
	o() { openssl "$@" 2>/dev/null; }
	o req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=msb-kube-ca
	# cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA
	cert() {
		o req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
		printf '%s\n' "$3" >"$1.ext"
		o x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.crt"
	}
	cert apiserver /CN=kube-apiserver \
		"subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
	cert admin "/O=system:masters/CN=msb-kube-admin" "extendedKeyUsage=clientAuth"
	o genrsa -out sa.key 2048
	o rsa -in sa.key -pubout -out sa.pub
) || die "openssl failed to make the certificates"
cat >"$KUBECONFIG_" <<K
apiVersion: v1
kind: Config
clusters:
- name: msb-kube
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$KRUN/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$KRUN/admin.crt", client-key: "$KRUN/admin.key"}
contexts:
- name: msb-kube
  context: {cluster: msb-kube, user: admin}
current-context: msb-kube
K

log "etcd"
start etcd "$KBIN/etcd" --name default --data-dir "$KRUN/etcd" --unsafe-no-fsync \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster default=http://127.0.0.1:2380
waitfor etcd 60 "$KRUN/etcd.pid" innetns curl -sf http://127.0.0.1:2379/health

log "kube-apiserver"
start apiserver "$KBIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
	--bind-address 0.0.0.0 --secure-port 6443 --advertise-address "$NODE_IP" \
	--endpoint-reconciler-type none --service-cluster-ip-range 10.96.0.0/24 \
	--client-ca-file "$KRUN/ca.crt" --tls-cert-file "$KRUN/apiserver.crt" --tls-private-key-file "$KRUN/apiserver.key" \
	--service-account-issuer https://kubernetes.default.svc --service-account-key-file "$KRUN/sa.pub" \
	--service-account-signing-key-file "$KRUN/sa.key" --authorization-mode AlwaysAllow \
	--kubelet-client-certificate "$KRUN/admin.crt" --kubelet-client-key "$KRUN/admin.key" \
	--kubelet-preferred-address-types InternalIP --allow-privileged --cert-dir "$KRUN/apiserver-certs"
waitfor kube-apiserver 180 "$KRUN/apiserver.pid" innetns "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_" get --raw /readyz

log "kubelet"
for h in /sys/fs/cgroup/*/; do
	[[ $h == */unified/ ]] && continue
	mkdir -p "$h$CG_ROOT"
	if [[ -e $h/cpuset.cpus ]]; then
		cat "$h/cpuset.cpus" >"$h$CG_ROOT/cpuset.cpus"
		cat "$h/cpuset.mems" >"$h$CG_ROOT/cpuset.mems"
	fi
done
mkdir -p "$KUBELET_ROOT" "$POD_LOGS"
cat >"$KRUN/kubelet.yaml" <<Y
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CG_ROOT
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
podLogsDir: $POD_LOGS
failSwapOn: false
readOnlyPort: 0
syncFrequency: 10s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$KRUN/ca.crt"}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
Y
start kubelet "$KBIN/kubelet" --config "$KRUN/kubelet.yaml" --kubeconfig "$KUBECONFIG_" \
	--root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" --hostname-override "$NODE" --node-ip "$NODE_IP" --v 2 \
	--maximum-dead-containers-per-container 2
waitfor "kubelet (node $NODE Ready)" 180 "$KRUN/kubelet.pid" \
	innetns "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_" wait --for condition=Ready "node/$NODE" --timeout 2s

log "image $IMAGE, the default ServiceAccount and kube-root-ca.crt"
snap=$(sed -n "s/^[[:space:]]*snapshotter = '\(.*\)'/\1/p" "$RUN/config.toml")
ctr -a "$SOCK" -n k8s.io images import --snapshotter "${snap:-overlayfs}" "$IMAGE_TAR" >"$LOGDIR/import.log" 2>&1 ||
	die "importing $IMAGE_TAR failed: $LOGDIR/import.log"
innetns "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_" create serviceaccount default >/dev/null
innetns "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_" create configmap kube-root-ca.crt --from-file "ca.crt=$KRUN/ca.crt" >/dev/null
log "cluster up: kubectl --kubeconfig $KUBECONFIG_ (in netns $CRITEST_NETNS)"
