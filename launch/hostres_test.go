package launch

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
)

func TestCgroupfsPath(t *testing.T) {
	for in, want := range map[string]string{
		"":                        "",
		"/default/c1":             "/default/c1",
		"/a//b/":                  "/a/b",
		"docker/abc":              "/docker/abc",
		"system.slice:docker:abc": "/system.slice/docker-abc.scope",
		":cri-containerd:abc":     "/system.slice/cri-containerd-abc.scope",
		"kubepods-burstable-pod1_2.slice:cri-containerd:abc": "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/cri-containerd-abc.scope",
		"-.slice:p:n":         "/p-n.scope",
		"machine.slice::vm1":  "/machine.slice/vm1.scope",
		"a.slice:p:b-c.slice": "/a.slice/b-c.slice",
	} {
		got, err := CgroupfsPath(in)
		if err != nil || got != want {
			t.Errorf("CgroupfsPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"/":                 "root cgroup",
		"/a/../../etc":      `".."`,
		"../x":              `".."`,
		"a:b":               "slice:prefix:name",
		"a:b:c:d":           "slice:prefix:name",
		"foo:p:n":           `slice "foo"`,
		"a--b.slice:p:n":    "empty component",
		"-a.slice:p:n":      "empty component",
		"a/b.slice:p:n":     "without /",
		"a.slice:p:":        "name must be set",
		"a.slice:p:../../x": "neither may contain /",
		"/x\x00":            "NUL",
	} {
		if _, err := CgroupfsPath(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CgroupfsPath(%q): err %v, want %q", in, err, want)
		}
	}
}

func TestHostResources(t *testing.T) {
	adj, shares := -500, uint64(256)
	spec := &specs.Spec{
		Process: &specs.Process{OOMScoreAdj: &adj},
		Linux: &specs.Linux{CgroupsPath: "k.slice:p:c1",
			Resources: &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: &shares}}},
	}
	cfg := config.Default()
	cfg.HostOverheadMiB = 99
	h, err := HostResources(spec, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if h.Cgroup != "/k.slice/p-c1.scope" || h.OOMScoreAdj != -500 || h.CPUShares != 256 || h.OverheadMiB != 99 {
		t.Errorf("%+v", h)
	}
	if h, err := HostResources(&specs.Spec{}, config.Default()); err != nil || h.Cgroup != "" || h.OOMScoreAdj != 0 {
		t.Errorf("empty spec: %+v, %v; want no cgroup, score 0", h, err)
	}
	spec.Linux.CgroupsPath = "/../x"
	if _, err := HostResources(spec, cfg); err == nil || !strings.Contains(err.Error(), `linux.cgroupsPath "/../x"`) {
		t.Errorf("malformed path: %v", err)
	}
	adj = 2000
	spec.Linux.CgroupsPath = ""
	if _, err := HostResources(spec, cfg); err == nil || !strings.Contains(err.Error(), "process.oomScoreAdj 2000") {
		t.Errorf("score out of range: %v", err)
	}
}
