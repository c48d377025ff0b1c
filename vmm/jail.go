package vmm

import (
	"bufio"
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The qemu backend runs qemu jailed (ADR 013, docs/security.md): the VMM
// starts `msb-runtime jail <fd>` in new mount, pid and IPC namespaces with
// a plan on that fd; the helper builds a root holding only what this VM needs,
// pivots into it, keeps the capabilities 9p needs, sets no_new_privs,
// installs msb's allow-list seccomp filter (seccomp.go) and execs qemu,
// which adds its own deny-list filter (-sandbox). Every path
// keeps its host name inside the jail, so qemu's arguments do not change.

// sandboxArg is qemu's seccomp filter: no obsolete calls, no set*id, no
// fork or exec, no scheduler or resource changes.
const sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// jailCaps are the capabilities qemu keeps: what 9p passthrough
// (security_model=none) needs to act for every guest user on the shares:
// set owners, bypass permission checks, change modes and times of files
// it does not own, keep set-group-ID bits. Not CAP_MKNOD (device nodes in
// a share would open host devices), CAP_SETFCAP, CAP_SYS_ADMIN.
var jailCaps = []int{unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_FSETID}

// capNames names jailCaps in logs.
var capNames = map[int]string{unix.CAP_CHOWN: "chown", unix.CAP_DAC_OVERRIDE: "dac_override", unix.CAP_FOWNER: "fowner", unix.CAP_FSETID: "fsetid"}

func capList(caps []int) string {
	var s []string
	for _, c := range caps {
		if n, ok := capNames[c]; ok {
			s = append(s, n)
		} else {
			s = append(s, fmt.Sprint(c))
		}
	}
	return strings.Join(s, ",")
}

// jailDevices are the device nodes the jail holds besides /dev/kvm.
var jailDevices = []string{"/dev/null", "/dev/zero", "/dev/urandom"}

// jailDir is the empty directory in the VM's state dir that the jail's
// root is mounted on (only inside the jail's mount namespace).
const jailDir = "jail"

// jailPlan is what the jail helper gets on its plan fd: JSON, never argv.
type jailPlan struct {
	// Root is an empty host directory the jail's tmpfs root is mounted on.
	Root string `json:"root"`
	// HostMountNS is the VMM's mount namespace (its /proc/self/ns/mnt
	// link): the helper refuses to build a jail in it.
	HostMountNS string     `json:"hostMountNS"`
	Binds       []jailBind `json:"binds"`
	// Caps are the capability numbers kept; all others are dropped from
	// every set, the bounding set included.
	Caps []int `json:"caps"`
	// Pdeathsig is the program's parent-death signal (its parent is the
	// jail's creator).
	Pdeathsig int `json:"pdeathsig,omitempty"`
	// Seccomp installs qemu's allow-list seccomp filter (seccomp.go) right
	// before the exec.
	Seccomp bool `json:"seccomp,omitempty"`
	// Path is the program to exec, Args its argv (Args[0] included), Env
	// its whole environment.
	Path string   `json:"path"`
	Args []string `json:"args"`
	Env  []string `json:"env,omitempty"`
	// UserNSFD, when not 0, is the fd of the user namespace the program
	// runs in as root (ADR 022); binds marked IDMap are id-mapped with it.
	// 0: the program stays root of the host's user namespace.
	UserNSFD int `json:"userNSFD,omitempty"`
	// HostIDs: that namespace maps the host's ids to themselves (jailMap):
	// binds are not id-mapped, and the program runs as its id
	// JailIDBase, not as its root (host root), with the capabilities
	// ambient.
	HostIDs bool `json:"hostIDs,omitempty"`
	// BuiltFD, when not 0, is a pipe's write end: the helper writes a byte
	// on it and closes it once the jail is built, before it execs (the VMM
	// then mirrors the propagated shares' submounts into the jail).
	BuiltFD int `json:"builtFD,omitempty"`
}

// jailBind is one host path made visible at the same path in the jail.
type jailBind struct {
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

// qemuJailPlan lists what qemu needs for c: its binary, libraries, data
// and module dirs, the guest image, shares, disks, its sockets and a few
// devices. bin is qemu's path as found on PATH.
func qemuJailPlan(c *LaunchConfig, bin, chanSock string, kvm bool, args []string) (*jailPlan, error) {
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w (install qemu-system-x86 or set qemu in /etc/msb/config.toml)", bin, err)
	}
	p := &jailPlan{Root: filepath.Join(c.RuntimeDir, jailDir), Caps: jailCaps, Seccomp: true, Path: real,
		Args: append([]string{real}, args...)}
	add := func(b jailBind) { p.Binds = append(p.Binds, b) }
	libs, err := sharedLibs(real)
	if err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	for _, l := range append([]string{real}, libs...) {
		add(jailBind{Path: l, ReadOnly: true, Exec: true})
	}
	if _, err := os.Stat("/etc/ld.so.cache"); err == nil {
		add(jailBind{Path: "/etc/ld.so.cache", ReadOnly: true})
	}
	// qemu finds firmware and modules relative to its binary, then in its
	// configured dirs (the same on distribution builds).
	prefix := filepath.Dir(filepath.Dir(real))
	mods, _ := filepath.Glob(filepath.Join(prefix, "lib", "*", "qemu"))
	for _, d := range append(mods, filepath.Join(prefix, "lib", "qemu"), filepath.Join(prefix, "lib64", "qemu")) {
		if isDir(d) {
			add(jailBind{Path: d, ReadOnly: true, Exec: true})
		}
	}
	if d := filepath.Join(prefix, "share", "qemu"); isDir(d) {
		add(jailBind{Path: d, ReadOnly: true})
		for _, t := range linksOutside(d) {
			add(jailBind{Path: t, ReadOnly: true})
		}
	}
	for _, f := range []string{c.Kernel, c.Initrd, c.RootDisk, c.Modules} {
		if f != "" {
			add(jailBind{Path: f, ReadOnly: true})
		}
	}
	for _, s := range c.Shares {
		if s.Shifted {
			add(jailBind{Path: s.Path, ReadOnly: s.ReadOnly})
		}
	}
	for _, p := range qemuIDMapped(c, chanSock) {
		b := jailBind{Path: p, IDMap: true}
		for _, s := range c.Shares {
			if s.Path == p {
				b.ReadOnly = b.ReadOnly || s.ReadOnly
				b.Mirrored = b.Mirrored || s.Propagated
				b.File = cmp.Or(b.File, s.IDMappedFile)
			}
		}
		for _, d := range c.Disks {
			if d.Path == p {
				st, err := os.Stat(d.Path)
				b.ReadOnly, b.Dev = d.ReadOnly, err == nil && st.Mode()&fs.ModeDevice != 0
			}
		}
		add(b)
	}
	devs := jailDevices
	if kvm {
		devs = append(devs[:len(devs):len(devs)], kvmDevice)
	}
	for _, d := range devs {
		add(jailBind{Path: d, Dev: true})
	}
	return p, nil
}

// qemuIDMapped lists the paths qemu writes or connects to, which the jail
// binds id-mapped: the VM's shares, disks and sockets.
func qemuIDMapped(c *LaunchConfig, chanSock string) []string {
	var ps []string
	for _, s := range c.Shares {
		if !s.Shifted {
			ps = append(ps, s.Path)
		}
	}
	for _, d := range c.Disks {
		ps = append(ps, d.Path)
	}
	return append(ps, chanSock, consoleSocket(c))
}

// idmappable checks that each path (with what is mounted below it, except
// for the stage dirs in alone, whose one submount is id-mapped already)
// can be id-mapped with userns, as the jail will: overlayfs, 9p, NFS and
// most FUSE filesystems cannot be.
func idmappable(paths []string, alone map[string]bool, userns *os.File) error {
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

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// linksOutside returns the targets of dir's symlinks that lie outside dir
// (distributions link firmware from other packages' dirs).
func linksOutside(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		t, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err == nil && !strings.HasPrefix(t, dir+"/") {
			out = append(out, t)
		}
	}
	return out
}

// sharedLibs lists the libraries bin loads, as its dynamic loader resolves
// them (`ld.so --list`, what ldd runs), the loader included; none for a
// static binary.
func sharedLibs(bin string) ([]string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: the jail runs qemu's own binary, not a wrapper script; set qemu to the binary, or jail = false in /etc/msb/config.toml", bin, err)
	}
	defer f.Close()
	interp := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("%s: read its loader: %w", bin, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	if interp == "" {
		return nil, nil
	}
	var stderr bytes.Buffer
	cmd := exec.Command(interp, "--list", bin)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list %s: %w: %s", interp, bin, err, strings.TrimSpace(stderr.String()))
	}
	return parseLibList(out, interp)
}

// parseLibList reads the loader's --list output: "name => /path (0x…)",
// "/path (0x…)" for the loader, "name (0x…)" for the vDSO.
func parseLibList(out []byte, interp string) ([]string, error) {
	libs := []string{interp}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, p, ok := strings.Cut(line, " => "); ok {
			line = p
		}
		p, _, _ := strings.Cut(line, " (")
		switch {
		case p == "not found":
			return nil, fmt.Errorf("a library is missing: %s", sc.Text())
		case strings.HasPrefix(p, "/") && p != interp:
			libs = append(libs, p)
		}
	}
	return libs, nil
}

// jailCommand is exec.Cmd for the jail helper that runs plan: this binary
// (msb-runtime, or a test binary) with `jail <fd>`, in new mount, pid, IPC
// and network namespaces, the plan on the fd after the taps, userns
// (nil: qemu stays root of the host's user namespace) and built (nil:
// none, else jailPlan.BuiltFD's pipe) on the next. The caller closes the
// returned plan file once the helper started.
func jailCommand(plan *jailPlan, taps []*os.File, userns, built *os.File) (*exec.Cmd, *os.File, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("jail: find this binary: %w", err)
	}
	// This thread's: the VMM's main thread is in another (view.go).
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
