package modprobe

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeModprober lays out a module tree (index files only: the loader is
// fake) and records what it loads.
func fakeModprober(t *testing.T, loadedAlready ...string) (*modprober, *[]string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "6.1.0-test")
	files := map[string]string{
		"modules.dep": "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n" +
			"kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n" +
			"kernel/net/llc/llc.ko:\n" +
			"kernel/drivers/net/dummy.ko:\n" +
			"kernel/crypto/crc32c_generic.ko:\n" +
			"kernel/arch/x86/crypto/crc32c-intel.ko:\n" +
			"kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n" +
			"kernel/fs/jbd2/jbd2.ko:\n" +
			"kernel/fs/mbcache.ko:\n" +
			"kernel/net/xt-dash.ko.xz:\n" +
			"kernel/fs/broken.ko: kernel/fs/fails.ko\n" +
			"kernel/fs/fails.ko:\n",
		"modules.alias": "# comment\n" +
			"alias rtnl-link-bridge bridge\n" +
			"alias rtnl-link-dummy dummy\n" +
			"alias crypto-crc32c crc32c_generic\n" +
			"alias crc32c crc32c_generic\n" +
			"alias crypto-crc32c crc32c-intel\n" +
			"alias fs-ext[234] ext4\n" +
			"alias pci:v00001AF4d*sv*sd*bc*sc*i* dummy\n" +
			"alias ipt_* xt_dash\n",
		"modules.softdep":         "softdep ext4 pre: crc32c post: nosuch\n",
		"modules.builtin":         "kernel/net/unix/unix.ko\nkernel/fs/proc-thing.ko\n",
		"modules.builtin.modinfo": "unix.alias=net-pf-1\x00unix.license=GPL\x00tmpfs.alias=fs-tmpfs\x00",
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var loads []string
	loaded := map[string]bool{}
	for _, n := range loadedAlready {
		loaded[n] = true
	}
	m := newModprober(dir)
	m.load = func(p, params string) error {
		rel, _ := filepath.Rel(dir, p)
		if strings.Contains(rel, "fails") {
			return errors.New("exec format error")
		}
		if params != "" {
			rel += " " + params
		}
		loads = append(loads, rel)
		loaded[canonical(p)] = true
		return nil
	}
	m.loaded = func(name string) bool { return loaded[name] }
	m.logf = t.Logf
	return m, &loads
}

func TestModprobeResolve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		want    []string // loaded, in order
		wantErr string
	}{
		// Alias, dependencies first (modules.dep lists the last to load first).
		{name: "rtnl-link-bridge", want: []string{"kernel/net/llc/llc.ko", "kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko"}},
		// '-' and '_' alike in aliases and module names.
		{name: "rtnl_link_dummy", want: []string{"kernel/drivers/net/dummy.ko"}},
		{name: "crc32c-generic", want: []string{"kernel/crypto/crc32c_generic.ko"}},
		{name: "crc32c_intel", want: []string{"kernel/arch/x86/crypto/crc32c-intel.ko"}},
		{name: "xt-dash", want: []string{"kernel/net/xt-dash.ko.xz"}},
		// Glob aliases (fnmatch): bracket range and '*'.
		{name: "fs-ext3", want: []string{"kernel/crypto/crc32c_generic.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko"}},
		{name: "ipt_REJECT", want: []string{"kernel/net/xt-dash.ko.xz"}},
		{name: "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", want: []string{"kernel/drivers/net/dummy.ko"}},
		// Built in: by name, with a dash, or by a built-in alias.
		{name: "unix"},
		{name: "proc_thing"},
		{name: "net-pf-1"},
		{name: "fs-tmpfs"},
		{name: "fs-ext5", wantErr: "module fs-ext5 not found"},
		{name: "nosuch", wantErr: "module nosuch not found"},
		{name: "broken", wantErr: "fails (dependency of broken): exec format error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, loads := fakeModprober(t)
			err := m.probe(tc.name, "")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*loads, tc.want) && !(len(*loads) == 0 && len(tc.want) == 0) {
				t.Errorf("loaded %q, want %q", *loads, tc.want)
			}
		})
	}
}

func TestModprobeLoadedAlreadyAndParams(t *testing.T) {
	m, loads := fakeModprober(t, "llc", "bridge")
	if err := m.probe("bridge", ""); err != nil || len(*loads) != 0 {
		t.Errorf("loaded module probed again: %q %v", *loads, err)
	}
	m, loads = fakeModprober(t, "llc")
	if err := m.probe("rtnl-link-bridge", "x=1 y=2"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko x=1 y=2"}; !reflect.DeepEqual(*loads, want) {
		t.Errorf("loaded %q, want %q", *loads, want)
	}
	// An alias with several modules: the first that loads is enough.
	m, loads = fakeModprober(t)
	if err := m.probe("crypto-crc32c", ""); err != nil || len(*loads) != 1 {
		t.Errorf("crypto-crc32c: %q %v", *loads, err)
	}
}

func TestModprobeNoTree(t *testing.T) {
	m := newModprober(filepath.Join(t.TempDir(), "6.1.0-none"))
	err := m.probe("bridge", "")
	if err == nil || !strings.Contains(err.Error(), "no module tree for kernel 6.1.0-none") {
		t.Errorf("err = %v", err)
	}
}

func TestModprobeArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-r", "bridge"}, "-r is not supported"},
		{[]string{"--first-time", "bridge"}, "option --first-time is not supported"},
		{nil, "usage"},
		{[]string{"-q", "--"}, "usage"},
	} {
		var out bytes.Buffer
		if code := Main(tc.args, &out); code != 1 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("Main(%q) = %d, %q; want 1 and %q", tc.args, code, out.String(), tc.want)
		}
	}
	// -q hides the reason; the kernel's own call shape.
	var out bytes.Buffer
	if code := Main([]string{"-q", "--", "msb-test-no-such-module"}, &out); code != 1 || out.Len() != 0 {
		t.Errorf("quiet failure: %d %q", code, out.String())
	}
}

func TestNormalizeAlias(t *testing.T) {
	for in, want := range map[string]string{
		"rtnl-link-dummy": "rtnl_link_dummy",
		"fs-ext[2-4]":     "fs_ext[2-4]",
		"a-[x-y]-b":       "a_[x-y]_b",
	} {
		if got := normalizeAlias(in); got != want {
			t.Errorf("normalizeAlias(%q) = %q, want %q", in, got, want)
		}
	}
}
