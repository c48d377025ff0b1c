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
