package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestShimRun is the README's demo: the container sees the guest kernel;
// its exit code comes back through ctr.
func TestShimRun(t *testing.T) {
	e := startShimEnv(t)
	start := time.Now()
	stdout, stderr, code, err := e.run("demo", nil, "sh", "-c", "id -u; uname -r; echo to-stderr >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ctr run: %s", time.Since(start).Round(time.Millisecond))
	want := "0\n" + guestRelease(t) + "\n"
	if code != 3 || stdout != want || !hasLine(stderr, "to-stderr") {
		t.Fatalf("exit %d, stdout %q (want %q), stderr %q", code, stdout, want, stderr)
	}
}

// TestShimOutputBeforeExit: a container that prints 10 MiB and exits at
// once delivers every byte before ctr sees its exit.
func TestShimOutputBeforeExit(t *testing.T) {
	e := startShimEnv(t)
	const size = 10 << 20
	line := "0123456789abcdef0123456789abcde\n"
	stdout, stderr, code, err := e.run("big", nil, "sh", "-c", fmt.Sprintf("yes %s | head -c %d", strings.TrimSpace(line), size))
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Repeat(line, size/len(line)+1)[:size]
	if code != 0 || len(stdout) != size || stdout != want {
		t.Fatalf("exit %d, got %d bytes of %d (equal: %v); stderr %q", code, len(stdout), size, stdout == want, stderr)
	}
}

// TestShimExecPsKillEvents drives one container through exec, ps, pause,
// resume and SIGTERM, and checks the events containerd got come in runc's
// shim order.
func TestShimExecPsKillEvents(t *testing.T) {
	e := startShimEnv(t)
	stopEvents := e.ctrEvents(t)
	const id = "ev"
	e.startDetached(t, id, "sh", "-c", `trap "exit 143" TERM; while :; do sleep 0.2; done`)
	e.waitStatus(t, id, "RUNNING", time.Minute)

	out, _, err := e.Ctr("task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo from-exec; exit 5")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || out != "from-exec\n" {
		t.Fatalf("exec: stdout %q, err %v (want exit 5)", out, err)
	}

	ps := e.MustCtr("task", "ps", id)
	var pids []int
	for _, l := range strings.Split(ps, "\n")[1:] {
		if f := strings.Fields(l); len(f) > 0 {
			if pid, err := strconv.Atoi(f[0]); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	if len(pids) == 0 {
		t.Fatalf("ctr task ps shows no pids:\n%s", ps)
	}
	t.Logf("guest pids: %v", pids)

	e.MustCtr("task", "pause", id)
	e.waitStatus(t, id, "PAUSED", 30*time.Second)
	e.MustCtr("task", "resume", id)
	e.waitStatus(t, id, "RUNNING", 30*time.Second)

	// A long exec is running when init gets SIGTERM: its exit must be
	// published before init's.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	long := e.CtrCmd(ctx, "task", "exec", "--exec-id", "e2", id, "sleep", "1000")
	if err := long.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(e.MustCtr("task", "ps", id), "e2") {
		if time.Now().After(deadline) {
			t.Fatal("exec e2 never showed up in ctr task ps")
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.MustCtr("task", "kill", "-s", "SIGTERM", id)
	_ = long.Wait()
	e.waitStatus(t, id, "STOPPED", 30*time.Second)
	if code := e.deleteTask(t, id); code != 143 {
		t.Fatalf("task delete after SIGTERM: exit status %d, want 143", code)
	}
	e.MustCtr("container", "delete", id)

	var got []string
	for _, l := range stopEvents() {
		if !strings.Contains(l, `"`+id+`"`) {
			continue
		}
		topic, body, _ := strings.Cut(l, " ")
		switch topic {
		case "/tasks/exec-added", "/tasks/exec-started":
			topic += "(" + jsonField(body, "exec_id") + ")"
		case "/tasks/exit":
			topic += "(" + jsonField(body, "id") + "," + jsonField(body, "exit_status") + ")"
		}
		got = append(got, topic)
	}
	want := []string{
		"/tasks/create", "/tasks/start",
		"/tasks/exec-added(e1)", "/tasks/exec-started(e1)", "/tasks/exit(e1,5)",
		"/tasks/paused", "/tasks/resumed",
		"/tasks/exec-added(e2)", "/tasks/exec-started(e2)", "/tasks/exit(e2,137)",
		"/tasks/exit(ev,143)", "/tasks/delete",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events:\n got  %v\n want %v", got, want)
	}
}

// TestShimSigkill: `ctr task kill -s SIGKILL` ends `ctr run` with 137.
func TestShimSigkill(t *testing.T) {
	e := startShimEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run := e.CtrCmd(ctx, "run", "--rm", "--runtime", msbRuntimeType, e.image, "k", "sleep", "1000")
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(t, "k", "RUNNING", time.Minute)
	e.MustCtr("task", "kill", "-s", "SIGKILL", "k")
	err := run.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 137 {
		t.Fatalf("ctr run after SIGKILL: %v, want exit status 137", err)
	}
}

// TestShimTwoVMsAndVMMDeath: two containers run at once, each in its own
// VM; when one VM's VMM process dies, its task stops within 2 s with 255
// and the other keeps running.
func TestShimTwoVMsAndVMMDeath(t *testing.T) {
	e := startShimEnv(t)
	var wg sync.WaitGroup
	for _, id := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := e.Ctr("run", "-d", "--runtime", msbRuntimeType, e.image, id, "sleep", "1000"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	hostBoot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	boot := map[string]string{}
	for _, id := range []string{"a", "b"} {
		boot[id] = e.MustCtr("task", "exec", "--exec-id", "boot", id, "cat", "/proc/sys/kernel/random/boot_id")
	}
	if boot["a"] == boot["b"] || boot["a"] == string(hostBoot) || boot["b"] == string(hostBoot) {
		t.Fatalf("boot ids: a %q, b %q, host %q: want three different kernels", boot["a"], boot["b"], hostBoot)
	}

	vmm := e.vmmPid(t, "a")
	killed := time.Now()
	if err := syscall.Kill(vmm, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(t, "a", "STOPPED", 2*time.Second)
	t.Logf("task stopped %s after its VMM was killed", time.Since(killed).Round(time.Millisecond))
	if code := e.deleteTask(t, "a"); code != 137 {
		t.Fatalf("task delete of the task whose VMM was killed: exit status %d, want 137", code)
	}
	if want := "VM a ended: the VMM process was killed (signal 9): exit status 137"; !strings.Contains(e.Log(), want) {
		t.Errorf("containerd log has no %q", want)
	}
	if st := e.taskStatus("b"); st != "RUNNING" {
		t.Fatalf("task b is %q after a's VM died", st)
	}
	e.MustCtr("container", "delete", "a")
	e.remove(t, "b")
}

// TestShimKilled: a shim killed with SIGKILL takes its VM with it (the
// VMM's parent watchdog), and containerd's cleanup (`shim delete`)
// removes the rootfs mount and the VM's state.
func TestShimKilled(t *testing.T) {
	e := startShimEnv(t)
	e.startDetached(t, "victim", "sleep", "1000")
	e.waitStatus(t, "victim", "RUNNING", time.Minute)
	if len(e.vmProcesses()) == 0 {
		t.Fatal("no VM processes while the task runs")
	}
	e.killShim(t, "victim")
	e.assertClean(t)
	// containerd saw the shim die and cleaned the task up with `shim delete`.
	if st := e.taskStatus("victim"); st != "" && st != "STOPPED" {
		t.Fatalf("task of the killed shim is %s", st)
	}
	_, _, _ = e.Ctr("task", "delete", "victim")
	e.MustCtr("container", "delete", "victim")
	e.waitShimDeletes()
}

// TestShimContainerdRestart: a task started before containerd restarts is
// still reachable through its shim afterwards.
func TestShimContainerdRestart(t *testing.T) {
	e := startShimEnv(t)
	e.startDetached(t, "survivor", "sleep", "1000")
	e.waitStatus(t, "survivor", "RUNNING", time.Minute)
	e.Restart()
	e.waitStatus(t, "survivor", "RUNNING", 30*time.Second)
	if out := e.MustCtr("task", "exec", "--exec-id", "x", "survivor", "echo", "alive"); out != "alive\n" {
		t.Fatalf("exec after restart: %q", out)
	}
	e.remove(t, "survivor")
}

// TestShimLogURIs: file:// and binary:// log URIs (what nerdctl and Docker
// use) receive every byte.
func TestShimLogURIs(t *testing.T) {
	e := startShimEnv(t)
	dir := t.TempDir()
	const size = 1 << 20
	script := fmt.Sprintf("yes abcdefghijklmnopqrstuvwxyz01234 | head -c %d; echo to-stderr >&2", size)
	want := sha256.Sum256([]byte(strings.Repeat("abcdefghijklmnopqrstuvwxyz01234\n", size/32+1)[:size]))

	logFile := filepath.Join(dir, "file.log")
	if _, stderr, code, err := e.run("flog", []string{"--log-uri", "file://" + logFile}, "sh", "-c", script); err != nil || code != 0 {
		t.Fatalf("file log run: exit %d, %v, %s", code, err, stderr)
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := bytes.ReplaceAll(b, []byte("to-stderr\n"), nil); len(got) != size || sha256.Sum256(got) != want || len(b) != size+len("to-stderr\n") {
		t.Fatalf("file:// log has %d bytes, want %d of stdout and the stderr line", len(b), size)
	}

	logger := filepath.Join(dir, "logger.sh")
	// fd 3 is stdout, 4 stderr; closing 5 says ready. The logger gets no
	// PATH (containerd's protocol), hence absolute paths.
	if err := os.WriteFile(logger, []byte("#!/bin/sh\nexec 5>&-\n/bin/cat <&3 >\"$2.out\" &\n/bin/cat <&4 >\"$2.err\" &\nwait\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(dir, "bin")
	if _, stderr, code, err := e.run("blog", []string{"--log-uri", "binary://" + logger + "?dest=" + prefix}, "sh", "-c", script); err != nil || code != 0 {
		t.Fatalf("binary log run: exit %d, %v, %s", code, err, stderr)
	}
	out, _ := os.ReadFile(prefix + ".out")
	errOut, _ := os.ReadFile(prefix + ".err")
	if len(out) != size || sha256.Sum256(out) != want || string(errOut) != "to-stderr\n" {
		t.Fatalf("binary:// logger got %d bytes of stdout (want %d, sha %s) and stderr %q", len(out), size, hex.EncodeToString(want[:4]), errOut)
	}
}

// TestShimBadBundle: what cannot run in a VM fails at create with an
// error naming the problem, and leaves nothing behind.
func TestShimBadBundle(t *testing.T) {
	e := startShimEnv(t)
	_, stderr, code, err := e.run("bad", []string{"--net-host"}, "true")
	if err != nil || code == 0 || !strings.Contains(stderr, "no network namespace") {
		t.Fatalf("want ctr to fail naming the network namespace, got exit %d, %v, stderr %s", code, err, stderr)
	}
	e.assertClean(t)
	_, _, _ = e.Ctr("container", "delete", "bad")
}

// TestShimOldContainerd runs the demo against a containerd 2.2 (the old
// shim bootstrap protocol), when $MSB_TEST_CONTAINERD_OLD names one, e.g.
// CONTAINERD_VERSION=v2.2.9 hack/build-containerd.sh /tmp/containerd-2.2.
func TestShimOldContainerd(t *testing.T) {
	old := os.Getenv("MSB_TEST_CONTAINERD_OLD")
	if old == "" {
		t.Skip("MSB_TEST_CONTAINERD_OLD not set")
	}
	t.Setenv("MSB_TEST_CONTAINERD", old)
	t.Setenv("MSB_TEST_CTR", "")
	e := startShimEnv(t)
	t.Logf("containerd %s", e.Version())
	stdout, stderr, code, err := e.run("old", nil, "uname", "-r")
	if err != nil || code != 0 || stdout != guestRelease(t)+"\n" {
		t.Fatalf("exit %d, %v, stdout %q, stderr %s", code, err, stdout, stderr)
	}
}

// TestShimRuntimeOptions: a runtime config named in containerd's runtime
// options (here ctr's --runtime-config-path) sizes the VM.
func TestShimRuntimeOptions(t *testing.T) {
	e := startShimEnv(t)
	base, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(t.TempDir(), "big.toml")
	if err := os.WriteFile(big, append(base, []byte("vcpus = 2\nmemory_mib = 400\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code, err := e.run("opts", []string{"--runtime-config-path", big},
		"sh", "-c", "nproc; awk '/MemTotal/ {print ($2 > 300000)}' /proc/meminfo")
	if err != nil || code != 0 || stdout != "2\n1\n" {
		t.Fatalf("exit %d %v, stdout %q (want 2 vCPUs and > 300 MB), stderr %q", code, err, stdout, stderr)
	}
}

// Container ids share the state root with msb's own entries in no way:
// containers named like them (agent, the old relay dir; sock and vms, the
// trees now) run side by side, and removing two leaves the third's VM
// reachable.
func TestShimIDsCannotCollide(t *testing.T) {
	e := startShimEnv(t)
	for _, id := range []string{"agent", "sock", "vms"} {
		e.startDetached(t, id, "sleep", "600")
		t.Cleanup(func() { e.remove(t, id) })
	}
	for _, id := range []string{"agent", "sock", "vms"} {
		e.waitStatus(t, id, "RUNNING", 2*time.Minute)
	}
	e.remove(t, "sock")
	e.remove(t, "vms")
	if out := e.MustCtr("task", "exec", "--exec-id", "x", "agent", "echo", "still-here"); out != "still-here\n" {
		t.Fatalf("exec in agent after removing sock and vms: %q", out)
	}
}
