#!/usr/bin/env bash
# run.sh — a one-node Kubernetes cluster (etcd, kube-apiserver, kubelet v1.37.2 from build.sh)
# in a network namespace of its own, on a private containerd with msb's runtime handler (the
# same setup as test/critest), and checks, all through kubectl, what a user does on day one:
#
#   runtimeclass   RuntimeClass msb with overhead.podFixed is admitted, and a pod naming it gets
#                  that overhead in its spec
#   pod-ready      a pod with an init container and four containers (runtimeClassName msb,
#                  bound with nodeName) gets Ready
#   one-vm         ...in one VM: one qemu, in the pod's cgroup below kubelet's
#   logs           kubectl logs of the init container and of a container
#   exec           kubectl exec (a command; stdin with -i; a shell on a tty with -it)
#   cp             kubectl cp into the pod and out of it
#   port-forward   kubectl port-forward to busybox httpd in the pod, fetched through it
#   attach         kubectl attach -i: a line reaches a running container's stdin (stdin: true)
#   emptydir-memory  an emptyDir of medium Memory (sizeLimit 16Mi) is a tmpfs of 16Mi in the
#                  container; a write there is read by a second container of the pod; under msb
#                  it is the pod VM's own tmpfs: kubelet's tmpfs on the host stays empty
#   hostpath       a hostPath directory: a file written on the host is read in the pod, and a
#                  file written in the pod lands on the host
#   downward-volume, downward-env  a downwardAPI volume (metadata.name, metadata.labels) and
#                  env from fieldRef (metadata.name, status.podIP)
#   refuse-hostnetwork, refuse-hostpid, refuse-hostipc  a hostNetwork, hostPID or hostIPC pod on
#                  msb fails its sandbox, and kubectl describe pod shows an event naming the host's
#                  namespace and the field (skipped under runc)
#   refuse-hostdevices  a privileged pod on a second msb handler without
#                  privileged_without_host_devices (msb-hostdev) gets no container: its event and
#                  container status name the host device nodes and the setting (skipped under runc)
#   configmap, secret  an update of a ConfigMap and of a Secret reaches the file mounted in the
#                  running pod within 90 s (kubelet's syncFrequency is 10 s here)
#   token-rotation a projected service-account token (expirationSeconds 600) is renewed by kubelet
#                  and the running pod reads the new one (about 8 minutes after the pod started;
#                  KUBE_TOKEN_ROTATION=0 skips it)
#   probes, liveness-restart, logs-previous, oom-killed  (the pod "probed")
#   resize-within-vm  kubectl patch --subresource resize (CPU up, memory down, NotRequired):
#                  the new limits reach the container's cgroup and the pod's status
#   resize-vm-memory-grow  a memory resize past the pod VM's size at start, within its headroom
#                  (resize_memory_factor, ADR 031): the container's cgroup, the guest's MemTotal and
#                  the VM's host cgroup limit grow, the same qemu runs, no container restarts
#   resize-past-vm-memory, resize-past-vm-cpu  a resize past the pod VM's headroom (memory) or its
#                  vCPUs is refused: kubelet's PodResizeInProgress condition has reason Error and
#                  msb's message naming the field, the old limits stay in the cgroup and the status
#                  (these three skipped under runc)
#   delete         kubectl delete pod leaves no qemu of the pod
#
# Each check prints "PASS name" or "FAIL name: what happened" ("SKIP name: why" for one that
# cannot hold on the handler by nature); the last line is
# "kube: N passed, N failed, N skipped (run S s)". Exit status 0 when all passed and cleanup.sh left
# nothing behind. Everything is torn down
# at the end (cleanup.sh; also on failure or interrupt) unless KUBE_KEEP=1.
# Logs: $KUBE_WORK/out/DATE/ (etcd.log, apiserver.log, kubelet.log, containerd.log, results.txt).
# Env: see common.sh; KUBE_KEEP; KUBE_HANDLER (default msb): the RuntimeClass's handler;
# runc is the baseline, where the VM checks (one-vm, refuse-host*, resize-*vm-memory*) are
# skipped and every other check passes.
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

# A second msb handler as a node without install.sh's privileged_without_host_devices has it:
# containerd hands a privileged container there every host device node (refuse-hostdevices).
export CRITEST_EXTRA_CONFIG="  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.msb-hostdev]
    runtime_type = 'io.containerd.msb.v2'
    sandboxer = 'podsandbox'
    privileged_without_host_devices = false"
CRITEST_LOGDIR=$OUT "$CRITEST_DIR/setup.sh"
"$KUBE_DIR/cluster.sh" "$KBIN" "$OUT"

passed=0
failed=0
pass() { echo "PASS $1" | tee -a "$OUT/results.txt"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2" | tee -a "$OUT/results.txt"; failed=$((failed + 1)); }
skipped=0
# skip NAME WHY: a check that cannot hold on this handler by nature (no VM under runc)
skip() { echo "SKIP $1: $2" | tee -a "$OUT/results.txt"; skipped=$((skipped + 1)); }
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

# ---- a pod: init container, four containers, an emptyDir they share, a ConfigMap, a Secret, a
# Memory emptyDir, a hostPath, a downward API volume and env; "att" reads its stdin (attach),
# "sized" has limits to resize in place
kc create configmap cfg --from-literal msg=v1 >/dev/null
kc create secret generic sec --from-literal msg=v1 >/dev/null
HOSTDIR=$KRUN/hostpath
mkdir -p "$HOSTDIR"
hin=from-host-$RANDOM
echo "$hin" >"$HOSTDIR/in.txt"
kc apply -f - >/dev/null <<Y
apiVersion: v1
kind: Pod
metadata: {name: multi, labels: {app: kube-test}}
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
    volumeMounts: [{name: shared, mountPath: /shared}, {name: mem, mountPath: /mem}]
  - name: side
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo side-started; while true; do sleep 5; done']
    env:
    - {name: MY_POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    volumeMounts:
    - {name: shared, mountPath: /shared}
    - {name: cfg, mountPath: /cfg}
    - {name: sec, mountPath: /sec}
    - {name: mem, mountPath: /mem}
    - {name: host, mountPath: /host}
    - {name: podinfo, mountPath: /podinfo}
    - {name: tok, mountPath: /tok}
  - name: att
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'while read l; do echo "got:\$l"; done']
    stdin: true
  - name: sized
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'while true; do sleep 5; done']
    resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 500m, memory: 128Mi}}
    resizePolicy: [{resourceName: cpu, restartPolicy: NotRequired}, {resourceName: memory, restartPolicy: NotRequired}]
  volumes:
  - {name: shared, emptyDir: {}}
  - {name: cfg, configMap: {name: cfg}}
  - {name: sec, secret: {secretName: sec}}
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
  - {name: host, hostPath: {path: "$HOSTDIR", type: Directory}}
  - name: podinfo
    downwardAPI:
      items:
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
  - name: tok
    projected:
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 600, audience: kube-test}
Y
# hostNetwork, hostPID and hostIPC pods on msb must be refused (checked below, while multi's VM
# boots meanwhile).
if [[ $HANDLER == msb ]]; then
	for host in hostNetwork hostPID hostIPC; do
		kc apply -f - >/dev/null <<Y
apiVersion: v1
kind: Pod
metadata: {name: ${host,,}}
spec:
  nodeName: $NODE
  runtimeClassName: msb
  $host: true
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: $IMAGE, imagePullPolicy: Never, command: [sleep, "3600"]}
Y
	done
fi
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
if [[ $HANDLER == msb ]]; then
	check one-vm "1 1" "$(qemus "/pod$uid/" | wc -l) $(qemus "/$CG_ROOT/" | wc -l)"
	# a privileged pod on a second msb handler (refuse-hostdevices, checked below), made once
	# one-vm has counted the node's VMs: its sandbox's VM boots meanwhile
	kc apply -f - >/dev/null <<Y
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: msb-hostdev}
handler: msb-hostdev
---
apiVersion: v1
kind: Pod
metadata: {name: hostdev}
spec:
  nodeName: $NODE
  runtimeClassName: msb-hostdev
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: $IMAGE, imagePullPolicy: Never, command: [sleep, "3600"], securityContext: {privileged: true}}
Y
else
	skip one-vm "handler $HANDLER runs no VM"
fi

# ---- logs, exec, cp
tok0=$(kc exec multi -c side -- cat /tok/token 2>/dev/null) || true
tok0_at=$(date +%s)
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

# ---- attach: a line sent through kubectl attach -i reaches the container's stdin; it answers
# in its log ("got:LINE"). kubectl is stopped once the answer is there.
line=attach-$RANDOM
{
	echo "$line"
	sleep 15
} | timeout 60 nsenter --net="$NETNS_PATH" -- "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_" attach -i multi -c att >"$OUT/attach.log" 2>&1 &
at=$!
got=
for _ in $(seq 60); do
	got=$(kc logs multi -c att 2>/dev/null | grep -x "got:$line") && break
	sleep 0.5
done
kill "$at" 2>/dev/null
wait "$at" 2>/dev/null || true
check attach "got:$line" "$got"

# ---- volumes: emptyDir medium Memory shared by two containers, hostPath both ways, downward API
# (kubelet mounts a tmpfs on the host, size= its sizeLimit; msb gives the pod VM a tmpfs of the
# guest of that size instead, one for all the pod's containers, and shares nothing of the host's
# (ADR 032): under msb the host's tmpfs stays empty, under runc it holds the file)
memfs=$(kc exec multi -c side -- sh -c 'echo mem-shared >/mem/f && awk "\$2 == \"/mem\" {print \$3, \$4}" /proc/mounts' 2>&1) || true
memdir=$KUBELET_ROOT/pods/$uid/volumes/kubernetes.io~empty-dir/mem
memhost=$(findmnt -n -o FSTYPE --mountpoint "$memdir" 2>&1) || true
got=$(kc exec multi -c web -- cat /mem/f 2>&1) || true
onhost=$([[ -e $memdir/f ]] && echo on-host || echo not-on-host)
wanthost=not-on-host
[[ $HANDLER == msb ]] || wanthost=on-host
if [[ $got == mem-shared && $memfs == "tmpfs "*size=16384k* && $memhost == tmpfs && $onhost == "$wanthost" ]]; then
	pass "emptydir-memory (a tmpfs of 16Mi in the container, read by a second container; the host's tmpfs: $onhost)"
else
	fail emptydir-memory "want mem-shared read by the second container, a tmpfs of size=16384k at /mem, kubelet's tmpfs on the host and the file $wanthost; got '$got', /mem '$memfs', host '$memhost', $onhost"
fi
hout=from-pod-$RANDOM
kc exec multi -c side -- sh -c "echo $hout >/host/out.txt" >/dev/null 2>&1 || true
check hostpath "$hin $hout" "$(kc exec multi -c side -- cat /host/in.txt 2>&1) $(cat "$HOSTDIR/out.txt" 2>&1)"
check downward-volume 'multi app="kube-test"' "$(kc exec multi -c side -- sh -c 'cat /podinfo/name; echo " $(cat /podinfo/labels)"' 2>&1)"
check downward-env "multi $(kc get pod multi -o jsonpath='{.status.podIP}')" "$(kc exec multi -c side -- sh -c 'echo $MY_POD_NAME $MY_POD_IP' 2>&1)"

# ---- refusals: the hostNetwork, hostPID and hostIPC pods made above fail their sandbox, and
# kubectl describe says why (the field to drop and what the host's namespace would mean)
if [[ $HANDLER == msb ]]; then
	for want in "hostnetwork|host network|hostNetwork" "hostpid|host's PID namespace|hostPID" "hostipc|host's IPC namespace|hostIPC"; do
		IFS='|' read -r pod what field <<<"$want"
		ev=
		for _ in $(seq 60); do
			ev=$(kc describe pod "$pod" 2>&1 | grep FailedCreatePodSandBox) && break
			sleep 1
		done
		if grep -qi "$what" <<<"$ev" && grep -q "$field" <<<"$ev"; then
			pass "refuse-$pod ($(grep -o "$what[^:]*" <<<"$ev" | head -1))"
		else
			fail "refuse-$pod" "no FailedCreatePodSandBox event naming $what and $field in kubectl describe pod $pod: '$(head -c 400 <<<"$ev")'"
			kc describe pod "$pod" >"$OUT/describe-$pod.txt" 2>&1
		fi
		kc delete pod "$pod" --timeout 60s >/dev/null 2>&1 || true
	done
	# a privileged pod on a handler without privileged_without_host_devices: containerd lists
	# every host device node in its container's spec, which msb refuses when the container
	# starts; kubelet's event and the container's state (RunContainerError waiting, StartError
	# terminated) say so and name the setting
	ev= st= hdst=
	for f in state.waiting state.terminated lastState.terminated; do
		hdst+="{.status.containerStatuses[0].$f.reason}: {.status.containerStatuses[0].$f.message}{\"\\n\"}"
	done
	for _ in $(seq 90); do
		ev=$(kc get events --field-selector involvedObject.name=hostdev -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' 2>&1 | grep "host device nodes" | head -1) || true
		st=$(kc get pod hostdev -o jsonpath="$hdst" 2>&1 | grep "host device nodes" | head -1) || true
		[[ -n $ev && -n $st ]] && break
		sleep 1
	done
	if grep -q "privileged_without_host_devices = true" <<<"$ev" && grep -q "privileged_without_host_devices = true" <<<"$st"; then
		pass "refuse-hostdevices (event ${ev%%:*}, container ${st%%:*}: $(grep -o "linux.devices: [0-9]* host device nodes" <<<"$ev" | head -1))"
	else
		fail refuse-hostdevices "no event and container status naming host device nodes and privileged_without_host_devices for pod hostdev: event '$(head -c 400 <<<"$ev")', status '$(head -c 300 <<<"$st")'"
		kc describe pod hostdev >"$OUT/describe-hostdev.txt" 2>&1
	fi
	kc delete pod hostdev --timeout 60s >/dev/null 2>&1 || true
else
	skip refuse-hostnetwork "handler $HANDLER runs host-network pods"
	skip refuse-hostpid "handler $HANDLER runs hostPID pods"
	skip refuse-hostipc "handler $HANDLER runs hostIPC pods"
	skip refuse-hostdevices "handler $HANDLER gives a privileged pod the host's devices"
fi

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
if [[ $HANDLER == msb ]]; then
	check liveness-restart "1 same-vm" "$restarts $([[ -n $vm_before && $(qemus "/pod$puid/") == "$vm_before" ]] && echo same-vm || echo "vm '$vm_before' now '$(qemus "/pod$puid/")'")"
else
	check liveness-restart 1 "$restarts" # no VM to stay the same
fi
check logs-previous run-0 "$(kc logs probed -c live --previous 2>&1)"
reason=
for _ in $(seq 60); do
	reason=$(kc get pod probed -o jsonpath='{.status.containerStatuses[?(@.name=="oom")].lastState.terminated.reason}')
	[[ -n $reason ]] && break
	sleep 2
done
check oom-killed OOMKilled "$reason"
kc delete pod probed --timeout 120s >/dev/null 2>&1 || true

# ---- in-place resize of "sized" (limits 500m, 128Mi; its VM: 1 vCPU, 256 MiB of which 128 MiB
# the guest's own, overhead_mib, growing to 512 MiB: resize_memory_factor 2): within the VM the new
# limits reach the container's cgroup and its status; the VM's memory follows the container's
# limit within its headroom (ADR 031); past it, or past its vCPUs, msb refuses the update and
# kubelet shows the resize as failed (condition PodResizeInProgress, reason Error, the runtime's
# message), the old limits staying.
# cg: the memory limit and the CPU quota in the container's cgroup: v2 in msb's guest (at the
# container's path below /sys/fs/cgroup where the container has no cgroup namespace, as on a v1
# host's containerd), v1 under runc on these hosts; lim: the limits in the pod's status; rcond:
# the resize conditions
cg() {
	kc exec multi -c sized -- sh -c '
		d=/sys/fs/cgroup; p=$(sed -n "s/^0:://p" /proc/self/cgroup)
		[ -e $d/memory.max ] || d=$d$p
		if [ -e $d/memory.max ]; then echo $(cat $d/memory.max) $(cut -d" " -f1 $d/cpu.max)
		elif [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
			echo $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
		else echo "no cgroup files: $(cat /proc/self/cgroup | tr "\n" " ") $(ls /sys/fs/cgroup | tr "\n" " ")"; fi' 2>&1
}
lim() { kc get pod multi -o jsonpath='{.status.containerStatuses[?(@.name=="sized")].resources.limits.memory} {.status.containerStatuses[?(@.name=="sized")].resources.limits.cpu}'; }
rcond() { kc get pod multi -o jsonpath='{range .status.conditions[?(@.type=="PodResizePending")]}{.type}/{.reason}: {.message}{end}{range .status.conditions[?(@.type=="PodResizeInProgress")]}{.type}/{.reason}: {.message}{end}'; }
resize() {
	kc patch pod multi --subresource resize -p "{\"spec\":{\"containers\":[{\"name\":\"sized\",\"resources\":{\"limits\":{\"cpu\":\"$1\",\"memory\":\"$2\"}}}]}}" >/dev/null 2>&1
}
kc exec multi -c sized -- cat /proc/self/cgroup >"$OUT/sized-cgroup.txt" 2>&1 || true
check resize-start "128Mi 500m 134217728 50000" "$(lim) $(cg)"
resize 800m 96Mi
for _ in $(seq 60); do
	[[ $(lim) == "96Mi 800m" && -z $(rcond) ]] && break
	sleep 1
done
check resize-within-vm "96Mi 800m 100663296 80000 ''" "$(lim) $(cg) '$(rcond)'"
# past_vm NAME CPU MEMORY FIELD WHY OLD: a resize to CPU/MEMORY is refused naming FIELD and
# WHY (the memory refusal comes first: kubelet resizes memory before CPU and stops at an error),
# the OLD limits (status and cgroup) stay
past_vm() {
	local rc=
	resize "$2" "$3"
	for _ in $(seq 60); do
		rc=$(rcond | tr '\n' ' ') || true
		[[ $rc == */Error:*"$4"* ]] && break
		sleep 1
	done
	echo "$1: $rc" >>"$OUT/resize-past-vm.txt"
	if [[ $rc == PodResizeInProgress/Error:*"$4"*"$5"* ]] && [[ "$(lim) $(cg)" == "$6" ]]; then
		pass "$1 (PodResizeInProgress/Error: $(grep -o "$4[^:]*" <<<"$rc" | head -1))"
	else
		fail "$1" "want condition PodResizeInProgress/Error naming $4 and $5, old limits '$6' kept; got '$rc', status and cgroup '$(lim) $(cg)'"
	fi
}
# vmmem: the pod VM's memory in MiB as its guest sees it (MemTotal) and its host cgroup's limit
# (the qemu's memory cgroup, v1 as on these hosts)
vmmem() {
	local q p
	q=$(qemus "/pod$uid/" | head -1)
	p=$(sed -n 's/^[0-9]*:memory://p' "/proc/$q/cgroup")
	echo "$(kc exec multi -c sized -- awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) $(($(cat "/sys/fs/cgroup/memory$p/memory.limit_in_bytes") >> 20))"
}
restarts() { kc get pod multi -o jsonpath='{.status.containerStatuses[?(@.name=="sized")].restartCount}'; }
if [[ $HANDLER == msb ]]; then
	# 96Mi made the VM 224 MiB (down by 32); 300Mi grows it by 204 to 428 MiB, past its 256 at
	# start and within its 512.
	read -r mt0 hl0 <<<"$(vmmem)"
	vm0=$(qemus "/pod$uid/") rs0=$(restarts)
	resize 800m 300Mi
	for _ in $(seq 60); do
		[[ $(lim) == "300Mi 800m" && -z $(rcond) ]] && break
		sleep 1
	done
	for _ in $(seq 30); do # the guest takes the balloon's memory back within a second or two
		read -r mt1 hl1 <<<"$(vmmem)"
		((mt1 - mt0 >= 195)) && break
		sleep 1
	done
	echo "MemTotal $mt0 -> $mt1 MiB, host cgroup limit $hl0 -> $hl1 MiB" >"$OUT/resize-vm-memory.txt"
	grown=$((mt1 - mt0 >= 195 && mt1 - mt0 <= 210))
	check resize-vm-memory-grow "300Mi 800m 314572800 80000 '' MemTotal+1 host+204 qemu $vm0 restarts $rs0" \
		"$(lim) $(cg) '$(rcond)' MemTotal+$grown host+$((hl1 - hl0)) qemu $(qemus "/pod$uid/") restarts $(restarts)"
	past_vm resize-past-vm-memory 800m 1Gi linux.resources.memory.limit resize_memory_factor "300Mi 800m 314572800 80000"
	past_vm resize-past-vm-cpu 2 300Mi linux.resources.cpu.quota "more than the VM" "300Mi 800m 314572800 80000"
else
	skip resize-vm-memory "handler $HANDLER has no VM size"
fi

# ---- a projected service-account token rotates in the running pod: kubelet renews it at 80 %
# of its lifetime (expirationSeconds 600, the API server's least: about 8 minutes) and swaps it
# in with the volume's ..data link, as for a ConfigMap; the guest must see the new file.
# KUBE_TOKEN_ROTATION=0 skips the wait (about 6 minutes after the checks above).
if [[ ${KUBE_TOKEN_ROTATION:-1} == 1 ]]; then
	tok=$tok0
	while [[ -n $tok0 && $tok == "$tok0" ]] && (($(date +%s) - tok0_at < 660)); do
		sleep 10
		tok=$(kc exec multi -c side -- cat /tok/token 2>/dev/null) || tok=$tok0
	done
	if [[ -n $tok0 && $tok != "$tok0" ]]; then
		pass "token-rotation (a new token in the pod $(($(date +%s) - tok0_at)) s after the first was read)"
	else
		fail token-rotation "want a new token within 660 s; got '${tok0:0:12}…' unchanged after $(($(date +%s) - tok0_at)) s"
	fi
else
	skip token-rotation "KUBE_TOKEN_ROTATION=0"
fi

# ---- a kubelet restart: kubelet finds its running pod again (the same VM,
# no container restarted) and serves exec and logs for it
kpid=$(cat "$KRUN/kubelet.pid")
mapfile -d '' kargs <"/proc/$kpid/cmdline"
vm_before=$(qemus "/pod$uid/")
rc_before=$(kc get pod multi -o jsonpath='{.status.containerStatuses[*].restartCount}')
kill "$kpid"
for _ in $(seq 60); do
	kill -0 "$kpid" 2>/dev/null || break
	sleep 0.5
done
nsenter --net="$NETNS_PATH" -- setsid "${kargs[@]}" >>"$OUT/kubelet.log" 2>&1 </dev/null &
echo $! >"$KRUN/kubelet.pid"
got=""
for _ in $(seq 90); do
	got=$(kc exec multi -c side -- cat /shared/index.html 2>/dev/null) && [[ -n $got ]] && break
	sleep 1
done
rc_after=$(kc get pod multi -o jsonpath='{.status.containerStatuses[*].restartCount}')
check kubelet-restart "hello-from-init same-vm $rc_before side-started" \
	"$got $([[ $(qemus "/pod$uid/") == "$vm_before" ]] && echo same-vm || echo "vm '$vm_before' now '$(qemus "/pod$uid/")'") $rc_after $(kc logs multi -c side 2>&1 | grep -o side-started | head -1)"

# ---- delete: the VM goes
kc delete pod multi --timeout 120s >/dev/null 2>&1 || true
for _ in $(seq 60); do
	[[ -z $(qemus "/pod$uid/") ]] && break
	sleep 1
done
check delete "0 qemu" "$(qemus "/pod$uid/" | wc -l) qemu"

echo "kube: $passed passed, $failed failed, $skipped skipped (run $(($(date +%s) - t0)) s)" | tee -a "$OUT/results.txt"
((failed == 0))
