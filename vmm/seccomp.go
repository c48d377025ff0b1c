package vmm

import (
	"fmt"
	"slices"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
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
// file I/O on a 9p rootfs and rw volume, a qcow2 virtio-blk disk, a
// network, exec, a pod member joining and a stop (the e2e tests
// TestJailedQEMU, TestEchoAndExitCode, TestNetPod, TestQcow2Disk,
// TestShimPodSharesVM, TestShimRun, TestShimExecPsKillEvents), plus the 9p
// operations a guest may send that those did not (link, rename, mknod,
// xattrs, statfs, fsync) and what qemu calls under KVM.

// qemuSyscalls are qemu's syscalls, hottest first (the filter compares in
// order). Those of one arch only are in qemuArchSyscalls.
var qemuSyscalls = []string{
	// The main loop, vCPU and I/O threads (TCG and KVM).
	"ppoll", "futex", "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
	"ioctl", "recvmsg", "sendmsg", "lseek", "timerfd_settime", "clock_nanosleep", "nanosleep",
	"rt_sigtimedwait", "rt_sigprocmask", "rt_sigreturn", "rt_sigaction", "sigaltstack",
	"madvise", "mmap", "munmap", "mprotect", "mremap", "brk", "membarrier",
	"eventfd2", "signalfd4", "epoll_create1", "epoll_ctl", "epoll_pwait",
	"fcntl", "close", "dup", "dup3", "pipe2",
	// 9p passthrough on the shares (hw/9pfs/9p-local.c, 9p-util.c).
	"openat", "fstat", "statx", "getdents64", "fchdir", "mkdirat", "mknodat",
	"symlinkat", "linkat", "renameat", "renameat2", "unlinkat", "readlinkat", "fchmod", "fchmodat",
	"fchownat", "fchown", "utimensat", "ftruncate", "fallocate", "fsync", "fdatasync",
	"statfs", "fstatfs", "fgetxattr", "fsetxattr", "flistxattr", "fremovexattr",
	"lgetxattr", "lsetxattr", "llistxattr", "lremovexattr", "getxattr", "setxattr", "listxattr", "removexattr",
	"name_to_handle_at", "copy_file_range", "flock",
	// Sockets: qemu connects to the agent channel's and the console's Unix
	// sockets (socket only for AF_UNIX, in qemuSeccompPolicy); the taps
	// are fds.
	"connect", "recvfrom", "sendto", "getsockopt", "setsockopt", "getsockname", "getpeername", "shutdown",
	// Threads (clone: see qemuSeccompPolicy) and process housekeeping.
	"set_robust_list", "rseq", "set_tid_address", "gettid", "getpid", "tgkill", "exit", "exit_group",
	"prctl", "sched_getaffinity", "sched_yield", "getrandom", "memfd_create",
	"get_mempolicy", "set_mempolicy", "mbind", "sysinfo", "uname", "prlimit64", "getrusage",
	"clock_gettime", "clock_getres", "gettimeofday", "timerfd_create", "getcwd", "umask",
	"getuid", "geteuid", "getgid", "getegid", "faccessat", "faccessat2", "readlinkat",
	// qemu installs its own filter (-sandbox) and probes with it.
	"seccomp",
	// The jail helper's exec of qemu; qemu's spawn=deny kills any later one.
	"execve",
}

// qemuArchSyscalls are the calls of one arch only (by the Linux arch name
// go-seccomp-bpf uses): x86_64's legacy ones, which glibc and qemu still
// use there and arm64 never had, and arm64's name for newfstatat.
var qemuArchSyscalls = map[string][]string{
	"x86_64": {"newfstatat", "arch_prctl", "epoll_wait", "access", "readlink", "open", "stat", "lstat", "poll",
		"pipe", "dup2", "mkdir", "rmdir", "unlink", "rename", "symlink", "link", "chmod", "chown", "lchown",
		"utimes", "epoll_create", "time"},
	"aarch64": {"fstatat"},
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
	// Argument checks: a clone makes a thread, never a process; a socket
	// is a Unix one (no netlink, packet or inet socket in whatever
	// network namespace qemu is in).
	checked := []seccomp.NameWithConditions{
		{Name: "clone", Conditions: []seccomp.Condition{{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD}}},
		{Name: "socket", Conditions: []seccomp.Condition{{Argument: 0, Operation: seccomp.Equal, Value: unix.AF_UNIX}}},
	}
	return seccomp.Policy{
		DefaultAction: seccomp.ActionKillProcess,
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionAllow, Names: allow, NamesWithCondtions: checked},
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

// installSeccomp installs qemu's allow-list on the calling thread when p
// asks for it (every qemu jail does; TestJail jails a Go test binary,
// which needs other calls). The thread must exec next: only it carries the
// filter (no TSYNC), and the exec makes it the whole process. It sets
// no_new_privs itself, which the kernel requires of a process without
// CAP_SYS_ADMIN.
func installSeccomp(p *jailPlan) error {
	if !p.Seccomp {
		return nil
	}
	pol, err := qemuSeccompPolicy()
	if err == nil {
		err = seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Policy: pol})
	}
	if err != nil {
		return fmt.Errorf("qemu's seccomp allow-list: %w", err)
	}
	return nil
}
