package jail

import (
	"fmt"
	"slices"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// qemu's allow-list seccomp filter (docs/security.md, "Seccomp"). The jail
// helper installs it on the thread that execs qemu, after no_new_privs, so
// it holds from qemu's first instruction (its dynamic loader) on; qemu's
// own -sandbox deny-list stacks on top (a process has both: Seccomp_filters
// 2). Any syscall not listed kills the whole qemu (SECCOMP_RET_KILL_PROCESS)
// at once, which the kernel logs (audit type=1326, with the syscall's
// number) and the VMM names as the VM's end ("the hypervisor was killed
// (signal: bad system call)"). A syscall of another ABI (x86's 32-bit
// int 0x80, x32) is refused the same way: the filter checks the arch first.
//
// The list was measured, as Firecracker derives its filters: strace -f of
// Debian 12's qemu-system-x86_64 7.2 under TCG, jailed, through a boot,
// file I/O on a 9p rootfs and rw volume (every kind of file operation), a
// qcow2 virtio-blk disk, a network, exec, a pod member joining and a stop
// (the e2e tests TestJailedQEMU, TestEchoAndExitCode, TestQcow2Disk,
// TestNetPod, TestShimRun, TestShimPodSharesVM; docs/security.md). The
// few calls those runs did not reach are listed apart, each with why.

// QEMUSandbox is qemu's own seccomp filter, its -sandbox argument, which
// stacks on the allow-list: no obsolete calls, no set*id, no fork or exec,
// no scheduler or resource changes.
const QEMUSandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// qemuSyscalls are qemu's calls, hottest first as measured (the filter
// compares in order), then the unmeasured ones. Calls of one arch only
// are in qemuArchSyscalls.
var qemuSyscalls = []string{
	// Measured (fchdir: qemu starting outside a jail, TestQEMUSeccomp).
	"futex", "ppoll", "write", "read", "mprotect", "openat", "close", "sendmsg", "madvise", "fcntl",
	"mmap", "pread64", "rt_sigprocmask", "brk", "ioctl", "preadv", "clock_nanosleep", "recvmsg",
	"munmap", "lseek", "fstatfs", "seccomp", "readlinkat", "rt_sigaction", "set_robust_list", "rseq",
	"getrandom", "prctl", "eventfd2", "getdents64", "writev", "pwrite64", "prlimit64", "statfs",
	"sched_getaffinity", "set_mempolicy", "memfd_create", "epoll_create1", "connect", "getpeername",
	"getsockname", "setsockopt", "gettid", "fchownat", "pwritev", "fdatasync", "execve", "set_tid_address",
	"get_mempolicy", "sysinfo", "signalfd4", "mremap", "unlinkat", "mkdirat", "utimensat", "fallocate",
	"mknodat", "symlinkat", "ftruncate", "fsync", "linkat", "fchdir",
	// (clone and socket: with argument checks, in qemuFilter.)

	// Not measured. qemu's own exit (a guest power-off with -no-reboot;
	// the runs stopped it by signal) and its threads' ends.
	"exit_group", "exit",
	// A signal handler's return (SIGTERM; under KVM the vCPU kick, sent
	// with tgkill) and the kernel's restart of an interrupted sleep.
	"rt_sigreturn", "tgkill", "restart_syscall",
	// The clock, where the vDSO falls back to the syscall (a clocksource
	// it cannot read, as on some VMs).
	"clock_gettime", "clock_getres", "gettimeofday",
	// qemu's main loop moves from ppoll to epoll past 64 fds.
	"epoll_ctl", "epoll_pwait",
	// 9p's xattr requests (a guest's getfattr/setfattr), through
	// /proc/self/fd paths.
	"lgetxattr", "lsetxattr", "llistxattr", "lremovexattr",
	// VM templates (ADR 025; measured): saving to and loading from an fd,
	// whose kind qemu's fd channel asks first.
	"getsockopt", "readv", "fadvise64",
	// The jail helper's Go runtime between installing the filter and the
	// exec (besides futex, mmap, write, prlimit64 and the like above).
	"sched_yield", "nanosleep", "getpid", "sigaltstack",
}

// qemuArchSyscalls are the calls of one arch only, by the Linux arch name
// go-seccomp-bpf uses: x86_64's legacy calls glibc and qemu use there
// (measured; poll: glib's g_poll on the QMP monitor's chardev) and arm64's
// calls for the same (not measured; glibc's poll is ppoll there).
var qemuArchSyscalls = map[string][]string{
	"x86_64":  {"newfstatat", "access", "chmod", "arch_prctl", "readlink", "renameat", "time", "poll"},
	"aarch64": {"fstatat", "faccessat", "faccessat2", "fchmodat", "renameat2"},
}

// enosysSyscalls are refused with ENOSYS, not killed: callers fall back.
// clone3 carries its flags behind a pointer the filter cannot read, so
// glibc is made to create threads with clone, whose flags it can (only
// with CLONE_THREAD: no new process). io_uring's operations bypass
// seccomp altogether; qemu falls back to ppoll/epoll and aio=threads.
var enosysSyscalls = []string{"clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"}

// qemuSeccompPolicy is the allow-list for the arch this binary runs on.
func qemuSeccompPolicy() (seccomp.Policy, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return seccomp.Policy{}, err
	}
	own, ok := qemuArchSyscalls[info.Name]
	if !ok {
		return seccomp.Policy{}, fmt.Errorf("no allow-list for %s (only x86_64 and aarch64 have one)", info.Name)
	}
	allow := append(slices.Clone(qemuSyscalls), own...)
	allow = dedup(allow)
	return seccomp.Policy{
		DefaultAction: seccomp.ActionKillProcess,
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionAllow, Names: allow},
			{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: enosysSyscalls},
		},
	}, nil
}

// dedup drops later repeats of a name, keeping the first's place.
func dedup(names []string) []string {
	seen := map[string]bool{}
	return slices.DeleteFunc(names, func(n string) bool {
		if seen[n] {
			return true
		}
		seen[n] = true
		return false
	})
}

// punchHole is the fallocate mode qemu drops a page of file-backed RAM
// with (Plan.PrivateRAM).
const punchHole = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE

// qemuFilter is the filter program: the calls whose arguments it checks,
// then the policy's lists. The checks are assembled here: after an
// argument check go-seccomp-bpf goes on comparing the argument as if it
// were the syscall number, and it makes an errno of 0 EPERM. A check
// either returns or falls through to the policy's program, which loads
// the arch and the number again first.
//
//   - clone: only with CLONE_THREAD (a thread, never a process);
//   - socket: only AF_UNIX (no netlink, packet or inet socket in
//     whatever network namespace qemu is in);
//   - fallocate, with privateRAM: a hole punch returns 0 unperformed
//     (Plan.PrivateRAM); any other mode is the list's (allowed).
func qemuFilter(privateRAM bool) ([]bpf.Instruction, error) {
	pol, err := qemuSeccompPolicy()
	if err != nil {
		return nil, err
	}
	lists, err := pol.Assemble()
	if err != nil {
		return nil, err
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, err
	}
	var (
		allow = bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}
		kill  = bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS}
		noop  = bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO} // errno 0: returns 0
	)
	// struct seccomp_data: nr at 0, arch at 4, the arguments from 16, 8
	// bytes each, the low word first (both arches are little-endian).
	lo := func(arg uint32) bpf.Instruction { return bpf.LoadAbsolute{Off: 16 + 8*arg, Size: 4} }
	hi := func(arg uint32) bpf.Instruction { return bpf.LoadAbsolute{Off: 16 + 8*arg + 4, Size: 4} }
	type check struct {
		name string
		body []bpf.Instruction // returns, or runs off its end to the lists
	}
	checks := []check{
		{"clone", []bpf.Instruction{
			lo(0), bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: unix.CLONE_THREAD, SkipFalse: 1}, allow, kill,
		}},
		{"socket", []bpf.Instruction{
			hi(0), bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipFalse: 3},
			lo(0), bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AF_UNIX, SkipFalse: 1}, allow, kill,
		}},
	}
	if privateRAM {
		checks = append(checks, check{"fallocate", []bpf.Instruction{
			hi(1), bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipFalse: 3},
			lo(1), bpf.JumpIf{Cond: bpf.JumpEqual, Val: punchHole, SkipFalse: 1}, noop,
		}})
	}
	var body []bpf.Instruction
	for _, c := range checks {
		nr, ok := info.SyscallNames[c.name]
		if !ok {
			return nil, fmt.Errorf("no %s on %s", c.name, info.Name)
		}
		body = append(body, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(nr), SkipFalse: uint8(len(c.body))})
		body = append(body, c.body...)
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4},
		// Another arch: the lists' program refuses it.
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipFalse: uint8(1 + len(body))},
		bpf.LoadAbsolute{Off: 0, Size: 4},
	}
	prog = append(prog, body...)
	return append(prog, lists...), nil
}

// installSeccomp installs qemu's allow-list on the calling thread when p
// asks for it (every qemu jail does; TestJail jails a Go test binary,
// which needs other calls). The thread must exec next: only it carries the
// filter (no TSYNC), and the exec makes it the whole process. It sets
// no_new_privs itself, which the kernel requires of a process without
// CAP_SYS_ADMIN.
func installSeccomp(p *Plan) error {
	if !p.Seccomp {
		return nil
	}
	if err := loadFilter(p.PrivateRAM); err != nil {
		return fmt.Errorf("qemu's seccomp allow-list: %w", err)
	}
	return nil
}

// loadFilter sets no_new_privs and installs qemuFilter on the calling
// thread (the seccomp(2) call go-seccomp-bpf's LoadFilter makes, for a
// program it did not assemble alone).
func loadFilter(privateRAM bool) error {
	insts, err := qemuFilter(privateRAM)
	if err != nil {
		return err
	}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return err
	}
	f := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		f[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}
