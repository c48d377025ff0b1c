package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// A CRI image volume is an overlay mount that containerd makes from an
// image's layers (containerd 2.4: an active snapshot, upper dir and all,
// which the container binds read-only), and overlayfs cannot be id-mapped
// (ADR 022): a jailed qemu's user namespace could not read it through an
// id-mapped bind. A read-only share on an overlay is shifted as a
// container's rootfs is: a second, upper-less overlay over its layers (its
// upper dir as the topmost lower, whose whiteouts overlayfs honours there
// too) id-mapped to qemu's ids (MountShiftedReadOnly), bound into the jail
// as it is. It shows what the layers hold when it is made; nothing writes
// an image volume's upper dir (the container's bind is read-only).

// Overlay is the overlay mount a path lies on.
type Overlay struct {
	// Lowers are its lower dirs, top first, and Upper its upper dir ("":
	// none), as absolute host paths.
	Lowers []string
	Upper  string
	// Sub is the path's place below the overlay's root ("." for it).
	Sub string
}

// Layers are ov's dirs, top first: its upper dir, then its lower ones.
func (ov *Overlay) Layers() []string {
	if ov.Upper == "" {
		return ov.Lowers
	}
	return append([]string{ov.Upper}, ov.Lowers...)
}

// OverlayOf returns the overlay path lies on; nil when path is on no
// overlay. One mountinfo does not describe with absolute dirs, or with an
// index (which would refuse its upper dir as another overlay's lower), is
// an error that names it.
func OverlayOf(path string) (*Overlay, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	if sfs.Type != unix.OVERLAYFS_SUPER_MAGIC {
		return nil, nil
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st); err != nil || st.Mask&unix.STATX_MNT_ID == 0 {
		return nil, fmt.Errorf("%s: its mount ID: %v", path, err)
	}
	canon, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return nil, err
	}
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (bool, bool) { return m.ID != int(st.Mnt_id), m.ID == int(st.Mnt_id) })
	if err != nil {
		return nil, err
	}
	if len(ms) != 1 || ms[0].FSType != "overlay" {
		return nil, fmt.Errorf("%s: overlayfs, but its mount %d is not listed as an overlay in mountinfo", path, st.Mnt_id)
	}
	m := ms[0]
	rel, err := filepath.Rel(m.Mountpoint, canon)
	if err != nil || strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("%s: not below its mount point %s", canon, m.Mountpoint)
	}
	ov, err := parseOverlayOptions(m.VFSOptions)
	if err != nil {
		return nil, fmt.Errorf("%s lies on the overlay mounted on %s: %w", path, m.Mountpoint, err)
	}
	ov.Sub = filepath.Join(strings.TrimPrefix(m.Root, "/"), rel)
	return ov, nil
}

// parseOverlayOptions reads an overlay's super options as mountinfo
// lists them: options split on ',' (a comma in a value is \054), values
// octal-escaped, lower dirs split on ':' with overlayfs' own backslash
// escapes ("\:" for a colon in a path).
func parseOverlayOptions(opts string) (*Overlay, error) {
	ov := &Overlay{}
	for _, o := range strings.Split(opts, ",") {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "index":
			if v == "on" {
				return nil, errors.New("it has index=on, which refuses its upper dir as another overlay's lower dir")
			}
		case "upperdir":
			v, err := unescapeOctal(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			if !filepath.IsAbs(v) {
				return nil, fmt.Errorf("upper dir %q is not an absolute path", v)
			}
			ov.Upper = v
		case "lowerdir", "lowerdir+", "datadir+":
			v, err := unescapeOctal(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			ls, err := splitLowers(v)
			if err != nil {
				return nil, fmt.Errorf("%s=%q: %w", k, v, err)
			}
			ov.Lowers = append(ov.Lowers, ls...)
		}
	}
	if len(ov.Lowers) == 0 {
		return nil, errors.New("mountinfo lists no lower dirs")
	}
	return ov, nil
}

// unescapeOctal undoes mountinfo's \NNN escapes.
func unescapeOctal(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("bad escape at %d in %q", i, s)
		}
		n, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape at %d in %q", i, s)
		}
		b.WriteByte(byte(n))
		i += 3
	}
	return b.String(), nil
}

// splitLowers splits overlayfs' lowerdir list on unescaped colons and
// drops its backslash escapes; an empty entry (data-only layers, "::")
// or a relative path is refused: msb mounts no such overlay again.
func splitLowers(v string) ([]string, error) {
	var ls []string
	var cur strings.Builder
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && i+1 < len(v):
			i++
			cur.WriteByte(v[i])
		case v[i] == ':':
			ls = append(ls, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(v[i])
		}
	}
	ls = append(ls, cur.String())
	for _, l := range ls {
		if !filepath.IsAbs(l) {
			return nil, fmt.Errorf("lower dir %q is not an absolute path (data-only layers and relative lower dirs are not supported)", l)
		}
	}
	return ls, nil
}

// BindShiftedOverlayIn binds ov (read-only) shifted to the host ids from base (qemu's,
// ADR 022) at rel below root in the mount namespace ns, as BindBeneathIn
// does with a share that needs no id-map: a second, upper-less overlay over
// ov's layers id-mapped to base is mounted on a new directory below
// scratch (a host directory the guest cannot write), its Sub cloned into
// ns, and the host's mount detached again: nothing of it stays on the
// host, in ns it goes with the bind. On error nothing is left.
func BindShiftedOverlayIn(ns *os.File, root, rel string, ov *Overlay, scratch string, access Access, base uint32) error {
	if base == 0 {
		return errors.New("no host ids to shift the overlay to")
	}
	if access == Writable {
		return errors.New("a writable share on an overlay cannot be id-mapped nor shifted (a second overlay on its upper dir): bind it read-only")
	}
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return err
	}
	target, err := os.MkdirTemp(scratch, "overlay-")
	if err != nil {
		return err
	}
	defer os.Remove(target)
	work := target + ".layers"
	if err := os.Mkdir(work, 0o700); err != nil {
		return err
	}
	defer os.Remove(work)
	if err := MountShiftedReadOnly(ov.Layers(), target, work, base); err != nil {
		return err
	}
	defer unix.Unmount(target, unix.MNT_DETACH)
	return BindBeneathIn(ns, root, rel, filepath.Join(target, ov.Sub), access, nil)
}
