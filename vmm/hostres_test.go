package vmm

import "testing"

func TestHostResourcesValidate(t *testing.T) {
	for _, h := range []HostResources{{Cgroup: "a/b"}, {Cgroup: "/a/../b"}, {Cgroup: "/"}, {Cgroup: "/a/"}, {OOMScoreAdj: 1001}, {OverheadMiB: -1}} {
		if err := h.Validate(); err == nil {
			t.Errorf("%+v passes", h)
		}
	}
	if err := (&HostResources{Cgroup: "/kubepods/pod1/c1", OOMScoreAdj: -997}).Validate(); err != nil {
		t.Error(err)
	}
}
