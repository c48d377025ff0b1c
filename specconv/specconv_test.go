package specconv

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/mounts/bootenv"
)

const (
	cid    = "c0ffee"
	rootfs = "/run/containerd/io.containerd.runtime.v2.task/default/c0ffee/rootfs"
	stage  = "/run/msb/vm/c0ffee/stage"
)

// defaults enable every io.msb.* annotation; TestAnnotationsAndBounds checks the allow-list.
var defaults = Defaults{VCPUs: 1, MemoryMiB: 256, OverheadMiB: 128, Backend: "auto", EnableAnnotations: []string{`io\.msb\..*`}}

func baseSpec() *specs.Spec {
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: "web",
		Process: &specs.Process{
			Args: []string{"/bin/sh", "-c", "echo hi"},
			Env:  []string{"PATH=/usr/bin:/bin"},
			User: specs.User{UID: 1000, GID: 100},
			Cwd:  "/",
		},
		Root: &specs.Root{Path: "rootfs"},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}},
		},
	}
}

func input(spec *specs.Spec, ms ...mounts.Mount) Input {
	for i := range ms {
		ms[i].Index = i
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: ms[i].Destination, Type: ms[i].Type, Source: ms[i].Source, Options: ms[i].Options})
	}
	return Input{Spec: spec, Mounts: ms, RootfsHostPath: rootfs, StageDir: stage, ContainerID: cid, Defaults: defaults}
}

func mustConvert(t *testing.T, in Input) *VM {
	t.Helper()
	sb, err := Convert(in)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func TestConvertMinimal(t *testing.T) {
	sb := mustConvert(t, input(baseSpec()))
	rt := mounts.Tag("rootfs:" + cid)
	rootGuest := GuestSharesDir + "/" + rt
	want := &VM{
		VCPUs: 1, MemoryMiB: 256, Backend: "auto",
		Shares: []mounts.Share{{Tag: rt, HostPath: rootfs}},
		Boot: bootenv.Env{
			DirMounts: []bootenv.DirMount{{Tag: rt, GuestPath: rootGuest}},
			Hostname:  "web",
			User:      "1000:100",
		},
	}
	gs := sb.GuestSpec
	sb.GuestSpec = nil
	if !reflect.DeepEqual(sb, want) {
		t.Fatalf("got  %+v\nwant %+v", sb, want)
	}
	if gs.Root.Path != rootGuest || gs.Root.Readonly {
		t.Fatalf("guest root %+v", gs.Root)
	}
	if _, err := want.Boot.Encode(); err != nil {
		t.Fatal(err)
	}
}

func TestRootReadonly(t *testing.T) {
	spec := baseSpec()
	spec.Root.Readonly = true
	sb := mustConvert(t, input(spec))
	if sb.Shares[0].ReadOnly || sb.Boot.DirMounts[0].ReadOnly || !sb.GuestSpec.Root.Readonly {
		t.Fatalf("root.readonly must stay in the guest spec while the share is rw: %+v %+v %+v", sb.Shares[0], sb.Boot.DirMounts[0], sb.GuestSpec.Root)
	}
}

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }

func TestResources(t *testing.T) {
	cases := []struct {
		name       string
		cpu        *specs.LinuxCPU
		mem        *specs.LinuxMemory
		vcpus, mib int
	}{
		{"none", nil, nil, 1, 256},
		{"quota 1.5 cpus", &specs.LinuxCPU{Quota: i64(150000), Period: u64(100000)}, nil, 2, 256},
		{"quota exactly 2", &specs.LinuxCPU{Quota: i64(200000), Period: u64(100000)}, nil, 2, 256},
		{"quota tiny", &specs.LinuxCPU{Quota: i64(1), Period: u64(100000)}, nil, 1, 256},
		{"quota unlimited", &specs.LinuxCPU{Quota: i64(-1), Period: u64(100000)}, nil, 1, 256},
		{"quota no period", &specs.LinuxCPU{Quota: i64(50000)}, nil, 1, 256},
		{"period zero", &specs.LinuxCPU{Quota: i64(50000), Period: u64(0)}, nil, 1, 256},
		{"quota huge capped", &specs.LinuxCPU{Quota: i64(1000 * 100000), Period: u64(100000)}, nil, MaxVCPUs, 256},
		{"shares only", &specs.LinuxCPU{Shares: u64(1024)}, nil, 1, 256},
		{"memory 512MiB", nil, &specs.LinuxMemory{Limit: i64(512 << 20)}, 1, 512 + 128},
		{"memory rounds up", nil, &specs.LinuxMemory{Limit: i64(512<<20 + 1)}, 1, 513 + 128},
		{"memory 1 byte", nil, &specs.LinuxMemory{Limit: i64(1)}, 1, 1 + 128},
		{"memory unlimited", nil, &specs.LinuxMemory{Limit: i64(-1)}, 1, 256},
		{"memory zero", nil, &specs.LinuxMemory{Limit: i64(0)}, 1, 256},
		{"memory nil limit", nil, &specs.LinuxMemory{Reservation: i64(1 << 30)}, 1, 256},
		{"both", &specs.LinuxCPU{Quota: i64(250000), Period: u64(100000)}, &specs.LinuxMemory{Limit: i64(1 << 30)}, 3, 1024 + 128},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := baseSpec()
			spec.Linux.Resources = &specs.LinuxResources{CPU: c.cpu, Memory: c.mem}
			sb := mustConvert(t, input(spec))
			if sb.VCPUs != c.vcpus || sb.MemoryMiB != c.mib {
				t.Fatalf("got %d vcpus %d MiB, want %d %d", sb.VCPUs, sb.MemoryMiB, c.vcpus, c.mib)
			}
		})
	}
}

func TestAnnotations(t *testing.T) {
	res := &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Quota: i64(400000), Period: u64(100000)},
		Memory: &specs.LinuxMemory{Limit: i64(1 << 30)},
	}
	cases := []struct {
		name  string
		ann   map[string]string
		check func(*VM) bool
	}{
		{"vcpus overrides quota", map[string]string{AnnotationVCPUs: "2"}, func(s *VM) bool { return s.VCPUs == 2 && s.MemoryMiB == 1024+128 }},
		{"vcpus at the limit", map[string]string{AnnotationVCPUs: "4"}, func(s *VM) bool { return s.VCPUs == 4 }},
		{"memory at the limit plus overhead", map[string]string{AnnotationMemoryMiB: "1152"}, func(s *VM) bool { return s.MemoryMiB == 1152 }},
		{"memory overrides limit, no overhead", map[string]string{AnnotationMemoryMiB: "64"}, func(s *VM) bool { return s.MemoryMiB == 64 && s.VCPUs == 4 }},
		{"backend qemu", map[string]string{AnnotationBackend: "qemu"}, func(s *VM) bool { return s.Backend == "qemu" }},
		{"backend libkrun", map[string]string{AnnotationBackend: "libkrun"}, func(s *VM) bool { return s.Backend == "libkrun" }},
		{"backend auto", map[string]string{AnnotationBackend: "auto"}, func(s *VM) bool { return s.Backend == "auto" }},
		{"other annotations ignored", map[string]string{"io.kubernetes.cri.sandbox-id": "x", "io.msb.unknown": "y"}, func(s *VM) bool { return s.VCPUs == 4 }},
		{"handoff init", map[string]string{AnnotationHandoffInit: "/sbin/init"}, func(s *VM) bool {
			return s.Boot.HandoffInit == "/sbin/init" &&
				reflect.DeepEqual(s.Boot.HandoffInitArgs, []string{"/bin/sh", "-c", "echo hi"}) &&
				reflect.DeepEqual(s.Boot.HandoffInitEnv, []string{"PATH=/usr/bin:/bin"})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := baseSpec()
			spec.Linux.Resources = res
			spec.Annotations = c.ann
			sb := mustConvert(t, input(spec))
			if !c.check(sb) {
				t.Fatalf("got %+v", sb)
			}
		})
	}
}

// TestAnnotationBounds: a sizing annotation never makes the VM bigger than
// the limits do (the container's, the pod's for a pod sandbox, the
// defaults without limits): the VM stays inside what the scheduler and the
// RuntimeClass overhead account for.
func TestAnnotationBounds(t *testing.T) {
	sandbox := map[string]string{AnnotationContainerType: "sandbox", AnnotationSandboxMemory: "536870912",
		AnnotationSandboxCPUQuota: "200000", AnnotationSandboxCPUPeriod: "100000"}
	cases := []struct {
		name string
		res  *specs.LinuxResources
		pod  map[string]string
		key  string
		val  string
		want string // "" = accepted
	}{
		{"no limits: default vcpus", nil, nil, AnnotationVCPUs, "1", ""},
		{"no limits: more vcpus", nil, nil, AnnotationVCPUs, "2", "over its bound of 1 vCPUs"},
		{"no limits: default memory", nil, nil, AnnotationMemoryMiB, "256", ""},
		{"no limits: more memory", nil, nil, AnnotationMemoryMiB, "257", "over its bound of 256 MiB"},
		{"container limits: vcpus", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(150000), Period: u64(100000)}}, nil, AnnotationVCPUs, "3", "over its bound of 2 vCPUs"},
		{"container limits: memory", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(64 << 20)}}, nil, AnnotationMemoryMiB, "193", "over its bound of 192 MiB"},
		{"container limits: less memory", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(64 << 20)}}, nil, AnnotationMemoryMiB, "64", ""},
		{"pod limits: vcpus", nil, sandbox, AnnotationVCPUs, "2", ""},
		{"pod limits: more vcpus", nil, sandbox, AnnotationVCPUs, "3", "over its bound of 2 vCPUs"},
		{"pod limits: memory", nil, sandbox, AnnotationMemoryMiB, "640", ""},
		{"pod limits: more memory", nil, sandbox, AnnotationMemoryMiB, "641", "over its bound of 640 MiB"},
	}
	for _, c := range cases {
		spec := baseSpec()
		spec.Linux.Resources = c.res
		spec.Annotations = map[string]string{c.key: c.val}
		for k, v := range c.pod {
			spec.Annotations[k] = v
		}
		sb, err := Convert(input(spec))
		if c.want != "" {
			if err == nil || !strings.Contains(err.Error(), `annotations["`+c.key+`"] "`+c.val+`": `+c.want) {
				t.Errorf("%s: %v, want an error naming %s and %q", c.name, err, c.key, c.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		got := sb.VCPUs
		if c.key == AnnotationMemoryMiB {
			got = sb.MemoryMiB
		}
		if strconv.Itoa(got) != c.val {
			t.Errorf("%s: VM %d vCPUs %d MiB, want %s = %s", c.name, sb.VCPUs, sb.MemoryMiB, c.key, c.val)
		}
	}
}

func TestAnnotationErrors(t *testing.T) {
	cases := []struct {
		key, val string
		want     string
	}{
		{AnnotationVCPUs, "0", "1..255"},
		{AnnotationVCPUs, "256", "1..255"},
		{AnnotationVCPUs, "-1", "1..255"},
		{AnnotationVCPUs, "two", "1..255"},
		{AnnotationVCPUs, "", "1..255"},
		{AnnotationVCPUs, "1.5", "1..255"},
		{AnnotationMemoryMiB, "63", "at least 64"},
		{AnnotationMemoryMiB, "1G", "at least 64"},
		{AnnotationMemoryMiB, "99999999999999999999", "at least 64"},
		{AnnotationBackend, "kvm", "auto, libkrun, qemu"},
		{AnnotationBackend, "", "auto, libkrun, qemu"},
		{AnnotationHandoffInit, "sbin/init", "absolute path"},
		{AnnotationHandoffInit, "", "absolute path"},
		{AnnotationHandoffInit, "/init\n", "absolute path"},
	}
	for _, c := range cases {
		spec := baseSpec()
		spec.Annotations = map[string]string{c.key: c.val}
		_, err := Convert(input(spec))
		if err == nil || !strings.Contains(err.Error(), `annotations["`+c.key+`"] "`) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s=%q: %v", c.key, c.val, err)
		}
	}
}

func TestMountsRewritten(t *testing.T) {
	spec := baseSpec()
	in := input(spec,
		mounts.Mount{Kind: mounts.KindSpecial, Destination: "/proc", Type: "proc"},
		mounts.Mount{Kind: mounts.KindSpecial, Destination: "/dev", Type: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/data", Source: "/srv/data", Type: "bind", ReadOnly: true, Options: []string{"rbind", "ro", "nosuid", "rprivate"}},
		mounts.Mount{Kind: mounts.KindBindFile, Destination: "/etc/hosts", Source: "/var/lib/c/hosts", Type: "bind", Options: []string{"rbind", "rprivate"}},
		mounts.Mount{Kind: mounts.KindBlock, Destination: "/vol", Source: "/img/v.qcow2", Type: "ext4", Format: "qcow2", FSType: "ext4", Options: []string{"noatime", "nodev", "ro", "data=ordered"}, ReadOnly: true},
		mounts.Mount{Kind: mounts.KindBlock, Destination: "/vol2", Source: "/img/w.img", Type: mounts.BlockType, Format: "raw"},
		mounts.Mount{Kind: mounts.KindTmpfs, Destination: "/dev/shm", Type: "tmpfs", SizeBytes: 64 << 20, Mode: 0o1777, Flags: []string{"noexec", "nosuid", "nodev"}},
		mounts.Mount{Kind: mounts.KindTmpfs, Destination: "/tmp", Type: "tmpfs", ReadOnly: true, Flags: []string{"ro"}},
	)
	sb := mustConvert(t, in)
	rt := mounts.Tag("rootfs:" + cid)
	dt := mounts.Tag("dir:/srv/data")
	ft := mounts.Tag("file:/var/lib/c/hosts")
	d1 := mounts.Tag("disk:/img/v.qcow2")
	d2 := mounts.Tag("disk:/img/w.img")
	t1 := mounts.Tag("tmpfs:6:/dev/shm")
	t2 := mounts.Tag("tmpfs:7:/tmp")

	wantShares := []mounts.Share{
		{Tag: rt, HostPath: rootfs},
		{Tag: dt, HostPath: "/srv/data", ReadOnly: true, ReadOnlyTop: true}, // "ro" on an rbind
		{Tag: ft, HostPath: stage + "/" + ft, MultiDevs: true},
	}
	wantFiles := []mounts.FileStage{{Source: "/var/lib/c/hosts", Dir: stage + "/" + ft, Name: "hosts"}}
	wantDisks := []mounts.Disk{{Tag: d1, Path: "/img/v.qcow2", Format: "qcow2", ReadOnly: true}, {Tag: d2, Path: "/img/w.img", Format: "raw"}}
	wantBoot := bootenv.Env{
		DirMounts: []bootenv.DirMount{
			{Tag: rt, GuestPath: "/run/msb/shares/" + rt},
			{Tag: dt, GuestPath: "/run/msb/shares/" + dt, ReadOnly: true},
		},
		FileMounts: []bootenv.FileMount{{Tag: ft, Name: "hosts", GuestPath: "/run/msb/files/" + ft}},
		DiskMounts: []bootenv.DiskMount{
			{Tag: d1, GuestPath: "/run/msb/disks/" + d1, FSType: "ext4", ReadOnly: true, Options: []string{"noatime", "data=ordered"}},
			{Tag: d2, GuestPath: "/run/msb/disks/" + d2},
		},
		Tmpfs: []bootenv.Tmpfs{
			{GuestPath: "/run/msb/tmpfs/" + t1, SizeBytes: 64 << 20, Mode: 0o1777, Options: []string{"noexec", "nosuid", "nodev"}},
			{GuestPath: "/run/msb/tmpfs/" + t2, Options: []string{"ro"}},
		},
		Hostname: "web",
		User:     "1000:100",
	}
	wantGuest := []specs.Mount{
		{Destination: "/proc", Type: "proc"},
		{Destination: "/dev", Type: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		{Destination: "/data", Type: "bind", Source: "/run/msb/shares/" + dt, Options: []string{"rbind", "ro", "nosuid"}},
		{Destination: "/etc/hosts", Type: "bind", Source: "/run/msb/files/" + ft + "/hosts", Options: []string{"rbind"}},
		{Destination: "/vol", Type: "bind", Source: "/run/msb/disks/" + d1, Options: []string{"rbind", "ro", "nodev"}},
		{Destination: "/vol2", Type: "bind", Source: "/run/msb/disks/" + d2, Options: []string{"rbind"}},
		{Destination: "/dev/shm", Type: "bind", Source: "/run/msb/tmpfs/" + t1, Options: []string{"rbind", "noexec", "nosuid", "nodev"}},
		{Destination: "/tmp", Type: "bind", Source: "/run/msb/tmpfs/" + t2, Options: []string{"rbind", "ro"}},
	}
	check := func(name string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got  %+v\n want %+v", name, got, want)
		}
	}
	check("shares", sb.Shares, wantShares)
	check("files", sb.Files, wantFiles)
	check("disks", sb.Disks, wantDisks)
	check("boot", sb.Boot, wantBoot)
	check("guest mounts", sb.GuestSpec.Mounts, wantGuest)
	if _, err := sb.Boot.Encode(); err != nil {
		t.Fatal(err)
	}
}

func TestSharedOnce(t *testing.T) {
	spec := baseSpec()
	in := input(spec,
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/a", Source: "/srv/d", Type: "bind", ReadOnly: true, Options: []string{"ro"}},
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/b", Source: "/srv/d", Type: "bind", ReadOnly: true, Options: []string{"ro"}},
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/c", Source: "/srv/e", Type: "bind", ReadOnly: true, Options: []string{"ro"}},
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/d", Source: "/srv/e", Type: "bind", Options: []string{"ro", "rw"}},
		mounts.Mount{Kind: mounts.KindBindFile, Destination: "/f1", Source: "/srv/f", Type: "bind", ReadOnly: true, Options: []string{"ro"}},
		mounts.Mount{Kind: mounts.KindBindFile, Destination: "/f2", Source: "/srv/f", Type: "bind"},
		mounts.Mount{Kind: mounts.KindBlock, Destination: "/v1", Source: "/img/x", Type: "ext4", FSType: "ext4", Format: "raw", ReadOnly: true, Options: []string{"ro"}},
		mounts.Mount{Kind: mounts.KindBlock, Destination: "/v2", Source: "/img/x", Type: "ext4", FSType: "ext4", Format: "raw", ReadOnly: true, Options: []string{"ro", "nosuid"}},
	)
	sb := mustConvert(t, in)
	if len(sb.Shares) != 4 || len(sb.Boot.DirMounts) != 3 || len(sb.Files) != 1 || len(sb.Boot.FileMounts) != 1 || len(sb.Disks) != 1 {
		t.Fatalf("not deduplicated: %+v", sb)
	}
	if !sb.Shares[1].ReadOnly || !sb.Boot.DirMounts[1].ReadOnly {
		t.Error("ro+ro dir share should stay ro")
	}
	if sb.Shares[2].ReadOnly || sb.Boot.DirMounts[2].ReadOnly {
		t.Error("ro+rw dir share must be rw")
	}
	if sb.Files[0].ReadOnly || sb.Shares[3].ReadOnly || sb.Boot.FileMounts[0].ReadOnly {
		t.Error("ro+rw file share must be rw")
	}
	if !sb.Disks[0].ReadOnly || !sb.Boot.DiskMounts[0].ReadOnly {
		t.Error("ro+ro disk should stay ro")
	}
	g := sb.GuestSpec.Mounts
	if g[0].Source != g[1].Source || !reflect.DeepEqual(g[2].Options, []string{"rbind", "ro"}) || !reflect.DeepEqual(g[3].Options, []string{"rbind"}) {
		t.Errorf("guest binds: %+v", g)
	}
	if g[4].Source != g[5].Source || !reflect.DeepEqual(g[4].Options, []string{"rbind", "ro"}) || !reflect.DeepEqual(g[5].Options, []string{"rbind"}) {
		t.Errorf("guest file binds: %+v", g)
	}
	if !reflect.DeepEqual(g[7].Options, []string{"rbind", "ro", "nosuid"}) {
		t.Errorf("guest disk bind: %+v", g[7])
	}
}

func TestRlimits(t *testing.T) {
	spec := baseSpec()
	spec.Process.Rlimits = []specs.POSIXRlimit{
		{Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 4096},
		{Type: "RLIMIT_CORE", Soft: 0, Hard: ^uint64(0)},
		{Type: "RLIMIT_RTTIME", Soft: 5, Hard: 5},
	}
	sb := mustConvert(t, input(spec))
	want := []bootenv.Rlimit{{Resource: 7, Soft: 1024, Hard: 4096}, {Resource: 4, Hard: ^uint64(0)}, {Resource: 15, Soft: 5, Hard: 5}}
	if !reflect.DeepEqual(sb.Boot.Rlimits, want) {
		t.Fatalf("got %+v", sb.Boot.Rlimits)
	}
	if !reflect.DeepEqual(sb.GuestSpec.Process.Rlimits, spec.Process.Rlimits) {
		t.Fatal("guest spec must keep rlimits for runc")
	}
	for name, id := range map[string]int{"RLIMIT_CPU": 0, "RLIMIT_AS": 9, "RLIMIT_NPROC": 6, "RLIMIT_MEMLOCK": 8} {
		if got, ok := rlimitIDs[name]; !ok || got != id {
			t.Errorf("rlimitIDs[%s] = %d %v", name, got, ok)
		}
	}
}

func TestUserAndHostname(t *testing.T) {
	spec := baseSpec()
	spec.Process.User = specs.User{UID: 0, GID: 0, AdditionalGids: []uint32{10}}
	spec.Hostname = ""
	sb := mustConvert(t, input(spec))
	if sb.Boot.User != "0:0" || sb.Boot.Hostname != "" {
		t.Fatalf("got %q %q", sb.Boot.User, sb.Boot.Hostname)
	}
	spec = baseSpec()
	spec.Process.User = specs.User{UID: 4294967294, GID: 7}
	if sb := mustConvert(t, input(spec)); sb.Boot.User != "4294967294:7" {
		t.Fatalf("got %q", sb.Boot.User)
	}
}

func TestConvertDoesNotMutateInput(t *testing.T) {
	spec := baseSpec()
	spec.Annotations = map[string]string{AnnotationHandoffInit: "/sbin/init", AnnotationVCPUs: "1"}
	spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1, Hard: 2}}
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 30)}}
	in := input(spec,
		mounts.Mount{Kind: mounts.KindSpecial, Destination: "/proc", Type: "proc", Options: []string{"nosuid"}},
		mounts.Mount{Kind: mounts.KindBindDir, Destination: "/a", Source: "/srv/a", Type: "bind", Options: []string{"rbind", "ro"}, ReadOnly: true},
		mounts.Mount{Kind: mounts.KindBindFile, Destination: "/f", Source: "/srv/f", Type: "bind"},
		mounts.Mount{Kind: mounts.KindTmpfs, Destination: "/t", Type: "tmpfs", Flags: []string{"nosuid"}},
		mounts.Mount{Kind: mounts.KindBlock, Destination: "/v", Source: "/img/v", Type: "xfs", FSType: "xfs", Format: "raw", Options: []string{"noatime"}},
	)
	before, _ := json.Marshal(in)
	sb := mustConvert(t, in)
	after, _ := json.Marshal(in)
	if string(before) != string(after) {
		t.Fatalf("input changed:\n%s\n%s", before, after)
	}
	// The guest spec and boot env share nothing with the input.
	sb.GuestSpec.Mounts[0].Options[0] = "changed"
	sb.GuestSpec.Process.Args[0] = "changed"
	sb.GuestSpec.Annotations["x"] = "y"
	sb.Boot.HandoffInitArgs[0] = "changed"
	sb.Boot.Tmpfs[0].Options[0] = "changed"
	sb.Boot.DiskMounts[0].Options[0] = "changed"
	if after2, _ := json.Marshal(in); string(after2) != string(before) {
		t.Fatalf("guest spec or boot env aliases the input:\n%s\n%s", before, after2)
	}
}

// The VMM joins a network namespace path on the host; the guest makes a
// new namespace. Hooks that run on the host leave the guest spec.
func TestNetworkPathAndHostHooks(t *testing.T) {
	spec := baseSpec()
	spec.Linux.Namespaces[1].Path = "/var/run/netns/cni-1234"
	spec.Hooks = &specs.Hooks{
		Prestart:      []specs.Hook{{Path: "/usr/bin/true"}},
		CreateRuntime: []specs.Hook{{Path: "/usr/local/bin/nerdctl", Args: []string{"nerdctl", "internal", "oci-hook", "createRuntime"}}},
		Poststart:     []specs.Hook{{Path: "/usr/bin/true"}},
		Poststop:      []specs.Hook{{Path: "/usr/local/bin/nerdctl"}},
	}
	sb, err := Convert(input(spec))
	if err != nil {
		t.Fatal(err)
	}
	if sb.NetNS != "/var/run/netns/cni-1234" {
		t.Errorf("NetNS = %q", sb.NetNS)
	}
	if sb.GuestSpec.Hooks != nil {
		t.Errorf("guest spec keeps hooks: %+v", sb.GuestSpec.Hooks)
	}
	for _, ns := range sb.GuestSpec.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("guest namespace %s keeps path %q", ns.Type, ns.Path)
		}
	}
	if spec.Hooks == nil || spec.Linux.Namespaces[1].Path == "" {
		t.Error("Convert modified its input")
	}
	// Without a path the VMM gets a new namespace.
	if sb, err := Convert(input(baseSpec())); err != nil || sb.NetNS != "" {
		t.Errorf("NetNS = %q, %v", sb.NetNS, err)
	}
}
