package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Main is the jail helper (`msb-runtime jail <fd>`, started by the VMM
// process in new mount, pid, IPC and network namespaces): it reads its
// plan from fd, builds the jail, drops privileges and execs the plan's
// program. With a user namespace in the plan it execs itself once more
// after the jail is built: that second stage joins the namespace before
// its runtime starts (userns_cgo.go) and then drops privileges and
// execs the program. It returns (an exit code) only when it failed.
func Main(fdArg string) int {
	// Capabilities and no_new_privs are per thread: set them on the thread
	// that execs.
	runtime.LockOSThread()
	p, f, err := readPlan(fdArg)
	switch {
	case err != nil:
	case os.Getenv(userNSEnv) != "": // the second stage, in the namespace
		f.Close()
		err = execJailed(p, true)
	default:
		if err = enterJail(p); err != nil {
			break
		}
		if p.BuiltFD != 0 {
			built := os.NewFile(uintptr(p.BuiltFD), "jail-built")
			_, err = built.Write([]byte{1})
			if cerr := built.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				err = fmt.Errorf("tell the VMM the jail is built: %w", err)
				break
			}
		}
		if p.UserNSFD == 0 {
			f.Close()
			err = execJailed(p, false)
			break
		}
		// The plan fd stays open for the second stage, read again.
		if _, err = f.Seek(0, 0); err == nil {
			env := []string{fmt.Sprintf("%s=%d", userNSEnv, p.UserNSFD)}
			err = unix.Exec("/proc/self/exe", []string{"msb-jail", "jail", fdArg}, env)
			err = fmt.Errorf("exec the jail's second stage: %w", err)
		}
	}
	fmt.Fprintf(os.Stderr, "msb-jail: %v\n", err)
	return 1
}

// userNSEnv names the user namespace's fd for the jail helper's second
// stage; its C constructor joins that namespace.
const userNSEnv = "_MSB_JAIL_USERNS_FD"

// rlimits bound the jailed program: no core dumps (they would hold
// guest memory), threads (counted per host user, and each VM has its own)
// for the vCPUs, I/O and 9p workers, open files for 9p's open guest files.
var rlimits = map[int]uint64{
	unix.RLIMIT_CORE:   0,
	unix.RLIMIT_NPROC:  4096,
	unix.RLIMIT_NOFILE: 65536,
}

// execJailed drops to what the plan's program keeps and execs it with the
// plan's environment only. inUserNS checks that the second stage did join
// a user namespace (a build without cgo cannot).
func execJailed(p *Plan, inUserNS bool) error {
	uid := uint32(0)
	if inUserNS {
		// Exactly what NewUserNS writes: the VM's range and kept host ids
		// (mounts.JailMap), never host root; or the host's ids as
		// themselves, as the plan says.
		for _, m := range []string{"/proc/self/uid_map", "/proc/self/gid_map"} {
			b, err := os.ReadFile(m)
			if err != nil {
				return err
			}
			jm, err := parseIDMap(b)
			if err == nil && jm.hostIDs != p.HostIDs {
				err = fmt.Errorf("host ids %v, the plan says %v", jm.hostIDs, p.HostIDs)
			}
			if err != nil {
				return fmt.Errorf("not in the VM's user namespace (%s: %w): %s was built without cgo, rebuild it with CGO_ENABLED=1", m, err, os.Args[0])
			}
			uid = jm.qemuID()
		}
	}
	for r, v := range rlimits {
		var cur unix.Rlimit
		if err := unix.Getrlimit(r, &cur); err == nil && cur.Max < v {
			v = cur.Max // lower only: raising is a host privilege
		}
		if err := unix.Setrlimit(r, &unix.Rlimit{Cur: v, Max: v}); err != nil {
			return fmt.Errorf("rlimit %d: %w", r, err)
		}
	}
	if uid != 0 {
		if err := becomeUser(uid); err != nil {
			return err
		}
	}
	if err := dropPrivileges(p.Caps, uid != 0); err != nil {
		return err
	}
	// The parent-death signal last, on the thread that execs: it is the
	// thread's, a change of credentials clears it, and the thread that
	// got it at fork need not be this one.
	if p.Pdeathsig != 0 {
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(p.Pdeathsig), 0, 0, 0); err != nil {
			return fmt.Errorf("parent-death signal: %w", err)
		}
	}
	if err := installSeccomp(p); err != nil {
		return err
	}
	env := p.Env
	if env == nil {
		env = []string{}
	}
	return fmt.Errorf("exec %s: %w", p.Path, unix.Exec(p.Path, p.Args, env))
}

// readPlan reads the plan on fdArg; the caller closes the returned file.
func readPlan(fdArg string) (*Plan, *os.File, error) {
	fd, err := strconv.Atoi(fdArg)
	if err != nil || fd < 3 {
		return nil, nil, fmt.Errorf("plan fd %q: this command is started by the VMM process, not by hand", fdArg)
	}
	f := os.NewFile(uintptr(fd), "jail-plan")
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err == nil {
		var p Plan
		if err = json.Unmarshal(b, &p); err != nil {
			err = fmt.Errorf("parse plan: %w", err)
		} else if !filepath.IsAbs(p.Root) || !filepath.IsAbs(p.Path) || len(p.Args) == 0 || p.HostMountNS == "" {
			err = errors.New("plan: root, path, args and hostMountNS are required")
		} else {
			return &p, f, nil
		}
	} else {
		err = fmt.Errorf("read plan from fd %d: %w", fd, err)
	}
	f.Close()
	return nil, nil, err
}

// enterJail builds the jail's root on p.Root in this process's mount
// namespace and pivots into it.
func enterJail(p *Plan) error {
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if os.Getpid() != 1 || err != nil || ns == p.HostMountNS {
		return errors.New("not in mount and pid namespaces of its own: refusing to touch the host's mounts")
	}
	// Host mounts still reach the jail (a pod's later members); nothing
	// done here goes back.
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make / a slave: %w", err)
	}
	if err := unix.Mount("tmpfs", p.Root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("jail root on %s: %w", p.Root, err)
	}
	b := &builder{root: p.Root, userns: p.UserNSFD}
	if p.HostIDs {
		b.userns = 0 // its ids are the host's: plain binds
	}
	if err := b.bindAll(p.Binds); err != nil {
		return err
	}
	if err := mountProc(filepath.Join(p.Root, "proc")); err != nil {
		return err
	}
	if err := unix.Chdir(p.Root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount the jail root read-only: %w", err)
	}
	return nil
}

// mountProc mounts this pid namespace's procfs (qemu's 9p server changes
// modes through /proc/self/fd) read-only on dir: only the process dirs
// (subset=pid, Linux 5.8), so no /proc/sys, /proc/sysrq-trigger and the
// like, which root may write without any capability.
func mountProc(dir string) error {
	if err := os.Mkdir(dir, 0o555); err != nil {
		return err
	}
	flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	err := unix.Mount("proc", dir, "proc", flags, "subset=pid")
	if errors.Is(err, unix.EINVAL) { // before Linux 5.8: the whole procfs, read-only
		err = unix.Mount("proc", dir, "proc", flags, "")
	}
	if err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	return nil
}

// becomeUser makes this thread (the one that execs) id of its user
// namespace, keeping its capabilities: the namespace's root would be host
// root in a host-ids namespace (idMap).
func becomeUser(id uint32) error {
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("keep capabilities: %w", err)
	}
	// This thread's credentials only (raw calls, not Go's all-threads
	// ones): it execs next, which ends the others.
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(id), uintptr(id), uintptr(id)); e != 0 {
		return fmt.Errorf("become gid %d of the VM's user namespace: %w", id, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(id), uintptr(id), uintptr(id)); e != 0 {
		return fmt.Errorf("become uid %d of the VM's user namespace: %w", id, e)
	}
	// The change cleared the effective set and kept the permitted one:
	// dropPrivileges needs CAP_SETPCAP in effect.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for i := range data {
		data[i].Effective = data[i].Permitted
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// dropPrivileges keeps only the capabilities keep (bounding set included),
// joins a new session keyring and sets no_new_privs. The exec that follows
// keeps exactly keep: root's permitted set after exec is inheritable |
// bounding; another user's is its ambient set, which ambient makes keep.
func dropPrivileges(keep []int, ambient bool) error {
	var mask uint64
	for _, c := range keep {
		mask |= 1 << uint(c)
	}
	for c := 0; c < 64; c++ {
		if mask&(1<<uint(c)) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // past the kernel's last capability
			}
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	for i := range data {
		v := uint32(mask >> (32 * i))
		data[i] = unix.CapUserData{Effective: v, Permitted: v, Inheritable: v}
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if ambient {
		for _, c := range keep {
			if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0); err != nil {
				return fmt.Errorf("ambient capability %d: %w", c, err)
			}
		}
	}
	// A session keyring of its own, not the VMM's (runc does the same);
	// root's user keyring stays reachable (docs/security.md).
	if _, err := unix.KeyctlJoinSessionKeyring("_ses.msb-jail"); err != nil && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("session keyring: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return nil
}
