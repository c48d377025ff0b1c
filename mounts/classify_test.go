package mounts

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// fixture builds a bundle dir with every kind of source a test needs.
type fixture struct {
	bundle string // resolved (t.TempDir may sit behind a symlink)
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	d, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := fixture{bundle: d}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(f.p("data/sub"), 0o755))
	must(os.WriteFile(f.p("hosts"), []byte("127.0.0.1 localhost\n"), 0o644))
	must(os.WriteFile(f.p("a:b"), nil, 0o644))
	must(os.WriteFile(f.p("a;b"), nil, 0o644))
	must(os.WriteFile(f.p("a,b=c"), nil, 0o644))
	must(os.WriteFile(f.p("disk.img"), make([]byte, 4096), 0o644))
	must(os.WriteFile(f.p("disk.qcow2"), make([]byte, 4096), 0o644))
	must(os.WriteFile(f.p("disk.VMDK"), make([]byte, 4096), 0o644))
	must(os.WriteFile(f.p("blob"), make([]byte, 4096), 0o644))
	must(os.Symlink("blob", f.p("link.qcow2")))
	must(os.Symlink("data", f.p("datalink")))
	must(os.Symlink("/etc", f.p("outside")))
	must(os.Symlink("loop2", f.p("loop1")))
	must(os.Symlink("loop1", f.p("loop2")))
	must(os.Symlink("nowhere", f.p("dangling")))
	must(unix.Mkfifo(f.p("fifo"), 0o600))
	l, err := net.Listen("unix", f.p("sock"))
	must(err)
	t.Cleanup(func() { l.Close() })
	return f
}

func (f fixture) p(name string) string { return filepath.Join(f.bundle, name) }

func TestClassify(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name string
		in   specs.Mount
		want Mount
	}{
		{"proc", specs.Mount{Destination: "/proc", Type: "proc", Source: "proc"},
			Mount{Kind: KindSpecial, Destination: "/proc", Type: "proc"}},
		{"sysfs ro", specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "ro"}},
			Mount{Kind: KindSpecial, Destination: "/sys", Type: "sysfs", ReadOnly: true, Options: []string{"nosuid", "ro"}}},
		{"devpts", specs.Mount{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"newinstance"}},
			Mount{Kind: KindSpecial, Destination: "/dev/pts", Type: "devpts", Options: []string{"newinstance"}}},
		{"mqueue", specs.Mount{Destination: "/dev/mqueue", Type: "mqueue"},
			Mount{Kind: KindSpecial, Destination: "/dev/mqueue", Type: "mqueue"}},
		{"cgroup", specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup"},
			Mount{Kind: KindSpecial, Destination: "/sys/fs/cgroup", Type: "cgroup"}},
		{"cgroup2", specs.Mount{Destination: "/sys/fs/cgroup/", Type: "cgroup2"},
			Mount{Kind: KindSpecial, Destination: "/sys/fs/cgroup", Type: "cgroup2"}},
		{"dev tmpfs", specs.Mount{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			Mount{Kind: KindSpecial, Destination: "/dev", Type: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}}},
		{"shm", specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			Mount{Kind: KindTmpfs, Destination: "/dev/shm", Type: "tmpfs", SizeBytes: 65536 << 10, Mode: 0o1777, Flags: []string{"noexec", "nosuid", "nodev"}}},
		{"tmpfs plain", specs.Mount{Destination: "/tmp", Type: "tmpfs"},
			Mount{Kind: KindTmpfs, Destination: "/tmp", Type: "tmpfs"}},
		{"tmpfs last wins", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"ro", "noexec", "rw", "exec", "nosuid", "suid", "nodev", "dev", "ro", "size=1", "size=2g", "mode=0700", "rprivate", "noatime"}},
			Mount{Kind: KindTmpfs, Destination: "/t", Type: "tmpfs", ReadOnly: true, SizeBytes: 2 << 30, Mode: 0o700, Flags: []string{"ro"}, Options: []string{"rprivate", "noatime"}}},
		{"tmpfs sizes", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=3M"}},
			Mount{Kind: KindTmpfs, Destination: "/t", Type: "tmpfs", SizeBytes: 3 << 20}},
		{"tmpfs size T", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=1t"}},
			Mount{Kind: KindTmpfs, Destination: "/t", Type: "tmpfs", SizeBytes: 1 << 40}},
		{"tmpfs size K bytes", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=4096", "size=2K"}},
			Mount{Kind: KindTmpfs, Destination: "/t", Type: "tmpfs", SizeBytes: 2048}},
		{"bind dir", specs.Mount{Destination: "/data", Type: "bind", Source: f.p("data"), Options: []string{"rbind", "ro", "nosuid"}},
			Mount{Kind: KindBindDir, Destination: "/data", Source: f.p("data"), Type: "bind", ReadOnly: true, Options: []string{"rbind", "ro", "nosuid"}}},
		{"bind relative", specs.Mount{Destination: "/data", Type: "none", Source: "data/sub", Options: []string{"bind"}},
			Mount{Kind: KindBindDir, Destination: "/data", Source: f.p("data/sub"), Type: "none", Options: []string{"bind"}}},
		{"bind type rbind", specs.Mount{Destination: "/d", Type: "rbind", Source: f.p("data")},
			Mount{Kind: KindBindDir, Destination: "/d", Source: f.p("data"), Type: "rbind"}},
		{"bind empty type", specs.Mount{Destination: "/d", Source: f.p("data"), Options: []string{"rbind", "ro", "rw"}},
			Mount{Kind: KindBindDir, Destination: "/d", Source: f.p("data"), Options: []string{"rbind", "ro", "rw"}}},
		{"bind tmpfs type with bind option", specs.Mount{Destination: "/d", Type: "tmpfs", Source: f.p("data"), Options: []string{"bind"}},
			Mount{Kind: KindBindDir, Destination: "/d", Source: f.p("data"), Type: "tmpfs", Options: []string{"bind"}}},
		{"bind symlinked dir", specs.Mount{Destination: "/d", Type: "bind", Source: f.p("datalink")},
			Mount{Kind: KindBindDir, Destination: "/d", Source: f.p("data"), Type: "bind"}},
		// A symlink leaving the bundle is followed, like runc does on the
		// host: Source is what is really shared, so it is reported.
		{"bind symlink outside", specs.Mount{Destination: "/hostetc", Type: "bind", Source: f.p("outside"), Options: []string{"ro"}},
			Mount{Kind: KindBindDir, Destination: "/hostetc", Source: "/etc", Type: "bind", ReadOnly: true, Options: []string{"ro"}}},
		{"bind file", specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: f.p("hosts"), Options: []string{"rbind", "rprivate"}},
			Mount{Kind: KindBindFile, Destination: "/etc/hosts", Source: f.p("hosts"), Type: "bind", Options: []string{"rbind", "rprivate"}}},
		{"bind file comma name", specs.Mount{Destination: "/x", Type: "bind", Source: f.p("a,b=c")},
			Mount{Kind: KindBindFile, Destination: "/x", Source: f.p("a,b=c"), Type: "bind"}},
		// Separators are fine for directories: they never enter the grammar.
		{"bind dir odd dest", specs.Mount{Destination: "/a:b;c,d\ne", Type: "bind", Source: f.p("data")},
			Mount{Kind: KindBindDir, Destination: "/a:b;c,d\ne", Source: f.p("data"), Type: "bind"}},
		{"dest cleaned", specs.Mount{Destination: "/a/./b/../c//", Type: "tmpfs"},
			Mount{Kind: KindTmpfs, Destination: "/a/c", Type: "tmpfs"}},
		{"block ext4", specs.Mount{Destination: "/vol", Type: "ext4", Source: f.p("disk.img"), Options: []string{"noatime"}},
			Mount{Kind: KindBlock, Destination: "/vol", Source: f.p("disk.img"), Type: "ext4", Format: "raw", FSType: "ext4", Options: []string{"noatime"}}},
		{"block qcow2 by ext", specs.Mount{Destination: "/vol", Type: "xfs", Source: "disk.qcow2", Options: []string{"ro"}},
			Mount{Kind: KindBlock, Destination: "/vol", Source: f.p("disk.qcow2"), Type: "xfs", ReadOnly: true, Format: "qcow2", FSType: "xfs", Options: []string{"ro"}}},
		{"block vmdk by ext", specs.Mount{Destination: "/vol", Type: BlockType, Source: f.p("disk.VMDK")},
			Mount{Kind: KindBlock, Destination: "/vol", Source: f.p("disk.VMDK"), Type: BlockType, Format: "vmdk"}},
		{"block ext of link", specs.Mount{Destination: "/vol", Type: "erofs", Source: f.p("link.qcow2")},
			Mount{Kind: KindBlock, Destination: "/vol", Source: f.p("blob"), Type: "erofs", Format: "qcow2", FSType: "erofs"}},
		{"block format option", specs.Mount{Destination: "/vol", Type: BlockType, Source: f.p("disk.qcow2"), Options: []string{"msb.format=raw", "ro"}},
			Mount{Kind: KindBlock, Destination: "/vol", Source: f.p("disk.qcow2"), Type: BlockType, ReadOnly: true, Format: "raw", Options: []string{"ro"}}},
		{"block squashfs", specs.Mount{Destination: "/vol", Type: "squashfs", Source: f.p("blob"), Options: []string{"msb.format=vmdk"}},
			Mount{Kind: KindBlock, Destination: "/vol", Source: f.p("blob"), Type: "squashfs", Format: "vmdk", FSType: "squashfs"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Classify([]specs.Mount{{Destination: "/proc", Type: "proc"}, c.in}, f.bundle)
			if err != nil {
				t.Fatal(err)
			}
			c.want.Index = 1
			if !reflect.DeepEqual(got[1], c.want) {
				t.Fatalf("got  %+v\nwant %+v", got[1], c.want)
			}
		})
	}
}

func TestClassifyBlockDevice(t *testing.T) {
	dev := ""
	for _, p := range []string{"/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 {
			dev = p
			break
		}
	}
	if dev == "" {
		t.Skip("no block device node to test with")
	}
	got, err := Classify([]specs.Mount{{Destination: "/vol", Type: "ext4", Source: dev}}, "/")
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Kind != KindBlock || got[0].Format != "raw" {
		t.Fatalf("got %+v", got[0])
	}
	_, err = Classify([]specs.Mount{{Destination: "/vol", Type: "bind", Source: dev}}, "/")
	if err == nil || !strings.Contains(err.Error(), "block device") {
		t.Fatalf("bind of block device: %v", err)
	}
}

func TestClassifyErrors(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name string
		in   specs.Mount
		want []string
	}{
		{"relative dest", specs.Mount{Destination: "tmp", Type: "tmpfs"}, []string{`mounts[0].destination "tmp"`, "absolute"}},
		{"empty dest", specs.Mount{Type: "tmpfs"}, []string{"mounts[0].destination", "empty"}},
		{"escaping dest", specs.Mount{Destination: "/../etc", Type: "tmpfs"}, []string{"mounts[0].destination", "climbs above"}},
		{"escaping dest deep", specs.Mount{Destination: "/a/../../b", Type: "tmpfs"}, []string{"climbs above"}},
		{"root dest", specs.Mount{Destination: "/a/..", Type: "tmpfs"}, []string{"container root"}},
		{"nul dest", specs.Mount{Destination: "/a\x00", Type: "tmpfs"}, []string{"NUL"}},
		{"idmap uid only", specs.Mount{Destination: "/d", Type: "bind", Source: f.p("data"), UIDMappings: []specs.LinuxIDMapping{{Size: 1}}}, []string{"mounts[0].uidMappings", "both"}},
		{"idmap tmpfs", specs.Mount{Destination: "/d", Type: "tmpfs", UIDMappings: []specs.LinuxIDMapping{{Size: 1}}, GIDMappings: []specs.LinuxIDMapping{{Size: 1}}}, []string{"mounts[0].uidMappings", "only a bind"}},
		{"nfs", specs.Mount{Destination: "/d", Type: "nfs", Source: "server:/x"}, []string{`mounts[0].type "nfs"`, "bind-mount"}},
		{"overlay", specs.Mount{Destination: "/d", Type: "overlay", Source: "overlay"}, []string{`mounts[0].type "overlay"`}},
		{"empty type", specs.Mount{Destination: "/d", Source: f.p("data")}, []string{"mounts[0].type is empty"}},
		{"bind empty source", specs.Mount{Destination: "/d", Type: "bind"}, []string{`mounts[0].source ""`, "empty"}},
		{"bind missing", specs.Mount{Destination: "/d", Type: "bind", Source: f.p("missing")}, []string{"mounts[0].source", f.p("missing"), "does not exist"}},
		{"bind dangling", specs.Mount{Destination: "/d", Type: "bind", Source: f.p("dangling")}, []string{"mounts[0].source", "does not exist"}},
		{"bind loop", specs.Mount{Destination: "/d", Type: "bind", Source: f.p("loop1")}, []string{"mounts[0].source", "cannot resolve", "too many links"}},
		{"bind relative no bundle", specs.Mount{Destination: "/d", Type: "bind", Source: "data"}, []string{"mounts[0].source", "bundle dir"}},
		{"bind dev null", specs.Mount{Destination: "/dev/null", Type: "bind", Source: "/dev/null"}, []string{`mounts[0].source "/dev/null"`, "character device", "cannot be passed into a VM"}},
		{"bind fifo", specs.Mount{Destination: "/f", Type: "bind", Source: f.p("fifo")}, []string{"mounts[0].source", "fifo", "cannot be passed into a VM"}},
		{"bind socket", specs.Mount{Destination: "/s", Type: "bind", Source: f.p("sock")}, []string{"mounts[0].source", "unix socket", "cannot be passed into a VM"}},
		{"bind file colon", specs.Mount{Destination: "/x", Type: "bind", Source: f.p("a:b")}, []string{"mounts[0].source", `file name "a:b"`, "':'"}},
		{"bind file semicolon", specs.Mount{Destination: "/x", Type: "bind", Source: f.p("a;b")}, []string{"mounts[0].source", `file name "a;b"`, "';'"}},
		{"bind with format", specs.Mount{Destination: "/x", Type: "bind", Source: f.p("disk.img"), Options: []string{"msb.format=raw"}}, []string{"mounts[0].options", "only to block"}},
		{"tmpfs with format", specs.Mount{Destination: "/x", Type: "tmpfs", Options: []string{"msb.format=raw"}}, []string{"mounts[0].options", "only to block"}},
		{"bad format", specs.Mount{Destination: "/x", Type: BlockType, Source: f.p("disk.img"), Options: []string{"msb.format=vhd"}}, []string{`mounts[0].options "msb.format=vhd"`, "raw, qcow2 or vmdk"}},
		{"unknown msb option", specs.Mount{Destination: "/x", Type: "tmpfs", Options: []string{"msb.cache=none"}}, []string{`"msb.cache=none"`, "unknown msb option"}},
		{"tmpfs percent", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=50%"}}, []string{`mounts[0].options "size=50%"`, "percentage"}},
		{"tmpfs size junk", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=lots"}}, []string{`"size=lots"`, "number of bytes"}},
		{"tmpfs size empty", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size="}}, []string{`"size="`, "number of bytes"}},
		{"tmpfs size negative", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=-1m"}}, []string{"number of bytes"}},
		{"tmpfs size zero", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=0"}}, []string{"size=0"}},
		{"tmpfs size overflow", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"size=9000000000t"}}, []string{"overflows"}},
		{"tmpfs mode", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"mode=789"}}, []string{`"mode=789"`, "octal"}},
		{"tmpfs mode big", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"mode=17777"}}, []string{"octal"}},
		{"tmpfs unknown", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"nr_inodes=5"}}, []string{`mounts[0].options "nr_inodes=5"`, "not supported"}},
		{"tmpfs uid", specs.Mount{Destination: "/t", Type: "tmpfs", Options: []string{"uid=1000"}}, []string{`"uid=1000"`}},
		{"block missing", specs.Mount{Destination: "/v", Type: "ext4", Source: f.p("nope.img")}, []string{"mounts[0].source", "does not exist"}},
		{"block dir", specs.Mount{Destination: "/v", Type: "ext4", Source: f.p("data")}, []string{"mounts[0].source", "is a directory", "bind mount"}},
		{"block chardev", specs.Mount{Destination: "/v", Type: BlockType, Source: "/dev/null"}, []string{"mounts[0].source", "character device"}},
		{"block fifo", specs.Mount{Destination: "/v", Type: "xfs", Source: f.p("fifo")}, []string{"fifo"}},
		{"block no source", specs.Mount{Destination: "/v", Type: "ext4"}, []string{`mounts[0].source ""`, "empty"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bundle := f.bundle
			if c.name == "bind relative no bundle" {
				bundle = "rel"
			}
			got, err := Classify([]specs.Mount{c.in}, bundle)
			if err == nil {
				t.Fatalf("got %+v, want error", got)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestClassifyIndexInError(t *testing.T) {
	_, err := Classify([]specs.Mount{
		{Destination: "/proc", Type: "proc"},
		{Destination: "/a", Type: "tmpfs"},
		{Destination: "/b", Type: "bind", Source: "/nonexistent-msb-test"},
	}, "/")
	if err == nil || !strings.HasPrefix(err.Error(), `mounts[2].source "/nonexistent-msb-test"`) {
		t.Fatalf("got %v", err)
	}
	got, err := Classify(nil, "")
	if err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
}

func TestKindString(t *testing.T) {
	want := map[Kind]string{KindBindDir: "bind-dir", KindBindFile: "bind-file", KindTmpfs: "tmpfs",
		KindBlock: "block", KindSpecial: "special", Kind(0): "Kind(0)", Kind(42): "Kind(42)"}
	for k, w := range want {
		if k.String() != w {
			t.Errorf("%d: %q, want %q", int(k), k.String(), w)
		}
	}
}

func TestUnknownBindOptions(t *testing.T) {
	got := UnknownBindOptions([]string{"rbind", "ro", "rnosuid", "rprivate", "nonsense", "foo=bar", "idmap", "rrelatime"})
	if strings.Join(got, ",") != "nonsense,foo=bar" {
		t.Fatalf("unknown = %q", got)
	}
}
