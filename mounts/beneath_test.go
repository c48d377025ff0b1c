package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBindBeneathRace: a writer of the pod dir (the guest) swaps each new
// member dir for a symlink to a host directory while the host makes the
// member's bind below it, many times over: no directory and no mount may
// ever land outside the pod dir.
func TestBindBeneathRace(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	root, victim, src := filepath.Join(base, "pod"), filepath.Join(base, "victim"), filepath.Join(base, "src")
	for _, d := range []string{root, victim, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = UnmountBelow(base) })
	const n = 300
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the guest
		defer wg.Done()
		for {
			for i := 0; i < n; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := filepath.Join(root, fmt.Sprintf("m%d", i))
				if os.Rename(m, m+".moved") == nil {
					_ = os.Symlink(victim, m)
				}
			}
		}
	}()
	var bound, refused int
	for i := 0; i < n; i++ {
		m := fmt.Sprintf("m%d", i)
		d, err := MkdirBeneath(root, m)
		if err != nil {
			refused++
			continue
		}
		d.Close()
		if err := BindBeneath(root, m+"/v", src, Writable, nil); err != nil {
			refused++
			continue
		}
		bound++
	}
	close(stop)
	wg.Wait()
	t.Logf("%d binds made, %d refused (a symlink was in the way)", bound, refused)
	if ents, _ := os.ReadDir(victim); len(ents) > 0 {
		t.Fatalf("the guest steered a mkdir outside the pod dir: %s has %v", victim, ents)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), victim) {
		t.Fatalf("the guest steered a mount outside the pod dir (%s)", victim)
	}
	if bound == 0 {
		t.Fatal("no bind was made at all")
	}
	// Every bind is found and undone through the same walk.
	for i := 0; i < n; i++ {
		for _, m := range []string{fmt.Sprintf("m%d/v", i), fmt.Sprintf("m%d.moved/v", i)} {
			if err := UnmountBeneath(root, m); err != nil && !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) {
				t.Errorf("unmount %s: %v", m, err)
			}
		}
	}
	mi, _ = os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), root+"/") {
		t.Errorf("binds left below %s after UnmountBeneath", root)
	}
}

// TestBindBeneathReadOnlyRecursive: a read-only bind is read-only in its
// submounts too.
func TestBindBeneathReadOnlyRecursive(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	root, src := filepath.Join(base, "pod"), filepath.Join(base, "src")
	for _, d := range []string{root, src, filepath.Join(src, "sub")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", filepath.Join(src, "sub"), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountBelow(base) })
	if err := BindBeneath(root, "v", src, ReadOnlyRecursive, nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"v/f", "v/sub/f"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write %s: %v, want EROFS", f, err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "sub", "f"), nil, 0o644); err != nil {
		t.Errorf("the source itself must stay writable: %v", err)
	}
	if _, err := MkdirBeneath(root, "../escape"); err == nil {
		t.Error("MkdirBeneath accepted a path out of its root")
	}
}
