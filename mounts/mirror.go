package mounts

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// A propagated bind ("rslave", "rshared", …: a pod member's, made by the
// shim, or a VM's own, made by its jail and mirrored by the VMM process)
// sees what the host mounts below its source later. Mounts that propagate into an
// id-mapped bind are not id-mapped, so a jailed qemu (ADR 022), root of
// its own user namespace only, would see their files owned by the
// overflow id and could read nothing their modes keep from others. A
// Mirror keeps such a bind in step instead: the bind is of the source's
// own mount alone, private in the jail (nothing propagates into it), and
// each mount below the source on the host, there at the start or
// appearing later, is cloned alone, id-mapped like the bind, and
// attached at the same place in the jail; one that goes on the host is
// detached there. Host to container only: what the guest mounts never
// reaches the host (as before).

// mirrorPoll is how often a Mirror looks at the host's mounts when the
// kernel's change notice on mountinfo did not wake it. That notice is
// not always seen: a host mount reached the jail 0.5-0.6 s late, on this
// tick, when it was 1 s, after critest's exec had listed the directory
// (its rslave spec). A look is one read of mountinfo.
const mirrorPoll = 200 * time.Millisecond

// Mirror is a propagated bind kept in step with the host's mounts below
// its source.
type Mirror struct {
	ns            *os.File
	root, rel     string
	src           *os.File // the source, opened; its path is its kernel name
	srcPath       string
	access        Access
	idmap         *IDMap
	logf          func(format string, args ...any)
	stop, done    chan struct{}
	mirrored      map[string]mirrored // by path below the source
	mountinfoFile *os.File
}

// mirrored is one mount below the source: the host's ID, and the ID of
// its clone in the jail (0: none, it could not be mirrored).
type mirrored struct{ host, jail int }

// MirrorBeneathIn binds source's own mount (not its submounts), private,
// on the new directory rel below root in ns, as BindBeneathIn does, and
// keeps the mounts below it, those there now included, in step with the
// host's until Stop. logf reports what could not be mirrored.
func MirrorBeneathIn(ns *os.File, root, rel, source string, access Access, idmap *IDMap, logf func(string, ...any)) (*Mirror, error) {
	m, err := newMirror(ns, root, rel, source, access, idmap, logf)
	if err != nil {
		return nil, err
	}
	tree, err := m.clone(int(m.src.Fd()), "", true)
	if err == nil {
		err = attachBeneathIn(ns, root, rel, tree, source)
		unix.Close(tree)
	}
	if err != nil {
		m.close()
		return nil, err
	}
	m.start()
	return m, nil
}

// MirrorBound keeps the mounts below source in step with the host's in a
// bind of source that is already at rel below root in ns: one of
// source's own mount alone, private (a jail's, package vmm). It fails,
// leaving nothing, when rel is not a mount's root there.
func MirrorBound(ns *os.File, root, rel, source string, access Access, idmap *IDMap, logf func(string, ...any)) (*Mirror, error) {
	m, err := newMirror(ns, root, rel, source, access, idmap, logf)
	if err != nil {
		return nil, err
	}
	err = InMountNS(ns, func() error {
		fd, err := m.openInJail("")
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if !isMountRoot(fd, -1) {
			return fmt.Errorf("%s below %s is not a mount's root", rel, root)
		}
		return nil
	})
	if err != nil {
		m.close()
		return nil, fmt.Errorf("mirror %s: %w", source, err)
	}
	m.start()
	return m, nil
}

// newMirror opens what a Mirror holds; the caller closes it on error.
func newMirror(ns *os.File, root, rel, source string, access Access, idmap *IDMap, logf func(string, ...any)) (*Mirror, error) {
	src, err := os.OpenFile(source, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", source, err)
	}
	m := &Mirror{root: root, rel: rel, src: src, access: access, idmap: idmap, logf: logf,
		stop: make(chan struct{}), done: make(chan struct{}), mirrored: map[string]mirrored{}}
	fail := func(err error) (*Mirror, error) {
		m.close()
		return nil, err
	}
	if m.srcPath, err = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(src.Fd()))); err != nil {
		return fail(err)
	}
	if m.ns, err = dup(ns); err != nil {
		return fail(err)
	}
	if idmap != nil && idmap.NS != nil {
		userns, err := dup(idmap.NS)
		if err != nil {
			return fail(err)
		}
		m.idmap = &IDMap{UIDs: idmap.UIDs, GIDs: idmap.GIDs, NS: userns}
	}
	// This thread's namespace: the VMM's main thread is in another
	// (view/view.go).
	if m.mountinfoFile, err = os.Open("/proc/thread-self/mountinfo"); err != nil {
		return fail(err)
	}
	return m, nil
}

// start mirrors what is below the source now, before it returns, then
// keeps doing so until Stop.
func (m *Mirror) start() {
	if err := m.sync(); err != nil {
		m.logf("mirror of %s: %v", m.srcPath, err)
	}
	go m.run()
}

func dup(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// Stop ends the mirroring (the bind stays; it goes with its unmount).
func (m *Mirror) Stop() {
	if m == nil {
		return
	}
	close(m.stop)
	<-m.done
	m.close()
}

func (m *Mirror) close() {
	for _, f := range []*os.File{m.src, m.ns, m.mountinfoFile} {
		if f != nil {
			f.Close()
		}
	}
	if m.idmap != nil && m.idmap.NS != nil {
		m.idmap.NS.Close()
	}
}

func (m *Mirror) run() {
	defer close(m.done)
	for {
		// mountinfo polls POLLPRI when the namespace's mounts changed
		// since it was last read.
		fds := []unix.PollFd{{Fd: int32(m.mountinfoFile.Fd()), Events: unix.POLLPRI}}
		deadline := time.Now().Add(mirrorPoll)
		for time.Now().Before(deadline) {
			select {
			case <-m.stop:
				return
			default:
			}
			n, _ := unix.Poll(fds, 100)
			if n > 0 {
				break
			}
		}
		if err := m.sync(); err != nil {
			m.logf("mirror of %s: %v", m.srcPath, err)
		}
	}
}

// below lists the host's mounts below the source: path below it → ID
// (of the top mount where several are stacked).
func (m *Mirror) below() (map[string]int, error) {
	if _, err := m.mountinfoFile.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(m.srcPath, "/") + "/"
	ms, err := mountinfo.GetMountsFromReader(m.mountinfoFile, func(i *mountinfo.Info) (bool, bool) {
		return !strings.HasPrefix(i.Mountpoint, prefix), false
	})
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, i := range ms { // mountinfo lists a stack bottom first
		out[strings.TrimPrefix(i.Mountpoint, prefix)] = i.ID
	}
	return out, nil
}

// sync detaches in the jail the clones of mounts gone from the host
// (deepest first) and attaches clones of new ones (shallowest first).
func (m *Mirror) sync() error {
	below, err := m.below()
	if err != nil {
		return err
	}
	var gone []string
	for p, k := range m.mirrored {
		if below[p] != k.host {
			gone = append(gone, p)
		}
	}
	slices.SortFunc(gone, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range gone {
		if k := m.mirrored[p]; k.jail != 0 {
			if err := m.detach(p, k.jail); err != nil {
				errs = append(errs, err)
			}
		}
		delete(m.mirrored, p)
	}
	var added []string
	for p := range below {
		if _, ok := m.mirrored[p]; !ok {
			added = append(added, p)
		}
	}
	slices.SortFunc(added, func(a, b string) int { return len(a) - len(b) })
	for _, p := range added {
		id, err := m.attach(p, below[p])
		if err != nil {
			errs = append(errs, err)
		}
		// Tried once: a mount that could not be mirrored is not
		// retried until it changes.
		m.mirrored[p] = mirrored{host: below[p], jail: id}
	}
	return errors.Join(errs...)
}

// attach clones the host mount hostID at p below the source (reached
// without a symlink and checked to be that mount's root) and attaches it
// at the same place below the bind in the jail; it returns the clone's
// mount ID.
func (m *Mirror) attach(p string, hostID int) (int, error) {
	if _, err := components(p); err != nil {
		return 0, err
	}
	fd, err := unix.Openat2(int(m.src.Fd()), p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return 0, fmt.Errorf("open %s below %s: %w", p, m.srcPath, err)
	}
	defer unix.Close(fd)
	if !isMountRoot(fd, hostID) {
		return 0, fmt.Errorf("%s below %s is no longer the root of mount %d", p, m.srcPath, hostID)
	}
	tree, err := m.clone(fd, p, false)
	if err != nil {
		return 0, err
	}
	defer unix.Close(tree)
	var st unix.Statx_t
	if err := unix.Statx(tree, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st); err != nil {
		return 0, err
	}
	err = InMountNS(m.ns, func() error {
		dst, err := m.openInJail(p)
		if err != nil {
			return err
		}
		defer unix.Close(dst)
		return unix.MoveMount(tree, "", dst, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	})
	if err != nil {
		return 0, fmt.Errorf("attach %s below %s in the jail: %w", p, m.srcPath, err)
	}
	return int(st.Mnt_id), nil
}

// clone clones the mount on fd (p below the source; top: the source's
// own) alone into a detached tree, read-only as the access says,
// id-mapped as the bind, private; the caller closes it.
func (m *Mirror) clone(fd int, p string, top bool) (int, error) {
	what := filepath.Join(m.srcPath, p)
	tree, err := unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return -1, fmt.Errorf("clone %s: %w", what, err)
	}
	err = func() error {
		if m.access == ReadOnlyRecursive || top && m.access == ReadOnlyTop {
			if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
				return fmt.Errorf("%s read-only: %w", what, err)
			}
		}
		if m.idmap != nil {
			if err := setIDMap(tree, m.idmap, what); err != nil {
				return err
			}
		}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &privateJailAttrs); err != nil {
			return fmt.Errorf("%s: restrict: %w", what, err)
		}
		return nil
	}()
	if err != nil {
		unix.Close(tree)
		return -1, err
	}
	return tree, nil
}

// openInJail opens p below the bind at rel below root, in the jail's mount
// namespace: no symlink, and (unlike the pod dir's own walk) through the
// mounts on the way, the bind's and the mirrored ones, which the guest
// cannot move there.
func (m *Mirror) openInJail(p string) (int, error) {
	r, err := openRoot(m.root)
	if err != nil {
		return -1, err
	}
	defer unix.Close(r)
	fd, err := unix.Openat2(r, filepath.Join(m.rel, p), &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, fmt.Errorf("open %s below %s: %w", filepath.Join(m.rel, p), m.root, err)
	}
	return fd, nil
}

// detach detaches the clone jailID at p in the jail, if p is still its
// root there.
func (m *Mirror) detach(p string, jailID int) error {
	fds, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /proc/self/fd: %w", err)
	}
	defer unix.Close(fds)
	return InMountNS(m.ns, func() error {
		if err := unix.Fchdir(fds); err != nil {
			return fmt.Errorf("chdir to /proc/self/fd: %w", err)
		}
		fd, err := m.openInJail(p)
		if err != nil {
			return nil // gone with what was below it
		}
		defer unix.Close(fd)
		if !isMountRoot(fd, jailID) {
			return nil
		}
		if err := unix.Unmount(strconv.Itoa(fd), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("detach %s below %s in the jail: %w", p, m.srcPath, err)
		}
		return nil
	})
}

// IsPropagated reports whether a mount option makes a bind receive the
// host's later submounts: shared, rshared, slave, rslave.
func IsPropagated(option string) bool {
	switch option {
	case "shared", "rshared", "slave", "rslave":
		return true
	}
	return false
}
