package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func anyOf(t *testing.T, o *runtimeoptions.Options) *anypb.Any {
	t.Helper()
	a, err := anypb.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRuntimeOptionsConfig(t *testing.T) {
	t.Setenv("MSB_CONFIG", filepath.Join(t.TempDir(), "absent.toml"))
	p := filepath.Join(t.TempDir(), "big.toml")
	if err := os.WriteFile(p, []byte("vcpus = 4\nmemory_mib = 1024\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(anyOf(t, &runtimeoptions.Options{ConfigPath: p}))
	if err != nil || c.VCPUs != 4 || c.MemoryMiB != 1024 {
		t.Fatalf("config_path: %+v %v", c, err)
	}
	c, err = loadConfig(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte("vcpus = 2\n")}))
	if err != nil || c.VCPUs != 2 {
		t.Fatalf("config_body: %+v %v", c, err)
	}
	if c, err = loadConfig(nil); err != nil || c.VCPUs != 1 {
		t.Fatalf("no options: %+v %v", c, err)
	}
	if _, err := loadConfig(anyOf(t, &runtimeoptions.Options{ConfigPath: "/nonexistent.toml"})); err == nil || !strings.Contains(err.Error(), "/nonexistent.toml") {
		t.Fatalf("missing config_path: %v", err)
	}
	// CRI's stdio owner for a user namespace: the default config.
	io, _ := anypb.New(&runcoptions.Options{IoUid: 1000, IoGid: 1000})
	if c, err = loadConfig(io); err != nil || c.VCPUs != 1 {
		t.Fatalf("runc options (IoUid): %+v %v", c, err)
	}
	other, _ := anypb.New(wrapperspb.String("x"))
	if _, err := loadConfig(other); err == nil || !strings.Contains(err.Error(), "runtimeoptions.v1.Options") {
		t.Fatalf("foreign options type: %v", err)
	}
}
