package task

import (
	"testing"

	"github.com/containerd/errdefs"
)

func TestPrepareRefuses(t *testing.T) {
	a := &Service{}
	for _, tc := range []struct {
		id  string
		env []string
	}{
		{"", nil},
		{"../x", nil},
		{"..", nil},
		{"c1", []string{"MSB_DISK_MOUNTS=d1:/run/msb/c/c1/disks/d1:ext4"}},
		{"c1", []string{"MSB_NOT_A_KEY=1"}},
	} {
		if err := a.Prepare(tc.id, tc.env); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Prepare(%q, %q) = %v, want invalid argument", tc.id, tc.env, err)
		}
	}
	if err := a.Prepare("c1", nil); err != nil {
		t.Fatalf("empty prepare: %v", err)
	}
	if err := a.Prepare("c1", nil); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second prepare: %v", err)
	}
	a.unprepare("c1")
	if err := a.Prepare("c1", nil); err != nil {
		t.Fatalf("prepare after unprepare: %v", err)
	}
}
