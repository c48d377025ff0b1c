package mounts

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const emptyDir = "/var/lib/kubelet/pods/0b5c-uid/volumes/kubernetes.io~empty-dir/cache"

func TestIsEmptyDirPath(t *testing.T) {
	for p, want := range map[string]bool{
		emptyDir: true,
		"/srv/kube/pods/u/volumes/kubernetes.io~empty-dir/v":            true, // any --root-dir
		"/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/v":     false,
		"/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir":       false,
		"/var/lib/kubelet/pods/u/volume/kubernetes.io~empty-dir/v":      false,
		"/var/lib/kubelet/pod/u/volumes/kubernetes.io~empty-dir/v":      false,
		"/kubernetes.io~empty-dir/v":                                    false,
		"/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/v/sub": false,
	} {
		if got := isEmptyDirPath(p); got != want {
			t.Errorf("isEmptyDirPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestMarkMemoryVolumes(t *testing.T) {
	other := "/var/lib/kubelet/pods/0b5c-uid/volumes/kubernetes.io~empty-dir/disk"
	stacked := "/var/lib/kubelet/pods/0b5c-uid/volumes/kubernetes.io~empty-dir/stacked"
	nosize := "/var/lib/kubelet/pods/0b5c-uid/volumes/kubernetes.io~empty-dir/nosize"
	tmpfsElsewhere := "/srv/data"
	ms := []Mount{
		{Index: 0, Kind: KindBindDir, Source: emptyDir, Options: []string{"rbind", "ro"}},
		{Index: 1, Kind: KindBindDir, Source: other},
		{Index: 2, Kind: KindBindDir, Source: stacked},
		{Index: 3, Kind: KindBindDir, Source: nosize},
		{Index: 4, Kind: KindBindDir, Source: tmpfsElsewhere},
		{Index: 5, Kind: KindBindDir, Source: emptyDir, IDMap: &IDMap{}},
		{Index: 6, Kind: KindBindFile, Source: emptyDir},
		{Index: 7, Kind: KindBindDir, Source: emptyDir},
	}
	infos := []*mountinfo.Info{
		{Mountpoint: "/var/lib/kubelet", FSType: "tmpfs", VFSOptions: "rw,size=1024k"}, // a parent only
		{Mountpoint: emptyDir, FSType: "tmpfs", VFSOptions: "rw,size=65536k,mode=755,inode64"},
		{Mountpoint: stacked, FSType: "tmpfs", VFSOptions: "rw,size=4k"},
		{Mountpoint: stacked, FSType: "ext4", VFSOptions: "rw"}, // on top: what the path shows
		{Mountpoint: nosize, FSType: "tmpfs", VFSOptions: "rw,inode64"},
		{Mountpoint: tmpfsElsewhere, FSType: "tmpfs", VFSOptions: "rw"},
	}
	if err := markMemoryVolumes(ms, infos); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		kind Kind
		size int64
		mode uint32
	}{
		{KindPodTmpfs, 64 << 20, 0o755},
		{KindBindDir, 0, 0},  // no mount of its own: kubelet's disk medium
		{KindBindDir, 0, 0},  // the top mount is not a tmpfs
		{KindPodTmpfs, 0, 0}, // the kernel's default size
		{KindBindDir, 0, 0},  // not kubelet's emptyDir
		{KindBindDir, 0, 0},  // id-mapped
		{KindBindFile, 0, 0}, // a file
		{KindPodTmpfs, 64 << 20, 0o755},
	}
	for i, w := range want {
		m := ms[i]
		if m.Kind != w.kind || m.SizeBytes != w.size || m.Mode != w.mode {
			t.Errorf("mounts[%d] %s: %v size %d mode %o, want %v size %d mode %o", i, m.Source, m.Kind, m.SizeBytes, m.Mode, w.kind, w.size, w.mode)
		}
	}
	if ms[0].Source != emptyDir || len(ms[0].Options) != 2 {
		t.Errorf("a pod tmpfs keeps its source and bind options: %+v", ms[0])
	}

	bad := []Mount{{Kind: KindBindDir, Source: emptyDir}}
	if err := markMemoryVolumes(bad, []*mountinfo.Info{{Mountpoint: emptyDir, FSType: "tmpfs", VFSOptions: "size=10%"}}); err == nil {
		t.Error("a size mountinfo cannot show was accepted")
	}
}

// TestMarkMemoryVolumesHost reads the real mount table: a tmpfs mounted
// where kubelet mounts a memory emptyDir is found, a plain directory
// beside it is not.
func TestMarkMemoryVolumesHost(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	vols := filepath.Join(root, "pods", "uid", "volumes", "kubernetes.io~empty-dir")
	mem, disk := filepath.Join(vols, "mem"), filepath.Join(vols, "disk")
	for _, d := range []string{mem, disk} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", mem, "tmpfs", 0, "size=2m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mem, unix.MNT_DETACH) })
	ms, err := Classify([]specs.Mount{
		{Destination: "/mem", Type: "bind", Source: mem, Options: []string{"rbind"}},
		{Destination: "/disk", Type: "bind", Source: disk, Options: []string{"rbind"}},
	}, "/")
	if err != nil {
		t.Fatal(err)
	}
	if err := MarkMemoryVolumes(ms); err != nil {
		t.Fatal(err)
	}
	if ms[0].Kind != KindPodTmpfs || ms[0].SizeBytes != 2<<20 {
		t.Errorf("memory emptyDir: %v size %d, want pod-tmpfs size %d", ms[0].Kind, ms[0].SizeBytes, 2<<20)
	}
	if ms[1].Kind != KindBindDir {
		t.Errorf("disk emptyDir: %v, want bind-dir", ms[1].Kind)
	}
}
