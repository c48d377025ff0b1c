package e2e

// Helpers of the shim end-to-end tests (shim_test.go): a test containerd
// running msb's freshly built shim, ctr wrappers, and leftover checks.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/test/containerdtest"
)

const msbRuntimeType = "io.containerd.msb.v2"

var (
	shimOnce sync.Once
	shimDir  string
	shimErr  error
)

// buildShim builds containerd-shim-msb-v2 beside the msb-runtime the
// harness built, where the shim looks for its VMM binary first.
func buildShim(t *testing.T) string {
	t.Helper()
	shimOnce.Do(func() {
		shimDir = filepath.Dir(msbRuntime)
		cmd := exec.Command("go", "build", "-o", filepath.Join(shimDir, "containerd-shim-msb-v2"), "../../cmd/containerd-shim-msb-v2")
		out, err := cmd.CombinedOutput()
		if err != nil {
			shimErr = fmt.Errorf("build shim: %v\n%s", err, out)
		}
	})
	if shimErr != nil {
		t.Fatal(shimErr)
	}
	return shimDir
}

// shimEnv is a test containerd that runs msb's shim, and the busybox image.
type shimEnv struct {
	*containerdtest.Containerd
	image     string
	stateRoot string // the shim's state root (MSB_SHIM_STATE_ROOT)
}

func startShimEnv(t *testing.T) *shimEnv {
	t.Helper()
	return startShimEnvWith(t, containerdtest.Options{})
}

// startShimEnvWith is startShimEnv with the test containerd's options (a
// namespace of the test's choosing); PathDirs and Env are the env's own.
func startShimEnvWith(t *testing.T, opts containerdtest.Options) *shimEnv {
	t.Helper()
	requireVM(t)
	dir := buildShim(t)
	stateRoot, err := os.MkdirTemp("/tmp", "msbs-")
	if err != nil {
		t.Fatal(err)
	}
	opts.PathDirs = []string{dir}
	opts.Env = []string{"MSB_CONFIG=" + configFile, "MSB_SHIM_STATE_ROOT=" + stateRoot}
	c := containerdtest.Start(t, opts)
	e := &shimEnv{Containerd: c, image: c.ImportBusybox(), stateRoot: stateRoot}
	// Registered after containerdtest's cleanup, so it runs before it:
	// what the shim left must be found before the harness sweeps it.
	t.Cleanup(func() {
		if !t.Failed() {
			e.assertClean(t)
		}
		e.killLeftovers(t)
		os.RemoveAll(stateRoot)
	})
	return e
}

// run is `ctr run --rm --runtime msb IMAGE ID ARGS...`.
func (e *shimEnv) run(id string, flags []string, args ...string) (string, string, int, error) {
	a := append([]string{"run", "--rm", "--runtime", msbRuntimeType}, flags...)
	a = append(a, e.image, id)
	stdout, stderr, err := e.Ctr(append(a, args...)...)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout, stderr, ee.ExitCode(), nil
	}
	return stdout, stderr, 0, err
}

// startDetached is `ctr run -d`: the task runs until killed.
func (e *shimEnv) startDetached(t *testing.T, id string, args ...string) {
	t.Helper()
	e.MustCtr(append([]string{"run", "-d", "--runtime", msbRuntimeType, e.image, id}, args...)...)
}

// taskStatus is the STATUS column of `ctr task ls` for id ("" if absent).
func (e *shimEnv) taskStatus(id string) string {
	out, _, err := e.Ctr("task", "ls")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

func (e *shimEnv) waitStatus(t *testing.T, id, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := e.taskStatus(id)
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: status %q after %s, want %s", id, st, d, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deleteTask is `ctr task delete` of a stopped task; it returns the exit
// status ctr reports.
func (e *shimEnv) deleteTask(t *testing.T, id string) int {
	t.Helper()
	_, stderr, err := e.Ctr("task", "delete", id)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`non-zero exit code (\d+)`).FindStringSubmatch(stderr)
	if m == nil {
		return 0
	}
	code, _ := strconv.Atoi(m[1])
	return code
}

// remove deletes a task (killing it) and its container.
func (e *shimEnv) remove(t *testing.T, id string) {
	t.Helper()
	if _, _, err := e.Ctr("task", "delete", "--force", id); err != nil {
		t.Logf("task delete %s: %v", id, err)
	}
	if _, _, err := e.Ctr("container", "delete", id); err != nil {
		t.Logf("container delete %s: %v", id, err)
	}
	e.waitShimDeletes()
}

// waitShimDeletes waits (up to 10 s) for `containerd-shim-msb-v2 delete`
// runs of this containerd, which it starts in the background.
func (e *shimEnv) waitShimDeletes() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		busy := false
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, []byte("containerd-shim-msb-v2\x00")) && bytes.Contains(b, []byte(e.Address)) && bytes.HasSuffix(b, []byte("\x00delete\x00")) {
				busy = true
			}
		}
		if !busy {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// vmProcesses lists processes that belong to this env's VMs: VMM
// processes and hypervisors, whose command lines name the state root.
func (e *shimEnv) vmProcesses() []string { return processesNaming(e.stateRoot + "/") }

// stateFiles lists the files under the shim's state root.
func (e *shimEnv) stateFiles() []string {
	var out []string
	_ = filepath.Walk(e.stateRoot, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// assertClean waits up to 15 s for no VM process, no state file and no
// mount of this containerd to be left.
func (e *shimEnv) assertClean(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		procs, state := e.vmProcesses(), e.stateFiles()
		_, mounts := e.Leftovers()
		var rootfs []string
		for _, m := range mounts {
			if strings.HasSuffix(m, "/rootfs") {
				rootfs = append(rootfs, m)
			}
		}
		if len(procs)+len(state)+len(rootfs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("left behind: processes %v, state %v, rootfs mounts %v", procs, state, rootfs)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (e *shimEnv) killLeftovers(t *testing.T) {
	for _, p := range e.vmProcesses() {
		pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func guestRelease(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(envOr("MSB_TEST_IMAGE", "/var/lib/msb"), "kernel.release"))
	if err != nil {
		t.Skip("no kernel.release in the guest image")
	}
	return strings.TrimSpace(string(b))
}

// ctrEvents runs `ctr events` until the returned stop is called, which
// returns the events seen as "topic {json}" lines.
func (e *shimEnv) ctrEvents(t *testing.T) (stop func() []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := e.CtrCmd(ctx, "events")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []string
	done := make(chan struct{})
	topic := regexp.MustCompile(`(/tasks/\S+) (\{.*\})`)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := topic.FindStringSubmatch(sc.Text()); m != nil {
				mu.Lock()
				lines = append(lines, m[1]+" "+m[2])
				mu.Unlock()
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // subscribed before anything happens
	return func() []string {
		// Events arrive asynchronously (TaskDelete after `ctr delete`
		// returns): stop once none came for 1.5 s, or after 15 s.
		count := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(lines)
		}
		last, quiet := count(), time.Now()
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && time.Since(quiet) < 1500*time.Millisecond; {
			time.Sleep(100 * time.Millisecond)
			if n := count(); n != last {
				last, quiet = n, time.Now()
			}
		}
		cancel()
		_ = cmd.Wait()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return lines
	}
}

// jsonField pulls a scalar field out of ctr's event JSON.
func jsonField(body, name string) string {
	m := regexp.MustCompile(`"` + name + `":("?)([^",}]*)`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[2]
}

// vmmPid finds the VMM process of container id (its command line names
// the VM's state dir).
func (e *shimEnv) vmmPid(t *testing.T, id string) int {
	t.Helper()
	suffix := []byte("\x00vmm\x00" + filepath.Join(e.stateRoot, e.Namespace, "vms", id) + "\x00")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.HasSuffix(b, suffix) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no VMM process for %s", id)
	return 0
}

// shimPid finds the shim serving container id.
func (e *shimEnv) shimPid(t *testing.T, id string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("containerd-shim-msb-v2\x00")) && bytes.Contains(b, []byte("\x00-id\x00"+id+"\x00")) &&
			bytes.Contains(b, []byte(e.Address)) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no shim process for %s", id)
	return 0
}

// hasLine reports whether s has line (ctr adds its own warnings to stderr).
// killShim SIGKILLs the shim serving id and waits until its VMs are gone:
// the parent watchdog must stop them without the shim.
func (e *shimEnv) killShim(t *testing.T, id string) {
	t.Helper()
	if err := syscall.Kill(e.shimPid(t, id), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(e.vmProcesses()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("VM still running 15 s after its shim was killed: %v", e.vmProcesses())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func hasLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if l == line {
			return true
		}
	}
	return false
}
