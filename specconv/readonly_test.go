package specconv

import (
	"slices"
	"testing"

	"github.com/msb-dev/msb/mounts"
)

// TestReadOnlyTop: "ro" on an rbind covers the top mount only, "rro" and
// a non-recursive "bind" everything (mounts.Share.Access).
func TestReadOnlyTop(t *testing.T) {
	for _, c := range []struct {
		opts []string
		want mounts.Access
	}{
		{[]string{"rbind", "ro"}, mounts.ReadOnlyTop},
		{[]string{"rbind", "ro", "rro"}, mounts.ReadOnlyRecursive},
		{[]string{"bind", "ro"}, mounts.ReadOnlyRecursive},
		{[]string{"rbind", "rw"}, mounts.Writable},
	} {
		spec := baseSpec()
		sb := mustConvert(t, input(spec, mounts.Mount{Kind: mounts.KindBindDir, Destination: "/a", Source: "/srv/a", Type: "bind",
			Options: c.opts, ReadOnly: slices.Contains(c.opts, "ro")}))
		if got := sb.Shares[1].Access(); got != c.want {
			t.Errorf("%v: access %v, want %v", c.opts, got, c.want)
		}
	}
}

// TestReadOnlyTopGuestOptions: a pod member's "ro" volume is not remounted
// read-only in the guest (the pod share is one filesystem there); the host
// bind's top mount carries it.
func TestReadOnlyTopGuestOptions(t *testing.T) {
	for _, c := range []struct {
		opts   []string
		wantRO bool
	}{{[]string{"rbind", "ro"}, false}, {[]string{"rbind", "rro"}, true}} {
		in := input(baseSpec(), mounts.Mount{Kind: mounts.KindBindDir, Destination: "/a", Source: "/srv/a", Type: "bind", Options: c.opts, ReadOnly: true})
		in.GuestDir = "/run/msb/c/x"
		sb := mustConvert(t, in)
		var got []string
		for _, m := range sb.GuestSpec.Mounts {
			if m.Destination == "/a" {
				got = m.Options
			}
		}
		if slices.Contains(got, "ro") != c.wantRO || sb.Boot.DirMounts[1].ReadOnly != c.wantRO {
			t.Errorf("%v: guest options %v, agent bind read-only %v", c.opts, got, sb.Boot.DirMounts[1].ReadOnly)
		}
	}
}
