package specconv

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts"
)

const podDir = "/run/msb/c/c0ffee"

func podInput(spec *specs.Spec, ms ...mounts.Mount) Input {
	in := input(spec, ms...)
	in.GuestDir = podDir
	in.SandboxNamespaces = map[specs.LinuxNamespaceType]string{
		specs.NetworkNamespace: "/proc/7/ns/net",
		specs.IPCNamespace:     "/proc/7/ns/ipc",
	}
	return in
}

func TestPodNamespacesRewritten(t *testing.T) {
	spec := baseSpec()
	spec.Linux.Namespaces = []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.NetworkNamespace, Path: "/proc/4242/ns/net"},
		{Type: specs.IPCNamespace, Path: "/var/run/netns/x"},
		{Type: specs.MountNamespace},
	}
	sb := mustConvert(t, podInput(spec))
	got := sb.GuestSpec.Linux.Namespaces
	want := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.NetworkNamespace, Path: "/proc/7/ns/net"},
		{Type: specs.IPCNamespace, Path: "/proc/7/ns/ipc"},
		{Type: specs.MountNamespace},
	}
	if len(got) != len(want) {
		t.Fatalf("namespaces %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("namespaces[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	// The caller's spec keeps its host paths.
	if spec.Linux.Namespaces[1].Path != "/proc/4242/ns/net" {
		t.Fatal("input spec modified")
	}
}

func TestPodNamespaceNotShared(t *testing.T) {
	spec := baseSpec()
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UTSNamespace, Path: "/proc/1/ns/uts"})
	_, err := Convert(podInput(spec))
	if err == nil || !strings.Contains(err.Error(), "only the pod sandbox's namespaces") {
		t.Fatalf("err = %v", err)
	}
	// In pod mode with no namespace of the sandbox's to join.
	in := podInput(spec)
	in.SandboxNamespaces = nil
	if _, err := Convert(in); err == nil || !strings.Contains(err.Error(), "only the pod sandbox's namespaces") {
		t.Fatalf("err = %v", err)
	}
	// Without pod mode a path other than the network's is refused as before.
	spec = baseSpec()
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"})
	if _, err := Convert(input(spec)); err == nil || !strings.Contains(err.Error(), "cannot join a host namespace") {
		t.Fatalf("err = %v", err)
	}
}

func TestPodGuestPaths(t *testing.T) {
	in := podInput(baseSpec(),
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/data", Source: "/srv/data", Type: "bind"},
		mounts.Mount{Kind: mounts.KindBindFile, Destination: "/etc/hosts", Source: "/var/lib/c/hosts", Type: "bind"},
		mounts.Mount{Kind: mounts.KindTmpfs, Destination: "/dev/shm", Type: "tmpfs"},
	)
	sb := mustConvert(t, in)
	rt := mounts.Tag("rootfs:" + cid)
	dt := mounts.Tag("dir:/srv/data")
	ft := mounts.Tag("file:/var/lib/c/hosts")
	tt := mounts.Tag("tmpfs:2:/dev/shm")
	if got := sb.GuestSpec.Root.Path; got != podDir+"/shares/"+rt {
		t.Fatalf("root %s", got)
	}
	wantSrc := []string{podDir + "/shares/" + dt, podDir + "/files/" + ft + "/hosts", podDir + "/tmpfs/" + tt}
	for i, m := range sb.GuestSpec.Mounts {
		if m.Source != wantSrc[i] {
			t.Fatalf("mounts[%d].source = %s, want %s", i, m.Source, wantSrc[i])
		}
	}
	if sb.Boot.DirMounts[1].GuestPath != podDir+"/shares/"+dt || sb.Boot.FileMounts[0].GuestPath != podDir+"/files/"+ft || sb.Boot.Tmpfs[0].GuestPath != podDir+"/tmpfs/"+tt {
		t.Fatalf("boot env %+v", sb.Boot)
	}
}

func TestPodRefusesDisks(t *testing.T) {
	in := podInput(baseSpec(), mounts.Mount{Kind: mounts.KindBlock, Destination: "/vol", Source: "/img/w.img", Type: mounts.BlockType, Format: "raw"})
	if _, err := Convert(in); err == nil || !strings.Contains(err.Error(), "cannot attach disks") {
		t.Fatalf("err = %v", err)
	}
	in = podInput(baseSpec())
	in.GuestDir = "run/x"
	if _, err := Convert(in); err == nil {
		t.Fatal("relative guest dir accepted")
	}
}

func TestPodSandboxSize(t *testing.T) {
	spec := baseSpec()
	spec.Annotations = map[string]string{
		AnnotationContainerType:    "sandbox",
		AnnotationSandboxMemory:    "1073741825", // 1 GiB + 1 byte
		AnnotationSandboxCPUQuota:  "250000",
		AnnotationSandboxCPUPeriod: "100000",
	}
	sb := mustConvert(t, input(spec))
	if sb.MemoryMiB != 1025+defaults.OverheadMiB || sb.VCPUs != 3 {
		t.Fatalf("pod VM %d MiB, %d vcpus", sb.MemoryMiB, sb.VCPUs)
	}
	// io.msb.* may shrink it; app containers are not sized by the pod.
	spec.Annotations[AnnotationMemoryMiB] = "300"
	if sb := mustConvert(t, input(spec)); sb.MemoryMiB != 300 {
		t.Fatalf("io.msb.memory-mib ignored: %d", sb.MemoryMiB)
	}
	spec.Annotations = map[string]string{AnnotationContainerType: "container", AnnotationSandboxMemory: "1073741824"}
	if sb := mustConvert(t, input(spec)); sb.MemoryMiB != defaults.MemoryMiB {
		t.Fatalf("app container sized by the pod: %d", sb.MemoryMiB)
	}
	// No limit (0) keeps the defaults; garbage is refused.
	spec.Annotations = map[string]string{AnnotationContainerType: "sandbox", AnnotationSandboxMemory: "0"}
	if sb := mustConvert(t, input(spec)); sb.MemoryMiB != defaults.MemoryMiB || sb.VCPUs != defaults.VCPUs {
		t.Fatalf("no limit: %d MiB %d vcpus", sb.MemoryMiB, sb.VCPUs)
	}
	spec.Annotations[AnnotationSandboxMemory] = "1G"
	if _, err := Convert(input(spec)); err == nil {
		t.Fatal("bad sandbox-memory accepted")
	}
}

// TestPodIDMapped: an id-mapped bind keeps its mapping for the host's
// bind, apart from a plain bind of the same source; a VM's own directory
// share cannot be id-mapped (it is exported as it is).
func TestPodIDMapped(t *testing.T) {
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 65536}}
	idm := &mounts.IDMap{UIDs: m, GIDs: m}
	in := podInput(baseSpec(),
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/a", Source: "/srv/data", Type: "bind", IDMap: idm},
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/b", Source: "/srv/data", Type: "bind"},
		mounts.Mount{Kind: mounts.KindBindFile, Destination: "/etc/hosts", Source: "/var/lib/c/hosts", Type: "bind", IDMap: idm},
	)
	sb := mustConvert(t, in)
	if len(sb.Shares) != 4 || sb.Shares[1].IDMap != idm || sb.Shares[2].IDMap != nil || sb.Shares[1].Tag == sb.Shares[2].Tag {
		t.Fatalf("shares %+v", sb.Shares)
	}
	if len(sb.Files) != 1 || sb.Files[0].IDMap != idm {
		t.Fatalf("files %+v", sb.Files)
	}
	own := input(baseSpec(), mounts.Mount{Kind: mounts.KindBindDir, Destination: "/a", Source: "/srv/data", Type: "bind", IDMap: idm})
	if _, err := Convert(own); err == nil || !strings.Contains(err.Error(), "id-mapped") {
		t.Fatalf("a VM's own id-mapped directory share: %v", err)
	}
}

// TestPodTmpfs: a kubelet emptyDir of medium Memory (mounts.KindPodTmpfs)
// is the pod VM's tmpfs, named by its host path so that every member
// mounting it gets the same one; nothing of it is shared from the host.
func TestPodTmpfs(t *testing.T) {
	const vol = "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache"
	mk := func() []mounts.Mount {
		return []mounts.Mount{
			{Kind: mounts.KindPodTmpfs, Destination: "/cache", Source: vol, Type: "bind", Options: []string{"rbind", "rw"}, SizeBytes: 64 << 20, Mode: 0o755},
			{Kind: mounts.KindPodTmpfs, Destination: "/ro-cache", Source: vol, Type: "bind", Options: []string{"rbind", "ro", "nosuid"}, SizeBytes: 64 << 20, Mode: 0o755},
		}
	}
	sb := mustConvert(t, podInput(baseSpec(), mk()...))
	guest := GuestPodTmpfsDir + "/" + mounts.Tag("podtmpfs:"+vol)
	if len(sb.Boot.PodTmpfs) != 1 || sb.Boot.PodTmpfs[0].GuestPath != guest || sb.Boot.PodTmpfs[0].SizeBytes != 64<<20 || sb.Boot.PodTmpfs[0].Mode != 0o755 {
		t.Fatalf("pod tmpfs %+v, want one at %s", sb.Boot.PodTmpfs, guest)
	}
	if len(sb.Shares) != 1 || len(sb.Boot.Tmpfs) != 0 {
		t.Fatalf("shares %+v, tmpfs %+v: only the rootfs is shared", sb.Shares, sb.Boot.Tmpfs)
	}
	want := [][]string{{"rbind"}, {"rbind", "ro", "nosuid"}}
	for i, m := range sb.GuestSpec.Mounts {
		if m.Source != guest || m.Type != "bind" || strings.Join(m.Options, ",") != strings.Join(want[i], ",") {
			t.Errorf("mounts[%d] = %+v, want a bind of %s with %q", i, m, guest, want[i])
		}
	}
	// Another member of the pod gets the same guest path.
	in := podInput(baseSpec(), mk()[:1]...)
	in.GuestDir, in.ContainerID = "/run/msb/c/other", "other"
	if other := mustConvert(t, in); other.Boot.PodTmpfs[0].GuestPath != guest {
		t.Errorf("another member's pod tmpfs %s, want %s", other.Boot.PodTmpfs[0].GuestPath, guest)
	}
	if _, err := Convert(input(baseSpec(), mk()[:1]...)); err == nil || !strings.Contains(err.Error(), "joins its pod's VM") {
		t.Errorf("a pod tmpfs outside pod mode: %v", err)
	}
}
