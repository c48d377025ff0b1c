package specconv

// What Convert refuses, and the bounds and allow-list it applies.

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts"
)

func TestRefusals(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Input)
		want   []string
	}{
		{"nil spec", func(in *Input) { in.Spec = nil }, []string{"spec is nil"}},
		{"nil process", func(in *Input) { in.Spec.Process = nil }, []string{"process.args"}},
		{"empty args", func(in *Input) { in.Spec.Process.Args = nil }, []string{"process.args", "empty"}},
		{"nil root", func(in *Input) { in.Spec.Root = nil }, []string{"root", "missing"}},
		{"createContainer hook", func(in *Input) {
			in.Spec.Hooks = &specs.Hooks{CreateContainer: []specs.Hook{{Path: "/usr/bin/nvidia-hook"}}}
		}, []string{"hooks.createContainer[0]", "in the guest VM", "createRuntime or prestart"}},
		{"startContainer hook", func(in *Input) { in.Spec.Hooks = &specs.Hooks{StartContainer: []specs.Hook{{Path: "/x"}}} }, []string{"hooks.startContainer[0]"}},
		// Empty hook lists are not refused: the next check is the one that fails.
		{"empty hooks pass", func(in *Input) { in.Spec.Hooks = &specs.Hooks{}; in.ContainerID = "" }, []string{"container id"}},
		{"nil linux", func(in *Input) { in.Spec.Linux = nil }, []string{"linux", "network"}},
		{"ns path", func(in *Input) {
			in.Spec.Linux.Namespaces[2].Path = "/proc/1/ns/mnt"
		}, []string{`linux.namespaces[2].path "/proc/1/ns/mnt"`, "a VM cannot join a host namespace"}},
		{"host network", func(in *Input) {
			in.Spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}}
		}, []string{"linux.namespaces", "host networking", "hostNetwork, --network host", `{"type": "network"}`}},
		{"uid -1", func(in *Input) {
			in.Spec.Process.User.UID = 4294967295
		}, []string{"process.user.uid 4294967295", "0..4294967294"}},
		{"additional gid -1", func(in *Input) {
			in.Spec.Process.User.AdditionalGids = []uint32{10, 4294967295}
		}, []string{"process.user.additionalGids[1] 4294967295"}},
		{"host ipc", func(in *Input) {
			in.Spec.Linux.Namespaces = in.Spec.Linux.Namespaces[:3]
		}, []string{"linux.namespaces", "hostIPC, --ipc host", `{"type": "ipc"}`}},
		{"host pid", func(in *Input) {
			in.Spec.Linux.Namespaces = in.Spec.Linux.Namespaces[1:]
		}, []string{"linux.namespaces", "hostPID, --pid host", `{"type": "pid"}`}},
		{"user ns root unmapped", func(in *Input) {
			in.Spec.Linux.Namespaces = append(in.Spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
			in.Spec.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
			in.Spec.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 1, HostID: 100000, Size: 65535}}
		}, []string{"linux.gidMappings", "no mapping for container ID 0", "map container ID 0"}},
		{"host device", func(in *Input) {
			in.Spec.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/null"}, {Path: "/dev/fuse"}}
		}, []string{`linux.devices[1] "/dev/fuse"`, "cannot use the host's device nodes", "drop --device /dev/fuse"}},
		{"privileged", func(in *Input) {
			for _, p := range []string{"/dev/null", "/dev/sda", "/dev/kvm", "/dev/fuse", "/dev/loop0"} {
				in.Spec.Linux.Devices = append(in.Spec.Linux.Devices, specs.LinuxDevice{Path: p})
			}
		}, []string{"linux.devices: 4 host device nodes (/dev/sda, /dev/kvm, /dev/fuse, ...)", "--privileged", "privileged_without_host_devices = true"}},
		{"bad rlimit", func(in *Input) {
			in.Spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1, Hard: 1}, {Type: "RLIMIT_FOO"}}
		}, []string{`process.rlimits[1].type "RLIMIT_FOO"`, "unknown"}},
		{"dup rlimit", func(in *Input) {
			in.Spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE"}, {Type: "RLIMIT_NOFILE"}}
		}, []string{`process.rlimits[1].type "RLIMIT_NOFILE"`, "already set by process.rlimits[0]"}},
		{"rlimit soft>hard", func(in *Input) {
			in.Spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 2, Hard: 1}}
		}, []string{"process.rlimits[0]", "exceeds"}},
		{"mount count", func(in *Input) { in.Mounts = in.Mounts[:1] }, []string{"classified mounts", "mounts.Classify"}},
		{"mount index", func(in *Input) { in.Mounts[1].Index = 0 }, []string{"Index 0", "mounts.Classify"}},
		{"unknown kind", func(in *Input) { in.Mounts[1].Kind = 0 }, []string{"mounts[1]", "unclassified"}},
		{"relative stage dir", func(in *Input) { in.StageDir = "stage" }, []string{"mounts[2]", "stage dir"}},
		{"relative rootfs", func(in *Input) { in.RootfsHostPath = "rootfs" }, []string{"rootfs host path"}},
		{"no container id", func(in *Input) { in.ContainerID = "" }, []string{"container id"}},
		{"bad default vcpus", func(in *Input) { in.Defaults.VCPUs = 0 }, []string{"default vcpus", "runtime config"}},
		{"bad default memory", func(in *Input) { in.Defaults.MemoryMiB = 10 }, []string{"default memory"}},
		{"bad overhead", func(in *Input) { in.Defaults.OverheadMiB = -1 }, []string{"overhead"}},
		{"bad default backend", func(in *Input) { in.Defaults.Backend = "" }, []string{"default backend"}},
		{"disk twice differently", func(in *Input) {
			m := in.Mounts[3]
			m.Index, m.FSType, m.Destination = 4, "xfs", "/v2"
			in.Mounts = append(in.Mounts, m)
			in.Spec.Mounts = append(in.Spec.Mounts, specs.Mount{Destination: "/v2"})
		}, []string{"mounts[4]", "same disk /img/a as mounts[3]"}},
		{"handoff env with NUL", func(in *Input) {
			in.Spec.Annotations = map[string]string{AnnotationHandoffInit: "/init"}
			in.Spec.Process.Env = []string{"A=\x00"}
		}, []string{"guest boot env", "HandoffInitEnv[0]", "NUL"}},
		{"disk option with comma", func(in *Input) { in.Mounts[3].Options = []string{"a,b"} }, []string{"guest boot env", "DiskMounts[0].Options[0]"}},
		{"hostname too long", func(in *Input) { in.Spec.Hostname = strings.Repeat("h", 65) }, []string{"guest boot env", "Hostname"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := input(baseSpec(),
				mounts.Mount{Kind: mounts.KindSpecial, Destination: "/proc", Type: "proc"},
				mounts.Mount{Kind: mounts.KindTmpfs, Destination: "/tmp", Type: "tmpfs"},
				mounts.Mount{Kind: mounts.KindBindFile, Destination: "/etc/hosts", Source: "/h/hosts", Type: "bind"},
				mounts.Mount{Kind: mounts.KindBlock, Destination: "/v", Source: "/img/a", Type: "ext4", FSType: "ext4", Format: "raw"},
			)
			c.mutate(&in)
			sb, err := Convert(in)
			if err == nil {
				t.Fatalf("got %+v, want error", sb)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestStandardDevicesAllowed(t *testing.T) {
	spec := baseSpec()
	for _, p := range []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/console", "/dev/ptmx"} {
		spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{Path: p, Type: "c"})
	}
	sb := mustConvert(t, input(spec))
	if len(sb.GuestSpec.Linux.Devices) != 8 {
		t.Fatalf("devices not kept: %+v", sb.GuestSpec.Linux.Devices)
	}
	spec.Hooks = &specs.Hooks{}
	mustConvert(t, input(spec))
}

func TestAnnotationsAndBounds(t *testing.T) {
	d := Defaults{VCPUs: 1, MemoryMiB: 256, OverheadMiB: 128, Backend: "auto", MaxVCPUs: 2, MaxMemoryMiB: 1024,
		EnableAnnotations: []string{`io\.msb\.(vcpus|memory-mib)`}}
	for _, c := range []struct {
		name string
		mut  func(*specs.Spec)
		want string // "" = accepted
	}{
		{"sizing annotations", func(s *specs.Spec) {
			l, q, p := int64(384<<20), int64(200000), uint64(100000)
			s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &l}, CPU: &specs.LinuxCPU{Quota: &q, Period: &p}}
			s.Annotations = map[string]string{"io.msb.vcpus": "2", "io.msb.memory-mib": "512", "other.io/x": "y"}
		}, ""},
		{"backend not enabled", func(s *specs.Spec) { s.Annotations = map[string]string{"io.msb.backend": "qemu"} },
			`annotations["io.msb.backend"]: not enabled for this runtime`},
		{"handoff not enabled", func(s *specs.Spec) { s.Annotations = map[string]string{"io.msb.handoff-init": "/sbin/init"} },
			"enable_annotations in /etc/msb/config.toml"},
		{"vcpus over the bound", func(s *specs.Spec) {
			q, p := int64(300000), uint64(100000)
			s.Linux.Resources = &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &q, Period: &p}}
		}, "VM vcpus 3 (from the CPU limit or io.msb.vcpus): over max_vcpus 2"},
		{"memory annotation over the limit", func(s *specs.Spec) { s.Annotations = map[string]string{"io.msb.memory-mib": "2048"} },
			`annotations["io.msb.memory-mib"] "2048": over its bound of 256 MiB`},
		{"memory limit over the bound", func(s *specs.Spec) {
			l := int64(1000 << 20)
			s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &l}}
		}, "VM memory 1128 MiB (from the memory limit plus overhead, or io.msb.memory-mib): over max_memory_mib 1024"},
	} {
		spec := baseSpec()
		c.mut(spec)
		in := input(spec)
		in.Defaults = d
		_, err := Convert(in)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
