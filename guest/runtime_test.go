package guest

import (
	"bytes"
	"debug/elf"
	"path"
	"strings"
	"testing"

	"github.com/msb-dev/msb/agent/task"
)

const hostCrun = "/usr/bin/crun"

// TestCrunRuntimeClosure builds the runtime entries of the distribution's
// crun and checks the guest's loader would find every library: each
// DT_NEEDED of each entry is another entry in a loader directory.
func TestCrunRuntimeClosure(t *testing.T) {
	rt, err := loadRuntime(Options{Runtime: RuntimeCrun, CrunPath: hostCrun})
	if err != nil {
		if strings.Contains(err.Error(), "no such file") {
			t.Skipf("%v (apt-get install crun)", err)
		}
		t.Fatal(err)
	}
	byName := map[string]CpioEntry{}
	byBase := map[string]bool{}
	for _, e := range rt.entries {
		if _, dup := byName[e.Name]; dup {
			t.Errorf("%s twice", e.Name)
		}
		byName[e.Name] = e
		byBase[path.Base(e.Name)] = true
	}
	for _, want := range []string{"sbin/crun", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libseccomp.so.2", "lib/x86_64-linux-gnu/libyajl.so.2"} {
		if _, ok := byName[want]; !ok {
			t.Errorf("no %s in %v", want, rt.libs)
		}
	}
	if got := string(byName["etc/msb/oci-runtime"].Data); got != "/sbin/crun\n" {
		t.Errorf("etc/msb/oci-runtime = %q", got)
	}
	if e := byName["lib64/ld-linux-x86-64.so.2"]; e.Mode != sIFREG|0o755 {
		t.Errorf("loader mode %o, want a regular executable file", e.Mode)
	}
	for _, e := range rt.entries {
		if e.Name == "etc/msb/oci-runtime" {
			continue
		}
		if e.Mode&sIFMT != sIFREG {
			t.Errorf("%s: mode %o, want a regular file (symlinks followed)", e.Name, e.Mode)
		}
		f, err := elf.NewFile(bytes.NewReader(e.Data))
		if err != nil {
			t.Errorf("%s: %v", e.Name, err)
			continue
		}
		needed, _ := f.ImportedLibraries()
		for _, n := range needed {
			if !byBase[n] {
				t.Errorf("%s needs %s, which the guest root lacks", e.Name, n)
			}
		}
		if dir := "/" + path.Dir(e.Name); strings.HasPrefix(e.Name, "lib/") && !containsStr(libDirs, dir) {
			t.Errorf("%s: not in a directory the loader searches (%v)", e.Name, libDirs)
		}
	}
}

func containsStr(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// TestCrunRuntimeMissingLibrary: a library not found fails the build and
// names the library.
func TestCrunRuntimeMissingLibrary(t *testing.T) {
	_, _, err := readDynamicExe(hostCrun, "crun", []string{t.TempDir()})
	if err == nil {
		t.Fatal("a crun without its libraries accepted")
	}
	if strings.Contains(err.Error(), "no such file") {
		t.Skip(err)
	}
	if !strings.Contains(err.Error(), "libsystemd.so.0 (needed by /usr/bin/crun)") {
		t.Errorf("error %q does not name the missing library", err)
	}
}

func TestRuntimeOptions(t *testing.T) {
	for _, o := range []Options{{Runtime: "youki"}, {Runtime: RuntimeCrun}, {}} {
		if _, err := loadRuntime(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if _, err := loadRuntime(Options{Runtime: RuntimeRunc, RuncPath: hostCrun}); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("a dynamic runc: %v", err)
	}
}

func TestRuntimeFileIsTheAgents(t *testing.T) {
	if GuestRuntimeFile != task.RuntimeFile {
		t.Fatalf("guest.GuestRuntimeFile %q, task.RuntimeFile %q: the agent reads the other name", GuestRuntimeFile, task.RuntimeFile)
	}
}
