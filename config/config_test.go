package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMissingFileGivesDefaults(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if err != nil || !reflect.DeepEqual(c, Default()) {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestOverrides(t *testing.T) {
	c, err := Load(write(t, "backend = \"qemu\"\nvcpus = 2\nmemory_mib = 512\naccel = \"tcg\"\nboot_timeout = \"90s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend != "qemu" || c.VCPUs != 2 || c.MemoryMiB != 512 || c.Accel != "tcg" || c.BootTimeoutDuration() != 90*time.Second || c.Kernel != Default().Kernel {
		t.Fatalf("%+v", c)
	}
}

func TestEnvOverridesPath(t *testing.T) {
	t.Setenv("MSB_CONFIG", write(t, "vcpus = 3\n"))
	c, err := Load("/nonexistent")
	if err != nil || c.VCPUs != 3 {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	for body, want := range map[string]string{
		"backend = \"xen\"\n":        "backend",
		"accel = \"hvf\"\n":          "accel",
		"vcpus = 0\n":                "vcpus",
		"memory_mib = 10\n":          "memory_mib",
		"overhead_mib = -1\n":        "overhead_mib",
		"boot_timeout = \"soon\"\n":  "boot_timeout",
		"kernal = \"/k\"\n":          "kernal",
		"vcpus = \n":                 "config.toml",
		"resize_memory_factor = 0\n": "resize_memory_factor",
	} {
		_, err := Load(write(t, body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want it to name %q", body, err, want)
		}
	}
}

func TestBounds(t *testing.T) {
	c, err := Load(write(t, "max_vcpus = 2\nmax_memory_mib = 1024\nenable_annotations = ['io\\.msb\\..*']\n"))
	if err != nil || c.VCPUBound() != 2 || c.MemoryBound() != 1024 || len(c.EnableAnnotations) != 1 {
		t.Fatalf("%+v %v", c, err)
	}
	if d := Default(); d.VCPUBound() < 1 || d.MemoryBound() < 64 {
		t.Fatalf("host bounds %d vcpus %d MiB", d.VCPUBound(), d.MemoryBound())
	}
	for text, want := range map[string]string{
		"max_vcpus = -1\n":                        "must not be negative",
		"enable_annotations = ['io\\.msb\\.(']\n": "enable_annotations[0]",
	} {
		if _, err := Load(write(t, text)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
}

// The headroom is the factor times the VM's size, bounded by
// max_memory_mib, never below the size itself.
func TestMemoryCeiling(t *testing.T) {
	c := Default()
	c.MaxMemoryMiB = 1024
	for _, tc := range []struct{ factor, size, want int }{
		{2, 256, 512},
		{1, 256, 256},
		{4, 384, 1024},
		{2, 1024, 1024},
		{0, 300, 300},
	} {
		c.ResizeMemoryFactor = tc.factor
		if got := c.MemoryCeiling(tc.size); got != tc.want {
			t.Errorf("factor %d size %d: ceiling %d, want %d", tc.factor, tc.size, got, tc.want)
		}
	}
	if d := Default(); d.ResizeMemoryFactor != 2 {
		t.Errorf("default resize_memory_factor %d, want 2", d.ResizeMemoryFactor)
	}
}
