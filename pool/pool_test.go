package pool

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/config"
	"github.com/pelletier/go-toml/v2"
)

// TestFingerprint: the same config and files give the same fingerprint;
// pool_size does not count; another setting, a rebuilt kernel or root
// disk, or another VMM binary gives another.
func TestFingerprint(t *testing.T) {
	dir := t.TempDir()
	c := config.Default()
	c.Kernel = filepath.Join(dir, "vmlinux")
	bin := filepath.Join(dir, "msb-runtime")
	for _, f := range []string{c.Kernel, filepath.Join(dir, "rootfs.img"), bin} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := Fingerprint(c, bin)
	c2 := c
	c2.PoolSize = 3
	if Fingerprint(c2, bin) != base {
		t.Error("pool_size changed the fingerprint")
	}
	c2.MemoryMiB++
	if Fingerprint(c2, bin) == base {
		t.Error("memory_mib did not change the fingerprint")
	}
	later := time.Now().Add(time.Hour)
	for _, f := range []string{c.Kernel, filepath.Join(dir, "rootfs.img"), bin} {
		st, _ := os.Stat(f)
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
		if Fingerprint(c, bin) == base {
			t.Errorf("rewriting %s did not change the fingerprint", filepath.Base(f))
		}
		if err := os.Chtimes(f, st.ModTime(), st.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
	if Fingerprint(c, bin) != base {
		t.Error("the fingerprint is not stable")
	}
}

// TestTemplateRetryLater: after a failed save, Fill does not boot another
// template VM until templateRetry passed; it says why the last one failed.
func TestTemplateRetryLater(t *testing.T) {
	b := Pool{Root: t.TempDir()}.bucket("fp")
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	failed := filepath.Join(b.dir, "template.failed")
	if err := os.WriteFile(failed, []byte("template VM: exit 1 (the old guest image)"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := b.ensureTemplate(context.Background(), config.Config{Template: true})
	if err == nil || !strings.Contains(err.Error(), "the old guest image") || !strings.Contains(err.Error(), "retried after") {
		t.Fatalf("a fresh failure: %v, want the last failure named and no new save", err)
	}
}

// TestFingerprintRoundTrip: the shim's config and the one pool fill reads
// from the shim (TOML on stdin) name one bucket, else no claim ever finds
// the VMs and template a fill made.
func TestFingerprintRoundTrip(t *testing.T) {
	c, err := config.Parse("config.toml", []byte("template = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := toml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	filled, err := config.Parse("stdin", b)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := Fingerprint(c, "/bin/true"), Fingerprint(filled, "/bin/true"); a != b {
		t.Errorf("the shim's config fingerprints %s, the same config through pool fill's stdin %s", a, b)
	}
}
