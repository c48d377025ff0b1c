package vmm

import "testing"

// A VM has the headroom its launch config gives, a template's and one
// started from it too (its RAM file is of the ceiling).
func TestMemoryCeiling(t *testing.T) {
	for _, tc := range []struct {
		c    LaunchConfig
		want int
	}{
		{LaunchConfig{MemoryMiB: 256}, 256},
		{LaunchConfig{MemoryMiB: 256, MaxMemoryMiB: 512}, 512},
		{LaunchConfig{MemoryMiB: 256, MaxMemoryMiB: 512, Template: "/p/t.sock"}, 512},
		{LaunchConfig{MemoryMiB: 256, MaxMemoryMiB: 512, TemplateSave: "/p"}, 512},
	} {
		if got := tc.c.MemoryCeiling(); got != tc.want {
			t.Errorf("%+v: ceiling %d, want %d", tc.c, got, tc.want)
		}
	}
}
