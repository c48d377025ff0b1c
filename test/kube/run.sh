#!/usr/bin/env bash
# run.sh — a one-node Kubernetes cluster (etcd, kube-apiserver, kubelet v1.37.2 from build.sh)
# in a network namespace of its own, on a private containerd with msb's runtime handler (the
# same setup as test/critest), and checks, all through kubectl, what a user does on day one:
#
#   runtimeclass   RuntimeClass msb with overhead.podFixed is admitted, and a pod naming it gets
#                  that overhead in its spec
#   pod-ready      a pod with an init container and two containers (runtimeClassName msb,
#                  bound with nodeName) gets Ready
#   one-vm         ...in one VM: one qemu, in the pod's cgroup below kubelet's
#   logs           kubectl logs of the init container and of a container
#   exec           kubectl exec (a command; stdin with -i; a shell on a tty with -it)
#   cp             kubectl cp into the pod and out of it
#   port-forward   kubectl port-forward to busybox httpd in the pod, fetched through it
#   configmap, secret  an update of a ConfigMap and of a Secret reaches the file mounted in the
#                  running pod within 90 s (kubelet's syncFrequency is 10 s here)
#   delete         kubectl delete pod leaves no qemu of the pod
#
# Each check prints "PASS name" or "FAIL name: what happened"; the last line is
# "kube: N passed, N failed (run S s)". Exit status 0 when all passed and cleanup.sh left
# nothing behind. Everything is torn down
# at the end (cleanup.sh; also on failure or interrupt) unless KUBE_KEEP=1.
# Logs: $KUBE_WORK/out/DATE/ (etcd.log, apiserver.log, kubelet.log, containerd.log, results.txt).
# Env: see common.sh; KUBE_KEEP; KUBE_HANDLER (default msb): the RuntimeClass's handler;
# runc is the baseline, where one-vm fails (no VM) and every other check passes.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[[ $(id -u) == 0 ]] || die "run as root (network namespaces, mounts, cgroups, containerd)"
OUT=$KUBE_WORK/out/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

KBIN=$("$KUBE_DIR/build.sh")
"$CRITEST_DIR/build-tools.sh"
t0=$(date +%s)

cleaned=0
cleanup() {
	((cleaned)) && return 0
	cleaned=1
	if [[ ${KUBE_KEEP:-} == 1 ]]; then
		log "KUBE_KEEP=1: left up; kubectl: $KBIN/kubectl --kubeconfig $KUBECONFIG_ in netns $CRITEST_NETNS; undo with $KUBE_DIR/cleanup.sh"
		return 0
	fi
	cp "$RUN/config.toml" "$OUT/containerd-config.toml" 2>/dev/null
	"$KUBE_DIR/cleanup.sh" || { log "cleanup left something behind"; return 1; }
}
trap 'cleanup || exit 1' EXIT
trap 'exit 130' INT TERM

CRITEST_LOGDIR=$OUT "$CRITEST_DIR/setup.sh"
"$KUBE_DIR/cluster.sh" "$KBIN" "$OUT"

passed=0
failed=0
pass() { echo "PASS $1" | tee -a "$OUT/results.txt"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2" | tee -a "$OUT/results.txt"; failed=$((failed + 1)); }
# check NAME WANT GOT: pass when GOT is WANT
check() { if [[ $3 == "$2" ]]; then pass "$1"; else fail "$1" "want '$2', got '$3'"; fi; }
# qemus CGROUP-PART: the pids of qemu processes whose memory cgroup path holds CGROUP-PART
qemus() {
	local d
	for d in /proc/[0-9]*; do
		[[ $(cat "$d/comm" 2>/dev/null) == qemu* ]] || continue
		grep -q ":memory:.*$1" "$d/cgroup" 2>/dev/null && echo "${d#/proc/}"
	done
	return 0
}

log "versions: $(kc version 2>&1 | tr '\n' ' ')node: $(kc get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}')"

# ---- RuntimeClass with overhead
HANDLER=${KUBE_HANDLER:-msb}
kc apply -f - >/dev/null <<Y
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: msb}
handler: $HANDLER
overhead:
  podFixed: {memory: "360Mi", cpu: "100m"}
Y
check runtimeclass "$HANDLER 360Mi 100m" "$(kc get runtimeclass msb -o jsonpath='{.handler} {.overhead.podFixed.memory} {.overhead.podFixed.cpu}')"

# ---- a pod: init container, two containers, an emptyDir they share, a ConfigMap, a Secret
kc create configmap cfg --from-literal msg=v1 >/dev/null
kc create secret generic sec --from-literal msg=v1 >/dev/null
kc apply -f - >/dev/null <<Y
apiVersion: v1
kind: Pod
metadata: {name: multi}
spec:
  nodeName: $NODE
  runtimeClassName: msb
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: init
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo init-ran; echo hello-from-init >/shared/index.html']
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: web
    image: $IMAGE
    imagePullPolicy: Never
    command: [httpd, -f, -p, "8080", -h, /shared]
    volumeMounts: [{name: shared, mountPath: /shared}]
  - name: side
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo side-started; while true; do sleep 5; done']
    volumeMounts: [{name: shared, mountPath: /shared}, {name: cfg, mountPath: /cfg}, {name: sec, mountPath: /sec}]
  volumes:
  - {name: shared, emptyDir: {}}
  - {name: cfg, configMap: {name: cfg}}
  - {name: sec, secret: {secretName: sec}}
Y
check overhead "360Mi 100m" "$(kc get pod multi -o jsonpath='{.spec.overhead.memory} {.spec.overhead.cpu}')"
t=$(date +%s)
if kc wait --for condition=Ready pod/multi --timeout 300s >/dev/null 2>&1; then
	pass "pod-ready ($(($(date +%s) - t)) s)"
else
	fail pod-ready "not Ready in 300 s: $(kc get pod multi -o jsonpath='{.status.phase} {.status.containerStatuses[*].state}')"
	kc describe pod multi >"$OUT/describe-multi.txt" 2>&1
	exit 1
fi
uid=$(kc get pod multi -o jsonpath='{.metadata.uid}')
check one-vm "1 1" "$(qemus "/pod$uid/" | wc -l) $(qemus "/$CG_ROOT/" | wc -l)"

# ---- logs, exec, cp
check logs "init-ran side-started" "$(kc logs multi -c init) $(kc logs multi -c side)"
check exec "hello-from-init multi" "$(kc exec multi -c side -- cat /shared/index.html) $(kc exec multi -c web -- hostname)"
check exec-stdin "through-stdin" "$(echo through-stdin | kc exec -i multi -c side -- cat)"
# -it: script gives kubectl a tty; the shell in the pod says which tty it has
tty_out=$(printf 'tty; exit\n' | timeout 60 nsenter --net="$NETNS_PATH" -- script -qfec \
	"$KBIN/kubectl --kubeconfig $KUBECONFIG_ exec -it multi -c side -- sh" /dev/null 2>&1 | tr -d '\r') || true
if grep -q '^/dev/pts/' <<<"$tty_out"; then pass exec-tty; else fail exec-tty "no /dev/pts/N from tty: $(head -c 300 <<<"$tty_out")"; fi
up=cp-up-$RANDOM
echo "$up" >"$KRUN/up.txt"
kc cp "$KRUN/up.txt" multi:/tmp/up.txt -c side >/dev/null 2>&1 || true
check cp-in "$up" "$(kc exec multi -c side -- cat /tmp/up.txt 2>&1)"
kc cp multi:/shared/index.html "$KRUN/down.txt" -c side >/dev/null 2>&1 || true
check cp-out hello-from-init "$(cat "$KRUN/down.txt" 2>&1)"

# ---- port-forward (nsenter execs kubectl: $! is kubectl's pid)
nsenter --net="$NETNS_PATH" -- "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_" port-forward pod/multi 18080:8080 >"$OUT/port-forward.log" 2>&1 &
pf=$!
got=
for _ in $(seq 60); do
	got=$(innetns curl -sf --max-time 10 http://127.0.0.1:18080/index.html 2>/dev/null) && break
	sleep 0.5
done
kill "$pf" 2>/dev/null
wait "$pf" 2>/dev/null || true
check port-forward hello-from-init "$got"

# ---- ConfigMap and Secret updates reach the running pod
# update NAME KIND VOLUME-PLUGIN DIR: KIND (configmap or secret) NAME, mounted at DIR in the pod
# (msg=v1), is set to msg=v2; the pod must read v2 within 90 s. Where it does not, the host's
# file (kubelet's) and both listings go to OUT/NAME-diag.txt.
update() {
	local name=$1 kind=$2 plugin=$3 dir=$4 t host_t= guest= hostdir
	check "$kind-v1" v1 "$(kc exec multi -c side -- cat "$dir/msg" 2>&1)"
	kc create "$kind" $([[ $kind == secret ]] && echo generic) "$name" --from-literal msg=v2 --dry-run=client -o yaml |
		kc replace -f - >/dev/null
	t=$(date +%s)
	hostdir=$KUBELET_ROOT/pods/$uid/volumes/kubernetes.io~$plugin/$name
	while (($(date +%s) - t < 90)); do
		[[ -z $host_t && $(cat "$hostdir/msg" 2>/dev/null) == v2 ]] && host_t=$(($(date +%s) - t))
		guest=$(kc exec multi -c side -- cat "$dir/msg" 2>&1) || true
		[[ $guest == v2 ]] && break
		sleep 2
	done
	if [[ $guest == v2 ]]; then
		pass "$kind-update (in the pod after $(($(date +%s) - t)) s)"
		return
	fi
	fail "$kind-update" "after 90 s the pod reads '$guest'; kubelet's file on the host: '$(cat "$hostdir/msg" 2>&1)' (v2 after ${host_t:-never} s)"
	{
		echo "# host: ls -la $hostdir $hostdir/..data/"
		ls -la "$hostdir" "$hostdir/..data/"
		echo "# pod: ls -la $dir/ $dir/..data/"
		kc exec multi -c side -- ls -la "$dir/" "$dir/..data/"
	} >"$OUT/$name-diag.txt" 2>&1
}
update cfg configmap configmap /cfg
update sec secret secret /sec

# ---- probes: a failing liveness probe restarts the container in the same VM; logs --previous;
# an OOM kill shows as the reason
kc apply -f - >/dev/null <<Y
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  nodeName: $NODE
  runtimeClassName: msb
  terminationGracePeriodSeconds: 2
  containers:
  - name: live
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo run-\$(cat /shared/n 2>/dev/null || echo 0); echo 1 >/shared/n; touch /tmp/alive; httpd -p 8081 -h /shared; while true; do sleep 1; done']
    volumeMounts: [{name: shared, mountPath: /shared}]
    livenessProbe: {exec: {command: [cat, /tmp/alive]}, periodSeconds: 2, timeoutSeconds: 10, failureThreshold: 1}
    readinessProbe: {httpGet: {path: /n, port: 8081}, periodSeconds: 2, timeoutSeconds: 10}
    startupProbe: {tcpSocket: {port: 8081}, periodSeconds: 1, failureThreshold: 30}
  - name: oom
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo filling; sleep 3; head -c 200m /dev/zero | tail >/dev/null']
    resources: {limits: {memory: 64Mi}}
  volumes:
  - {name: shared, emptyDir: {}}
Y
if kc wait --for condition=Ready pod/probed --timeout 300s >/dev/null 2>&1; then
	pass "probes-ready (startup TCP, readiness HTTP)"
else
	fail probes-ready "not Ready in 300 s: $(kc get pod probed -o jsonpath='{.status.containerStatuses[*].state}')"
fi
puid=$(kc get pod probed -o jsonpath='{.metadata.uid}')
vm_before=$(qemus "/pod$puid/")
kc exec probed -c live -- rm /tmp/alive >/dev/null 2>&1 || true
restarts=
for _ in $(seq 60); do
	restarts=$(kc get pod probed -o jsonpath='{.status.containerStatuses[?(@.name=="live")].restartCount}')
	[[ ${restarts:-0} -ge 1 ]] && break
	sleep 2
done
check liveness-restart "1 same-vm" "$restarts $([[ -n $vm_before && $(qemus "/pod$puid/") == "$vm_before" ]] && echo same-vm || echo "vm '$vm_before' now '$(qemus "/pod$puid/")'")"
check logs-previous run-0 "$(kc logs probed -c live --previous 2>&1)"
reason=
for _ in $(seq 60); do
	reason=$(kc get pod probed -o jsonpath='{.status.containerStatuses[?(@.name=="oom")].lastState.terminated.reason}')
	[[ -n $reason ]] && break
	sleep 2
done
check oom-killed OOMKilled "$reason"
kc delete pod probed --timeout 120s >/dev/null 2>&1 || true

# ---- delete: the VM goes
kc delete pod multi --timeout 120s >/dev/null 2>&1 || true
for _ in $(seq 60); do
	[[ -z $(qemus "/pod$uid/") ]] && break
	sleep 1
done
check delete "0 qemu" "$(qemus "/pod$uid/" | wc -l) qemu"

echo "kube: $passed passed, $failed failed (run $(($(date +%s) - t0)) s)" | tee -a "$OUT/results.txt"
((failed == 0))
