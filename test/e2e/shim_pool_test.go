package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// poolEntries reads the parked VMs of the pool under root: id → VMM pid.
func poolEntries(t *testing.T, root string) map[string]int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "*", "ready", "*.json"))
	out := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // claimed meanwhile
		}
		var e struct {
			ID  string `json:"id"`
			Pid int    `json:"pid"`
		}
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("pool entry %s: %v", f, err)
		}
		out[e.ID] = e.Pid
	}
	return out
}

// poolConfig writes the test config with pool_size = 1 and returns its
// body, its path and the shim env's pool root.
func poolConfig(t *testing.T, e *shimEnv) ([]byte, string, string) {
	t.Helper()
	cfg, path := configWith(t, "pool_size = 1")
	return cfg, path, filepath.Join(e.stateRoot, "pool")
}

// configWith writes the test config plus line to a file of the test and
// returns its body and path.
func configWith(t *testing.T, line string) ([]byte, string) {
	t.Helper()
	base, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := append(base, []byte("\n"+line+"\n")...)
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg, path
}

// filledPool fills a pool of one VM for the shim env, drained and removed
// at the test's end, and returns the config's path, the pool root and the
// parked VM's id and VMM pid.
func filledPool(t *testing.T, e *shimEnv) (cfgPath, poolRoot, id string, pid int) {
	t.Helper()
	cfg, cfgPath, poolRoot := poolConfig(t, e)
	t.Cleanup(func() {
		poolCmd(t, e, cfg, "drain")
		os.RemoveAll(poolRoot)
	})
	poolCmd(t, e, cfg, "fill")
	for i, p := range poolEntries(t, poolRoot) {
		id, pid = i, p
	}
	return cfgPath, poolRoot, id, pid
}

// poolCmd runs msb-runtime pool SUB on the shim env's pool with the
// config body on stdin, as the shim does.
func poolCmd(t *testing.T, e *shimEnv, cfg []byte, sub string) string {
	t.Helper()
	cmd := exec.Command(msbRuntime, "--config", "-", "pool", sub, "--pool-root", filepath.Join(e.stateRoot, "pool"))
	cmd.Stdin = bytes.NewReader(cfg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pool %s: %v\n%s", sub, err, out)
	}
	return string(out)
}

// TestShimWarmPool: with pool_size = 1 a container claims the parked VM
// (its task pid is that VM's VMM), runs in it with its own cgroup and
// rootfs, and the pool is topped up again; a container that needs a VM
// of another size boots its own; drain stops the pool and leaves nothing.
func TestShimWarmPool(t *testing.T) {
	e := startShimEnv(t)
	cfg, cfgPath, poolRoot := poolConfig(t, e)
	drained := false
	t.Cleanup(func() {
		if !drained {
			poolCmd(t, e, cfg, "drain")
		}
	})
	poolCmd(t, e, cfg, "fill")
	parked := poolEntries(t, poolRoot)
	if len(parked) != 1 {
		t.Fatalf("after fill: %d parked VMs, want 1 (%v)", len(parked), parked)
	}
	var parkedPid int
	for _, pid := range parked {
		parkedPid = pid
	}

	var parkedID string
	for id := range parked {
		parkedID = id
	}
	if len(cgroupDirs("/msb-pool/"+parkedID)) == 0 {
		t.Fatalf("the parked VM has no host cgroup /msb-pool/%s", parkedID)
	}
	// Parked VMs idle below running containers.
	parkedQEMU := childNamed(t, parkedPid, "qemu-system")
	if n, q := procNice(parkedPid), procNice(parkedQEMU); n != 10 || q != 10 {
		t.Errorf("parked VM: VMM nice %d, qemu nice %d, want 10", n, q)
	}

	// Claimed: the parked VM's VMM moved with its qemu into the
	// container's cgroup (ctr's --cgroup) at the spec's OOM score; the
	// pool's cgroup is gone. The task pid is an anchor in the VM's network
	// namespace whose root is the container's rootfs (view/view.go).
	opts := []string{"--runtime-config-path", cfgPath}
	cg := hostCgroupParent(t) + "/warm"
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType, "--cgroup", cg}, opts...), e.image, "warm", "sh", "-c",
		"echo marker > /tmp/m; sleep 1000")...)
	e.waitStatus(t, "warm", "RUNNING", time.Minute)
	anchorPid := e.taskPid(t, "warm")
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", anchorPid)); !strings.Contains(string(b), "anchor") {
		t.Fatalf("task pid %d is no anchor (%q): the container did not claim the pool VM", anchorPid, b)
	}
	for _, ns := range []string{"net", "mnt"} {
		a, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", anchorPid, ns))
		vmmNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", parkedPid, ns))
		if (a == vmmNS) != (ns == "net") {
			t.Errorf("anchor's %s namespace %s, the VMM's %s", ns, a, vmmNS)
		}
	}
	checkHostPlace(t, "claimed VMM process", parkedPid, cg, 0)
	checkHostPlace(t, "claimed qemu", parkedQEMU, cg, 0)
	if n, q := procNice(parkedPid), procNice(parkedQEMU); n != 0 || q != 0 {
		t.Errorf("claimed VM: VMM nice %d, qemu nice %d, want 0", n, q)
	}
	waitCgroupGone(t, "/msb-pool/"+parkedID, "after the claim")
	if out := e.MustCtr("task", "exec", "--exec-id", "x", "warm", "cat", "/tmp/m"); out != "marker\n" {
		t.Fatalf("exec in the warm container: %q", out)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/tmp/m", anchorPid)); err != nil || string(b) != "marker\n" {
		t.Errorf("the anchor's root is not the container's rootfs: /tmp/m %q %v", b, err)
	}
	// A pool VM's qemu is an unprivileged user too (ADR 022), and the
	// claimer's rootfs, shifted to its ids, keeps its owners in the guest.
	if os.Getenv("MSB_TEST_NO_JAIL") != "1" {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", parkedQEMU))
		if err != nil {
			t.Fatal(err)
		}
		checkQEMUUnprivileged(t, parkedQEMU, string(status))
		if out := e.MustCtr("task", "exec", "--exec-id", "own", "warm", "stat", "-c", "%u:%g", "/bin/busybox", "/tmp/m"); out != "0:0\n0:0\n" {
			t.Errorf("ownership in the claimed VM: %q", out)
		}
	}
	// nerdctl's --net and --ipc container:warm name the anchor's
	// namespaces: the joiner runs in the claimed VM (ADR 030), not in a
	// pool VM of its own. (ipc alone: only the anchor's pid names it.)
	const show = "echo boot=$(cat /proc/sys/kernel/random/boot_id) ipc=$(readlink /proc/self/ns/ipc)"
	warm := fields(e.MustCtr("task", "exec", "--exec-id", "boot", "warm", "sh", "-c", show))
	for _, ns := range []string{"network:/proc/%d/ns/net", "ipc:/proc/%d/ns/ipc"} {
		out, stderr, code, err := e.run("joiner", []string{"--with-ns", fmt.Sprintf(ns, anchorPid)}, "sh", "-c", show)
		f := fields(out)
		if err != nil || code != 0 || f["boot"] != warm["boot"] || (ns[0] == 'i' && f["ipc"] != warm["ipc"]) {
			t.Errorf("a container joining the claimed VM (%s): exit %d %v, %q %s; want its boot id and IPC namespace %v", ns, code, err, out, stderr, warm)
		}
	}
	before := time.Now()
	out := e.MustCtr("task", "exec", "--exec-id", "clock", "warm", "adjtimex")
	checkGuestClock(t, "claimed VM", adjtimexTime(t, out), before, time.Now())
	// The pool is topped up while the claimed VM runs.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		now := poolEntries(t, poolRoot)
		_, stale := now[func() string {
			for id := range parked {
				return id
			}
			return ""
		}()]
		if len(now) == 1 && !stale {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(poolRoot, "fill.log"))
			t.Fatalf("pool not refilled after the claim: %v; fill.log:\n%s", now, b)
		}
		time.Sleep(250 * time.Millisecond)
	}
	e.remove(t, "warm")
	waitCgroupGone(t, cg, "after the warm container's delete")
	// Exited (its reaper, init, may not have collected it yet).
	for _, pid := range []int{parkedPid, anchorPid} {
		if st := procState(pid); st != "" && st != "Z" {
			t.Fatalf("the claimed VM's VMM or anchor %d outlived its container (state %s)", pid, st)
		}
	}

	// Another size cannot use the pool: a cold start, the pool untouched.
	parkedNow := poolEntries(t, poolRoot)
	stdout, stderr, code, err := e.run("cold", append(opts, "--memory-limit", "400000000"), "sh", "-c", "echo cold-ok")
	if err != nil || code != 0 || stdout != "cold-ok\n" {
		t.Fatalf("cold run: exit %d %v, stdout %q, stderr %q", code, err, stdout, stderr)
	}
	if after := poolEntries(t, poolRoot); len(after) != 1 || !sameKeys(parkedNow, after) {
		t.Fatalf("a container of another size took the pool VM: before %v, after %v", parkedNow, after)
	}
	if !strings.Contains(e.Log(), "cold start: its VM size") {
		t.Errorf("shim log does not say why the container took a cold start")
	}

	poolCmd(t, e, cfg, "drain")
	drained = true
	if n := len(poolEntries(t, poolRoot)); n != 0 {
		t.Fatalf("%d parked VMs after drain", n)
	}
	if vms, _ := filepath.Glob(filepath.Join(poolRoot, "*", "vms", "*")); len(vms) != 0 {
		t.Fatalf("pool state dirs after drain: %v", vms)
	}
	// The lock files and the fill log stay with the pool root; the VMs'
	// processes and state are checked gone by the env's cleanup.
	if err := os.RemoveAll(poolRoot); err != nil {
		t.Fatal(err)
	}
}

// TestShimWarmPoolShimKilled: a claimed VM's record names the host
// cgroup it now stands in (the container's): after SIGKILL of its VMM and
// its shim, containerd's delete (the shim's cleanup path) removes that
// cgroup, as a cold VM's (TestShimHostCgroup).
func TestShimWarmPoolShimKilled(t *testing.T) {
	e := startShimEnv(t)
	cfgPath, _, _, parkedPid := filledPool(t, e)
	const id = "warm-killed"
	cg := hostCgroupParent(t) + "/" + id
	e.MustCtr("run", "-d", "--runtime", msbRuntimeType, "--cgroup", cg, "--runtime-config-path", cfgPath, e.image, id, "sleep", "1000")
	e.waitStatus(t, id, "RUNNING", time.Minute)
	checkHostPlace(t, "claimed VMM process", parkedPid, cg, 0)
	// The pool's refill runs a VM of its own meanwhile: only the claimed
	// VM's processes are waited for.
	for _, pid := range []int{parkedPid, e.shimPid(t, id)} {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for st := procState(parkedPid); st != "" && st != "Z"; st = procState(parkedPid) {
		if time.Now().After(deadline) {
			t.Fatalf("claimed VMM %d still runs after SIGKILL", parkedPid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _, _ = e.Ctr("task", "delete", id)
	e.MustCtr("container", "delete", id)
	e.waitShimDeletes()
	waitCgroupGone(t, cg, "after SIGKILL of the claimed VM's VMM and shim, and its delete")
}

// procNice is the nice value of process pid's main thread (-100 if gone).
func procNice(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -100
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 17 {
		return -100
	}
	n, _ := strconv.Atoi(f[16]) // field 19 of stat; f[0] is field 3
	return n
}

// procState is the state letter of process pid ("" when it is gone).
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i > 0 && len(s) > i+2 {
		return s[i+2 : i+3]
	}
	return ""
}

func sameKeys(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// TestNetPodWarm: with pool_size = 1 a pod's sandbox, whose network
// namespace CNI made (as containerd's CRI does), claims the parked VM: the
// VM's taps move into the pod's namespace, the task pid is an anchor
// process there (the VMM stays in the namespace it was booted in), and
// the pod works as a cold one: its app container joins the VM, the pod IP
// and port-forward reach the app's httpd, nothing stays wired.
func TestNetPodWarm(t *testing.T) {
	e := startShimEnv(t)
	cfgPath, poolRoot, parkedID, parkedPid := filledPool(t, e)

	host := newNetNS(t)
	cni := newCNI(t, host, "10.88.7.0/24")
	podNS := newNetNS(t)
	ip := cni.add("wpod", podNS, 0)
	const sb, app = "wpod-sb", "wpod-app"
	run := func(typ, id string, args ...string) {
		a := []string{"run", "-d", "--runtime", msbRuntimeType, "--runtime-config-path", cfgPath,
			"--annotation", "io.kubernetes.cri.container-type=" + typ, "--annotation", "io.kubernetes.cri.sandbox-id=" + sb,
			"--with-ns", "network:" + podNS, e.image, id}
		e.MustCtr(append(a, args...)...)
	}
	run("sandbox", sb, "sleep", "600")
	t.Cleanup(func() { e.remove(t, sb) })
	e.waitStatus(t, sb, "RUNNING", 2*time.Minute)
	sbPid := e.taskPid(t, sb)
	if sbPid == parkedPid {
		t.Fatalf("the sandbox's task pid is the pool VM's VMM %d, which lives in another network namespace", parkedPid)
	}
	assertOwnNetNS(t, e, sb, sbPid, podNS)
	if _, still := poolEntries(t, poolRoot)[parkedID]; still || !strings.Contains(e.Log(), "claims pool VM "+parkedID) {
		t.Fatalf("the sandbox did not claim the parked VM %s (shim log: %v)", parkedID, strings.Contains(e.Log(), "cold start"))
	}
	if st := procState(parkedPid); st == "" || st == "Z" {
		t.Fatalf("the claimed VM's VMM %d is gone", parkedPid)
	}
	if sameNetNS(t, fmt.Sprintf("/proc/%d/ns/net", parkedPid), podNS) {
		t.Fatalf("the claimed VMM moved into the pod's namespace; only its taps should")
	}
	run("container", app, httpdCmd("served-by-warm-pod")...)
	e.waitStatus(t, app, "RUNNING", time.Minute)
	if body, err := httpGet(host, "http://"+ip+"/", time.Minute); err != nil || body != "served-by-warm-pod\n" {
		t.Fatalf("GET pod IP %s: %q, %v", ip, body, err)
	}
	if body, err := httpGet(podNS, "http://127.0.0.1:80/", time.Minute); err != nil || body != "served-by-warm-pod\n" {
		t.Fatalf("port-forward (127.0.0.1:80 in the pod netns on the host): %q, %v", body, err)
	}
	e.remove(t, app)
	e.remove(t, sb)
	assertUnwired(t, podNS)
	if st := procState(sbPid); st != "" && st != "Z" {
		t.Errorf("the anchor %d outlived its sandbox (state %s)", sbPid, st)
	}
}

// TestPoolVMUnreachableStops: a parked VM whose pool directory is deleted
// (nobody can claim it any more) stops by itself and leaves nothing.
func TestPoolVMUnreachableStops(t *testing.T) {
	e := startShimEnv(t)
	cfg, _, poolRoot := poolConfig(t, e)
	poolCmd(t, e, cfg, "fill")
	var pid int
	for _, p := range poolEntries(t, poolRoot) {
		pid = p
	}
	if err := os.RemoveAll(poolRoot); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for st := procState(pid); st != "" && st != "Z"; st = procState(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("parked VMM %d still runs 30 s after its pool was deleted", pid)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
