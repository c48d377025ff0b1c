package shim

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts"
)

func TestUnmountBelow(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	src, pod := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	member := filepath.Join(pod, "c1")
	if err := os.Mkdir(member, 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(member, "tag")
	if err := mounts.BindBeneath(pod, "c1/tag", src, mounts.ReadOnlyRecursive, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "g"), nil, 0o600); err == nil {
		t.Fatal("read-only bind is writable")
	}
	if _, err := os.Stat(filepath.Join(target, "f")); err != nil {
		t.Fatal(err)
	}
	if err := mounts.UnmountBelow(pod); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(target, "f")); err == nil {
		t.Fatal("still mounted")
	}
	if err := os.RemoveAll(pod); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "f")); err != nil {
		t.Fatalf("source emptied: %v", err)
	}
}

func TestPodSandbox(t *testing.T) {
	s := &service{containers: map[string]*container{}}
	live := &vm{podDir: "/x", dead: make(chan struct{})}
	s.containers["sb"] = &container{id: "sb", vm: live}
	spec := func(typ, id string) *specs.Spec {
		return &specs.Spec{Annotations: map[string]string{annotationContainerType: typ, annotationSandboxID: id}}
	}
	if s.podSandbox(spec("container", "sb")) == nil {
		t.Fatal("app container does not join its sandbox")
	}
	for _, sp := range []*specs.Spec{spec("sandbox", "sb"), spec("container", "other"), spec("container", ""), {}} {
		if s.podSandbox(sp) != nil {
			t.Fatalf("%v joins", sp.Annotations)
		}
	}
	s.containers["sb"].vm = &vm{dead: make(chan struct{})} // not a pod VM
	if s.podSandbox(spec("container", "sb")) != nil {
		t.Fatal("joins a VM without a pod share")
	}
}

func TestPodNamespaces(t *testing.T) {
	sb := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		{Type: specs.MountNamespace},
		{Type: specs.IPCNamespace, Path: "/proc/7/ns/ipc"},
	}}}
	host := takeHostNamespaces(sb)
	// The network path stays: the VMM joins it.
	if len(host) != 2 || host[specs.NetworkNamespace] != "/var/run/netns/cni-1" || sb.Linux.Namespaces[0].Path != "/var/run/netns/cni-1" ||
		host[specs.IPCNamespace] != "/proc/7/ns/ipc" || sb.Linux.Namespaces[2].Path != "" {
		t.Fatalf("took %v, left %+v", host, sb.Linux.Namespaces)
	}
	app := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		{Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"},
		{Type: specs.UTSNamespace, Path: "/proc/1/ns/uts"}, // not the sandbox's
		{Type: specs.MountNamespace},
	}}}
	// launch.FindJoin found the network path (the sandbox VMM's namespace)
	// and the ipc path (the sandbox task pid's); the uts path names
	// nothing of the sandbox's.
	got := joinedNamespaces(app, host, []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.IPCNamespace}, 42, 7)
	want := map[specs.LinuxNamespaceType]string{
		specs.NetworkNamespace: "/proc/7/ns/net",
		specs.IPCNamespace:     "/proc/7/ns/ipc",
	}
	if len(got) != len(want) || got[specs.NetworkNamespace] != want[specs.NetworkNamespace] || got[specs.IPCNamespace] != want[specs.IPCNamespace] {
		t.Fatalf("joined %v, want %v", got, want)
	}
	// The user namespace, which FindJoin leaves out: by the sandbox task
	// pid's path, or by the path CRI pinned in the sandbox's spec.
	for _, p := range []string{"/proc/42/ns/user", "/run/pinned-user"} {
		u := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UserNamespace, Path: p}}}}
		pinned := map[specs.LinuxNamespaceType]string{specs.UserNamespace: "/run/pinned-user"}
		if got := joinedNamespaces(u, pinned, nil, 42, 7); len(got) != 1 || got[specs.UserNamespace] != "/proc/7/ns/user" {
			t.Errorf("user namespace %s: joined %v, want the sandbox init's", p, got)
		}
	}
	other := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UserNamespace, Path: "/proc/1/ns/user"}}}}
	if got := joinedNamespaces(other, nil, nil, 42, 7); len(got) != 0 {
		t.Errorf("another process's user namespace joined: %v", got)
	}
}
