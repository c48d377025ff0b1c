// Package jail is the jail a hypervisor runs in (ADR 013,
// docs/security.md), as Firecracker's jailer is: the VMM process plans
// what the program needs (a Plan) and starts this package's helper
// (`msb-runtime jail <fd>`, Main) with Command in new mount, pid, IPC and
// network namespaces; the helper builds a root holding only the plan's
// paths, pivots into it, joins the VM's user namespace (NewUserNS, IDs,
// ADR 022), keeps the plan's capabilities, sets no_new_privs, installs
// qemu's allow-list seccomp filter (seccomp.go) and execs the program.
// Every path keeps its host name inside the jail, so the program's
// arguments do not change. Creators find a running jail's namespaces with
// OpenNS. The package knows nothing of the VMM's launch config.
package jail

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// Plan is what the jail helper gets on its plan fd: JSON, never argv.
type Plan struct {
	// Root is an empty host directory the jail's tmpfs root is mounted on.
	Root string `json:"root"`
	// HostMountNS is the VMM's mount namespace (its /proc/self/ns/mnt
	// link): the helper refuses to build a jail in it.
	HostMountNS string `json:"hostMountNS"`
	Binds       []Bind `json:"binds"`
	// Caps are the capability numbers kept; all others are dropped from
	// every set, the bounding set included.
	Caps []int `json:"caps"`
	// Pdeathsig is the program's parent-death signal (its parent is the
	// jail's creator).
	Pdeathsig int `json:"pdeathsig,omitempty"`
	// Seccomp installs qemu's allow-list seccomp filter (seccomp.go) right
	// before the exec.
	Seccomp bool `json:"seccomp,omitempty"`
	// PrivateRAM (with Seccomp): the filter answers qemu's hole punches
	// (fallocate PUNCH_HOLE|KEEP_SIZE) with success, unperformed. For a
	// VM started from a template (ADR 025), whose RAM is a copy-on-write
	// mapping of a memfd sealed against writes: qemu 7.2 drops a page of
	// a file-backed RAM block by punching the file, then madvise
	// (DONTNEED); the seal refuses the punch, and qemu would stop there
	// with the page still held. Faked, it goes on to the madvise, which
	// frees the VM's private copy: free page reporting and the balloon
	// give memory back. Such a VM has no writable disk, the one other
	// user of that call.
	PrivateRAM bool `json:"privateRAM,omitempty"`
	// Path is the program to exec, Args its argv (Args[0] included), Env
	// its whole environment.
	Path string   `json:"path"`
	Args []string `json:"args"`
	Env  []string `json:"env,omitempty"`
	// UserNSFD, when not 0, is the fd of the user namespace the program
	// runs in as root (ADR 022); binds marked IDMap are id-mapped with it.
	// 0: the program stays root of the host's user namespace.
	UserNSFD int `json:"userNSFD,omitempty"`
	// HostIDs: that namespace maps the host's ids to themselves (idMap):
	// binds are not id-mapped, and the program runs as its id
	// IDBase, not as its root (host root), with the capabilities
	// ambient.
	HostIDs bool `json:"hostIDs,omitempty"`
	// BuiltFD, when not 0, is a pipe's write end: the helper writes a byte
	// on it and closes it once the jail is built, before it execs (the VMM
	// then mirrors the propagated shares' submounts into the jail).
	BuiltFD int `json:"builtFD,omitempty"`
}

// Bind is one host path made visible at the same path in the jail.
type Bind struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Exec allows executing and mapping code from it (the program and its
	// libraries); everything else is noexec.
	Exec bool `json:"exec,omitempty"`
	// Dev keeps device nodes usable (devices, a block-device disk);
	// everything else is nodev. Nothing is suid.
	Dev bool `json:"dev,omitempty"`
	// IDMap makes the bind id-mapped with the plan's user namespace, so
	// that its files' owners are ids of that namespace (shares, disks and
	// sockets, which qemu writes or connects to as root of it). Others
	// are read through their permissions for everyone.
	IDMap bool `json:"idmap,omitempty"`
	// Mirrored binds an id-mapped path's own mount alone, private: a
	// propagated share, whose submounts the VMM process mirrors into the
	// jail id-mapped (mounts.MirrorBound), those there at the start
	// included. A mount that propagated into an id-mapped bind would not
	// be id-mapped.
	Mirrored bool `json:"mirrored,omitempty"`
	// File names a file in an id-mapped Path whose mount is id-mapped
	// already (Share.IDMappedFile): Path's own mount is bound id-mapped,
	// and that file's mount on it as it is.
	File string `json:"file,omitempty"`
}

// IDMappable checks that each path (with what is mounted below it, except
// for the stage dirs in alone, whose one submount is id-mapped already)
// can be id-mapped with userns, as the jail will: overlayfs, 9p, NFS and
// most FUSE filesystems cannot be.
func IDMappable(paths []string, alone map[string]bool, userns *os.File) error {
	for _, p := range paths {
		flags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_RECURSIVE
		if alone[p] {
			flags &^= unix.AT_RECURSIVE
		}
		tree, err := unix.OpenTree(unix.AT_FDCWD, p, uint(flags))
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		err = unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())})
		unix.Close(tree)
		if err != nil {
			return fmt.Errorf("%s is on %s, which cannot be id-mapped (%w)", p, fsType(p), err)
		}
	}
	return nil
}

// Command is exec.Cmd for the jail helper that runs plan: this binary
// (msb-runtime, or a test binary) with `jail <fd>`, in new mount, pid, IPC
// and network namespaces, the plan on the fd after the taps, userns
// (nil: qemu stays root of the host's user namespace) and built (nil:
// none, else Plan.BuiltFD's pipe) on the next. The caller closes the
// returned plan file once the helper started.
func Command(plan *Plan, taps []*os.File, userns, built *os.File) (*exec.Cmd, *os.File, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("jail: find this binary: %w", err)
	}
	// This thread's: the VMM's main thread is in another (package view).
	if plan.HostMountNS, err = os.Readlink("/proc/thread-self/ns/mnt"); err != nil {
		return nil, nil, fmt.Errorf("jail: %w", err)
	}
	if err := os.MkdirAll(plan.Root, 0o700); err != nil {
		return nil, nil, fmt.Errorf("jail: %w", err)
	}
	fd := 3 + len(taps) // the plan's; the user namespace's and built's are next
	next := fd
	plan.UserNSFD, plan.BuiltFD = 0, 0
	if userns != nil {
		next++
		plan.UserNSFD = next
	}
	if built != nil {
		next++
		plan.BuiltFD = next
	}
	b, err := json.Marshal(plan)
	if err != nil {
		return nil, nil, err
	}
	mfd, err := unix.MemfdCreate("msb-jail-plan", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("jail plan: %w", err)
	}
	f := os.NewFile(uintptr(mfd), "jail-plan")
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("jail plan: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("jail plan: %w", err)
	}
	extra := append(append([]*os.File{}, taps...), f)
	for _, f := range []*os.File{userns, built} {
		if f != nil {
			extra = append(extra, f)
		}
	}
	cmd := exec.Command(self, "jail", fmt.Sprint(fd))
	cmd.ExtraFiles = extra
	// qemu is pid 1 of its own pid namespace: it sees (in its /proc) and
	// reaches (kill, ptrace) no other process, other VMs' qemu included;
	// it has no share in the host's System V IPC objects; and its network
	// namespace is empty: it reaches the network only through its taps,
	// which are fds (no host or container address, no abstract sockets).
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET}
	return cmd, f, nil
}
