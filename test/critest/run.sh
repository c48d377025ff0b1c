#!/usr/bin/env bash
# run.sh HANDLER [FOCUS] [SKIP] — run critest (the Kubernetes CRI validation suite, cri-tools
# v1.37.0) against the runtime handler HANDLER (msb or runc) of a private containerd, and check
# the failures against the expected list. FOCUS / SKIP: ginkgo regexes picking specs.
#
# It builds the tools (build-tools.sh, cached), sets up containerd and the registry in a
# network namespace of their own (setup.sh), runs critest in that namespace (its streaming
# clients dial containerd's 127.0.0.1 there), undoes everything (cleanup.sh, also on failure
# or interrupt), then prints the failing specs (expected, with the list's reason, or
# UNEXPECTED), the listed entries whose specs now pass, and as its last line
# "N passed, N failed, N skipped".
# Exit status: 0 when every failure is listed, 1 otherwise (or when cleanup left something),
# 2 when critest produced no report.
#
# Env (and those of common.sh):
#   CRITEST_EXPECTED  the expected-failures list (default: expected-failures.txt for msb,
#                     expected-failures-HANDLER.txt for other handlers, none if missing)
#   CRITEST_OUT       where the logs go (default $CRITEST_WORK/out/HANDLER-YYYYmmdd-HHMMSS):
#                     critest.log, report.json (ginkgo), specs.tsv, summary.txt, containerd.log
#                     (with the shims' lines), registry.log, images.txt
#   CRITEST_TIMEOUT   ginkgo's suite timeout (default 75m)
#   CRITEST_RUNTIME_TIMEOUT  critest's CRI call timeout (default 120s; critest's own is 300s, and
#                     twice that for RunPodSandbox: a hung sandbox start then costs 10 minutes)
#   CRITEST_FLAKE_ATTEMPTS  how often a failing spec runs before it counts as failed (default 2:
#                     an msb sandbox start hangs now and then, see README.md); the summary
#                     names the specs that passed only on a retry (FLAKY)
#   CRITEST_KEEP=1    leave containerd, the registry and the netns up afterwards (cleanup.sh
#                     removes them); crictl against it: see README.md
#   CRITEST_EXTRA     more critest flags (word-split)
set -euo pipefail
source "$(dirname "$0")/common.sh"
HANDLER=${1:?usage: run.sh HANDLER [FOCUS] [SKIP]}
FOCUS=${2:-}
SKIP=${3:-}
if [[ -z ${CRITEST_EXPECTED+x} ]]; then
	CRITEST_EXPECTED=$CRITEST_DIR/expected-failures-$HANDLER.txt
	[[ $HANDLER == msb ]] && CRITEST_EXPECTED=$CRITEST_DIR/expected-failures.txt
	[[ -e $CRITEST_EXPECTED ]] || CRITEST_EXPECTED=
fi
OUT=${CRITEST_OUT:-$CRITEST_WORK/out/$HANDLER-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
[[ $(id -u) == 0 ]] || die "run as root (network namespaces, mounts, containerd)"

"$CRITEST_DIR/build-tools.sh"

cleaned=0
cleanup() {
	((cleaned)) && return 0
	cleaned=1
	if [[ ${CRITEST_KEEP:-} == 1 ]]; then
		log "CRITEST_KEEP=1: left up; undo with $CRITEST_DIR/cleanup.sh"
		return 0
	fi
	"$CRITEST_DIR/cleanup.sh"
}
trap 'cleanup' EXIT
trap 'exit 130' INT TERM

CRITEST_LOGDIR=$OUT "$CRITEST_DIR/setup.sh"

args=(--runtime-endpoint="unix://$SOCK" --image-endpoint="unix://$SOCK" --runtime-handler="$HANDLER"
	--report-dir="$OUT" --ginkgo.v --ginkgo.no-color --ginkgo.json-report="$OUT/report.json"
	--ginkgo.timeout="${CRITEST_TIMEOUT:-75m}" --runtime-service-timeout="${CRITEST_RUNTIME_TIMEOUT:-120s}"
	--ginkgo.flake-attempts="${CRITEST_FLAKE_ATTEMPTS:-2}")
[[ -n $FOCUS ]] && args+=(--ginkgo.focus="$FOCUS")
[[ -n $SKIP ]] && args+=(--ginkgo.skip="$SKIP")
# shellcheck disable=SC2206
[[ -n ${CRITEST_EXTRA:-} ]] && args+=(${CRITEST_EXTRA})
echo "critest ${args[*]}" >"$OUT/cmd.txt"
log "critest against handler $HANDLER (log $OUT/critest.log)"
start=$(date +%s)
# In the background: a signal to this script then runs its trap at once
# (bash defers traps while a foreground command runs), which stops critest.
nsenter --net="$NETNS_PATH" -- "$BIN/critest" "${args[@]}" >"$OUT/critest.log" 2>&1 </dev/null &
critest_pid=$!
trap 'kill -INT $critest_pid 2>/dev/null; wait $critest_pid || true; exit 130' INT TERM
rc=0
wait $critest_pid || rc=$?
trap 'exit 130' INT TERM
wall=$(($(date +%s) - start))
log "critest exited $rc after $wall s"

# the msb shims' logs (vmm.log: the VM's console) of sandboxes still there,
# e.g. one whose start hung and whose shim stayed behind
if [[ -d $CTD_STATE/msb ]]; then
	mkdir -p "$OUT/msb-shim"
	(cd "$CTD_STATE/msb" && find . -name '*.log' -exec cp --parents {} "$OUT/msb-shim/" \; 2>/dev/null) || true
fi
trap - EXIT
cleanup_rc=0
cleanup || cleanup_rc=$?
((cleanup_rc == 0)) || log "cleanup left something behind (above)"

if [[ ! -s $OUT/report.json ]]; then
	tail -n 30 "$OUT/critest.log" >&2
	log "critest wrote no report; logs in $OUT"
	echo "0 passed, 0 failed, 0 skipped"
	exit 2
fi
srgs=(-report "$OUT/report.json" -tsv "$OUT/specs.tsv")
[[ -n $CRITEST_EXPECTED ]] && srgs+=(-expected "$CRITEST_EXPECTED")
echo "critest against $HANDLER: $wall s; logs in $OUT"
src=0
"$BIN/critest-summary" "${srgs[@]}" >"$OUT/summary.txt" || src=$?
cat "$OUT/summary.txt"
((src == 0 && cleanup_rc != 0)) && src=1
exit $src
