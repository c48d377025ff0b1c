package mounts

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// emptyDirPlugin is the directory kubelet keeps a pod's emptyDir volumes
// in: <root>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<name>.
const emptyDirPlugin = "kubernetes.io~empty-dir"

// isEmptyDirPath reports whether p has the shape of a kubelet emptyDir
// volume's directory, whatever kubelet's root dir.
func isEmptyDirPath(p string) bool {
	vols := filepath.Dir(filepath.Dir(p))
	return filepath.Base(filepath.Dir(p)) == emptyDirPlugin && filepath.Base(vols) == "volumes" &&
		filepath.Base(filepath.Dir(filepath.Dir(vols))) == "pods"
}

// MarkMemoryVolumes turns each directory bind in ms whose source is a
// kubelet emptyDir on a tmpfs of the host (medium Memory) into a
// KindPodTmpfs mount sized as that tmpfs (its size= and mode=), so the
// pod's containers share a tmpfs of the guest instead of the host's
// over a share (ADR 032). The host tmpfs is found in the host's mount
// table only: nothing below the source is opened. An id-mapped bind (a
// pod with a user namespace) stays a share: its root's owner is what the
// mapping gives it.
func MarkMemoryVolumes(ms []Mount) error {
	var want map[string]bool
	for _, m := range ms {
		if isMemoryCandidate(m) {
			if want == nil {
				want = map[string]bool{}
			}
			want[m.Source] = true
		}
	}
	if want == nil {
		return nil
	}
	infos, err := mountinfo.GetMounts(func(i *mountinfo.Info) (bool, bool) { return !want[i.Mountpoint], false })
	if err != nil {
		return fmt.Errorf("emptyDir volumes: read the mount table: %w", err)
	}
	return markMemoryVolumes(ms, infos)
}

func isMemoryCandidate(m Mount) bool {
	return m.Kind == KindBindDir && m.IDMap == nil && isEmptyDirPath(m.Source)
}

// markMemoryVolumes is MarkMemoryVolumes with the host's mounts at the
// candidates' sources given, in mountinfo's order (the last mount on a
// mount point is the one seen there).
func markMemoryVolumes(ms []Mount, infos []*mountinfo.Info) error {
	for i := range ms {
		m := &ms[i]
		if !isMemoryCandidate(*m) {
			continue
		}
		var top *mountinfo.Info
		for _, in := range infos {
			if in.Mountpoint == m.Source {
				top = in
			}
		}
		if top == nil || top.FSType != "tmpfs" {
			continue
		}
		size, mode, err := tmpfsSize(top.VFSOptions)
		if err != nil {
			return fmt.Errorf("mounts[%d].source %s: kubelet's tmpfs: %w", m.Index, m.Source, err)
		}
		m.Kind, m.SizeBytes, m.Mode = KindPodTmpfs, size, mode
	}
	return nil
}

// tmpfsSize reads size= and mode= from a tmpfs's superblock options as
// mountinfo shows them (size in kilobytes, mode in octal; absent when the
// kernel's default).
func tmpfsSize(opts string) (int64, uint32, error) {
	var size int64
	var mode uint32
	for _, o := range strings.Split(opts, ",") {
		switch {
		case strings.HasPrefix(o, "size="):
			n, err := parseSize(strings.TrimPrefix(o, "size="))
			if err != nil {
				return 0, 0, fmt.Errorf("%q: %w", o, err)
			}
			size = n
		case strings.HasPrefix(o, "mode="):
			v, err := strconv.ParseUint(strings.TrimPrefix(o, "mode="), 8, 32)
			if err != nil || v > 0o7777 {
				return 0, 0, fmt.Errorf("%q: not an octal mode up to 7777", o)
			}
			mode = uint32(v)
		}
	}
	return size, mode, nil
}
