package e2e

// containerd's own runc shim (io.containerd.runc.v2) driving msb-runtime
// as its runc binary (BinaryName, here ctr's --runc-binary): the path
// Docker 20.10 and any containerd runtime with BinaryName take. The shim
// calls create / start / state / exec --detach / ps / pause / resume /
// kill / delete exactly as it calls runc, reaps the container's pid (the
// VMM process) for the exit status, and copies stdio through pipes.

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const runcShimType = "io.containerd.runc.v2"

// runcRoot is where containerd's runc shim points runc's --root for a
// namespace.
func runcRoot(ns string) string { return filepath.Join("/run/containerd/runc", ns) }

func (e *shimEnv) runcShimCtr(args ...string) (string, string, int, error) {
	stdout, stderr, err := e.Ctr(args...)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout, stderr, ee.ExitCode(), nil
	}
	return stdout, stderr, 0, err
}

func TestRuncShimBinaryName(t *testing.T) {
	e := startShimEnv(t)
	rel := guestRelease(t)
	shim := []string{"--runtime", runcShimType, "--runc-binary", msbRuntime}

	// ctr run --rm: output, stderr, exit status through the VMM's exit.
	out, errOut, code, err := e.runcShimCtr(append(append([]string{"run", "--rm"}, shim...),
		e.image, "rs-once", "sh", "-c", "uname -r; echo to-stderr >&2; exit 3")...)
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 || strings.TrimSpace(out) != rel || !strings.Contains(errOut, "to-stderr") {
		t.Fatalf("run: exit %d, stdout %q (want %q), stderr %q", code, out, rel, errOut)
	}

	// A long-running task: exec, ps, pause/resume, kill, delete.
	e.MustCtr(append(append([]string{"run", "-d"}, shim...), e.image, "rs-long", "sleep", "600")...)
	t.Cleanup(func() {
		_, _, _ = e.Ctr("task", "kill", "-s", "KILL", "rs-long")
		_, _, _ = e.Ctr("task", "delete", "-f", "rs-long")
		_, _, _ = e.Ctr("container", "rm", "rs-long")
	})
	e.waitStatus(t, "rs-long", "RUNNING", 30*time.Second)
	out, errOut, code, err = e.runcShimCtr("task", "exec", "--exec-id", "e1", "rs-long", "sh", "-c", "echo exec-out; uname -r; exit 5")
	if err != nil || code != 5 || !strings.Contains(out, "exec-out") || !strings.Contains(out, rel) {
		t.Fatalf("exec: exit %d err %v, stdout %q stderr %q", code, err, out, errOut)
	}
	ps := e.MustCtr("task", "ps", "rs-long")
	vmms := e.vmmsUnder(runcRoot(e.Namespace))
	if len(vmms) != 1 || !strings.Contains(ps, vmms[0]) {
		t.Fatalf("task ps %q does not name the one VMM process %v", ps, vmms)
	}
	e.MustCtr("task", "pause", "rs-long")
	e.waitStatus(t, "rs-long", "PAUSED", 30*time.Second)
	e.MustCtr("task", "resume", "rs-long")
	e.waitStatus(t, "rs-long", "RUNNING", 30*time.Second)
	e.MustCtr("task", "kill", "-s", "KILL", "rs-long")
	e.waitStatus(t, "rs-long", "STOPPED", 60*time.Second)
	if got := e.deleteTask(t, "rs-long"); got != 137 {
		t.Errorf("exit status after SIGKILL: %d, want 137", got)
	}
	e.MustCtr("container", "rm", "rs-long")
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := e.vmmsUnder(runcRoot(e.Namespace))
		files, _ := filepath.Glob(filepath.Join(runcRoot(e.Namespace), "*", "*"))
		if len(left)+len(files) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: processes %v, state %v", left, files)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// vmmsUnder lists the pids of VMM processes whose state dir is under root.
func (e *shimEnv) vmmsUnder(root string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		args := strings.Split(string(b), "\x00")
		if len(args) >= 3 && args[1] == "vmm" && strings.HasPrefix(args[2], root+"/") {
			out = append(out, filepath.Base(filepath.Dir(p)))
		}
	}
	return out
}
