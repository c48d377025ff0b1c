package jail

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompChildEnv makes the test binary install qemu's filter and then do
// what its value says (seccompTestChild).
const seccompChildEnv = "MSB_SECCOMP_TEST_CHILD"

// seccompTestChild installs qemu's filter on this thread as the jail
// helper does, then: "allowed" prints and exits (what the Go runtime does
// between the filter and the exec), "unshare" and "fork" try a call qemu
// never makes, "exec" execs os.Args[1:] (qemu).
func seccompTestChild(mode string) int {
	runtime.LockOSThread()
	if err := installSeccomp(&Plan{Seccomp: true}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch mode {
	case "allowed":
		fmt.Println("alive")
	case "unshare":
		_, _, e := unix.RawSyscall(unix.SYS_UNSHARE, 0, 0, 0)
		fmt.Println("unshare returned", e)
	case "fork": // clone without CLONE_THREAD: a new process
		pid, _, e := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if pid == 0 && e == 0 {
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		fmt.Println("fork returned", pid, e)
	case "exec":
		err := unix.Exec(os.Args[1], os.Args[1:], os.Environ())
		fmt.Fprintln(os.Stderr, "exec:", err)
		return 2
	}
	return 0
}

// seccompChild runs the test binary as seccompTestChild(mode).
func seccompChild(mode string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), seccompChildEnv+"="+mode)
	return cmd
}

// TestQEMUSeccomp installs the filter for real: the Go runtime's calls
// before the exec pass; a call off the list, or a clone that makes a
// process, kills the whole process with SIGSYS; and qemu itself starts
// under it and adds its own filter on top.
func TestQEMUSeccomp(t *testing.T) {
	out, err := seccompChild("allowed").CombinedOutput()
	if err != nil || string(out) != "alive\n" {
		t.Fatalf("allowed calls: %v, %q", err, out)
	}
	for _, mode := range []string{"unshare", "fork"} {
		out, err := seccompChild(mode).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGSYS {
			t.Errorf("%s under the filter: %v, %q; want the process killed by SIGSYS", mode, err, out)
		}
	}

	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("no qemu-system-x86_64: qemu's start under the filter is not checked")
	}
	cmd := seccompChild("exec", qemu, "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none",
		"-serial", "none", "-S", "-sandbox", QEMUSandbox)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	deadline := time.After(20 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("qemu under the filter ended: %v: %s", err, stderr.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatal("qemu under the filter did not install its own in 20 s")
		case <-time.After(50 * time.Millisecond):
		}
		b, _ := os.ReadFile(status)
		if strings.Contains(string(b), "Seccomp_filters:\t2\n") {
			break
		}
	}
	// A while in its main loop, then a stop by signal, as the VMM stops it.
	time.Sleep(time.Second)
	_ = cmd.Process.Signal(unix.SIGTERM)
	if err := <-done; err != nil && !strings.Contains(stderr.String(), "terminating on signal 15") {
		t.Fatalf("qemu under the filter: %v: %s", err, stderr.String())
	}
}

// TestQEMUSeccompPolicy runs the assembled filter on made-up syscalls:
// the arch is checked first, the list allows, anything else kills; with
// PrivateRAM a hole punch returns 0 unperformed, other fallocates run.
func TestQEMUSeccompPolicy(t *testing.T) {
	for _, private := range []bool{false, true} {
		t.Run(fmt.Sprintf("privateRAM=%v", private), func(t *testing.T) { testQEMUSeccompPolicy(t, private) })
	}
}

func testQEMUSeccompPolicy(t *testing.T, private bool) {
	insts, err := qemuFilter(private)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(insts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := arch.GetInfo("")
	if err != nil {
		t.Fatal(err)
	}
	const (
		allow  = unix.SECCOMP_RET_ALLOW
		kill   = unix.SECCOMP_RET_KILL_PROCESS
		enosys = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
		noop   = unix.SECCOMP_RET_ERRNO // errno 0: returns 0
	)
	punch := uint32(allow)
	if private {
		punch = noop
	}
	id, foreign := uint32(info.ID), uint32(unix.AUDIT_ARCH_I386)
	nr := func(name string) uint32 {
		n, ok := info.SyscallNames[name]
		if !ok {
			t.Fatalf("%s: no such syscall on %s", name, info.Name)
		}
		return uint32(n)
	}
	for _, c := range []struct {
		name string
		arch uint32
		nr   uint32
		arg0 uint64
		want uint32
		arg1 uint64
	}{
		{"read", id, nr("read"), 0, allow, 0},
		{"execve", id, nr("execve"), 0, allow, 0},
		{"seccomp", id, nr("seccomp"), 0, allow, 0},
		{"thread", id, nr("clone"), unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND, allow, 0},
		{"fork", id, nr("clone"), uint64(unix.SIGCHLD), kill, 0},
		{"fork with exit signal 1 (AF_UNIX)", id, nr("clone"), 1, kill, 0},
		{"fork with exit signal 41 (socket's number)", id, nr("clone"), 41, kill, 0},
		{"clone3", id, nr("clone3"), 0, enosys, 0},
		{"io_uring_setup", id, nr("io_uring_setup"), 0, enosys, 0},
		{"unix socket", id, nr("socket"), unix.AF_UNIX, allow, 0},
		{"netlink socket", id, nr("socket"), unix.AF_NETLINK, kill, 0},
		{"inet socket", id, nr("socket"), unix.AF_INET, kill, 0},
		{"socket, AF_UNIX in the low word only", id, nr("socket"), unix.AF_UNIX | 1<<32, kill, 0},
		{"unshare", id, nr("unshare"), 0, kill, 0},
		{"ptrace", id, nr("ptrace"), 0, kill, 0},
		{"mount", id, nr("mount"), 0, kill, 0},
		{"setuid", id, nr("setuid"), 0, kill, 0},
		{"read of another arch", foreign, nr("read"), 0, kill, 0},
		{"unknown number", id, 4000, 0, kill, 0},
		{"hole punch", id, nr("fallocate"), 9, punch, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE},
		{"fallocate", id, nr("fallocate"), 9, allow, 0},
		{"zero range", id, nr("fallocate"), 9, allow, unix.FALLOC_FL_ZERO_RANGE},
		{"punch, size changed", id, nr("fallocate"), 9, allow, unix.FALLOC_FL_PUNCH_HOLE},
		{"hole punch of another arch", foreign, nr("fallocate"), 9, kill, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE},
	} {
		// seccomp_data as the VM loads it: 32-bit words, big-endian;
		// a 64-bit argument's low word first, as on little-endian hosts.
		d := make([]byte, 64)
		binary.BigEndian.PutUint32(d[0:], c.nr)
		binary.BigEndian.PutUint32(d[4:], c.arch)
		binary.BigEndian.PutUint32(d[16:], uint32(c.arg0))
		binary.BigEndian.PutUint32(d[20:], uint32(c.arg0>>32))
		binary.BigEndian.PutUint32(d[24:], uint32(c.arg1))
		binary.BigEndian.PutUint32(d[28:], uint32(c.arg1>>32))
		got, err := vm.Run(d)
		if err != nil || uint32(got) != c.want {
			t.Errorf("%s: filter returned %#x, %v; want %#x", c.name, uint32(got), err, c.want)
		}
	}
}

// TestQEMUSeccompArches: the list builds for x86_64 and arm64 alike, each
// name a call of that arch.
func TestQEMUSeccompArches(t *testing.T) {
	for _, info := range []*arch.Info{arch.X86_64, arch.AARCH64} {
		own, ok := qemuArchSyscalls[info.Name]
		if !ok {
			t.Errorf("no qemuArchSyscalls for %s", info.Name)
		}
		for _, n := range append(append(append(slices.Clone(qemuSyscalls), own...), enosysSyscalls...), "clone", "socket") {
			if _, ok := info.SyscallNames[n]; !ok {
				t.Errorf("%s: no %s: move it to qemuArchSyscalls", info.Name, n)
			}
		}
	}
}
