package guest

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
)

func TestCpioRoundTrip(t *testing.T) {
	in := []CpioEntry{
		{Name: "/init", Mode: sIFREG | 0o755, Data: []byte("agent")},
		{Name: "lib/modules/v/kernel/a.ko", Mode: sIFREG | 0o644, Data: []byte("abc")},
		{Name: "dev/console", Mode: sIFCHR | 0o600, Major: 5, Minor: 1},
		{Name: "tmp", Mode: sIFDIR | 0o1777},
		{Name: "bin/sh", Mode: sIFLNK | 0o777, Data: []byte("busybox")},
	}
	var a, b bytes.Buffer
	if err := writeCpio(&a, in); err != nil {
		t.Fatal(err)
	}
	// Deterministic regardless of input order.
	rev := append([]CpioEntry(nil), in...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	if err := writeCpio(&b, rev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("archive depends on input order")
	}
	if a.Len()%512 != 0 {
		t.Errorf("archive length %d not padded to 512", a.Len())
	}

	got, err := readCpio(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var listing []string
	for _, e := range got {
		listing = append(listing, e.Name)
	}
	want := []string{"bin", "bin/sh", "dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/v", "lib/modules/v/kernel", "lib/modules/v/kernel/a.ko", "tmp"}
	if !reflect.DeepEqual(listing, want) {
		t.Errorf("listing = %q\nwant      %q", listing, want)
	}
	byName := map[string]CpioEntry{}
	for _, e := range got {
		byName[e.Name] = e
	}
	if e := byName["dev/console"]; e.Mode != sIFCHR|0o600 || e.Major != 5 || e.Minor != 1 {
		t.Errorf("dev/console = %+v", e)
	}
	if e := byName["init"]; e.Mode != sIFREG|0o755 || string(e.Data) != "agent" {
		t.Errorf("init = %+v", e)
	}
	if e := byName["lib/modules"]; e.Mode != sIFDIR|0o755 {
		t.Errorf("implicit dir mode = %o", e.Mode)
	}
	if e := byName["tmp"]; e.Mode != sIFDIR|0o1777 {
		t.Errorf("tmp mode = %o", e.Mode)
	}

	// An independent reader agrees.
	r := cpio.NewReader(bytes.NewReader(a.Bytes()))
	n := 0
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		e := byName[h.Name]
		if int64(len(e.Data)) != h.Size && !strings.HasPrefix(h.Name, "bin/sh") {
			t.Errorf("%s: size %d, want %d", h.Name, h.Size, len(e.Data))
		}
		if uint32(h.Mode) != e.Mode || !h.ModTime.IsZero() && h.ModTime.Unix() != 0 {
			t.Errorf("%s: mode %o mtime %v", h.Name, h.Mode, h.ModTime)
		}
		n++
	}
	if n != len(want) {
		t.Errorf("cavaliergopher/cpio read %d entries, want %d", n, len(want))
	}

	if err := writeCpio(io.Discard, []CpioEntry{{Name: "a", Mode: sIFREG}, {Name: "/a", Mode: sIFREG}}); err == nil {
		t.Error("duplicate accepted")
	}
}

func TestInitramfsLayout(t *testing.T) {
	mods := []*kmod{
		{name: "b", rel: "kernel/lib/b.ko", data: []byte("B")},
		{name: "a", rel: "kernel/fs/a.ko", depends: []string{"b"}, data: []byte("A")},
	}
	ird, err := initramfs(rootEntries("6.0.0-test", []byte("AGENT"), runtimeEntries(RuntimeRunc, []byte("RUNC")), mods, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := readCpio(bytes.NewReader(ird.data))
	if err != nil {
		t.Fatal(err)
	}
	var listing []string
	byName := map[string]CpioEntry{}
	for _, e := range got {
		listing = append(listing, e.Name)
		byName[e.Name] = e
	}
	want := []string{
		"dev", "dev/console", "dev/null", "etc", "etc/msb", "etc/msb/kernel-release", "etc/msb/modules", "etc/msb/oci-runtime",
		"init", "lib", "lib/modules", "lib/modules/6.0.0-test", "lib/modules/6.0.0-test/kernel",
		"lib/modules/6.0.0-test/kernel/fs", "lib/modules/6.0.0-test/kernel/fs/a.ko",
		"lib/modules/6.0.0-test/kernel/lib", "lib/modules/6.0.0-test/kernel/lib/b.ko",
		"lib/modules/6.0.0-test/modules.dep", "mnt", "proc", "run", "sbin", "sbin/modprobe", "sbin/runc", "sys", "tmp",
	}
	if !reflect.DeepEqual(listing, want) {
		t.Errorf("listing:\n%q\nwant\n%q", listing, want)
	}
	check := func(name string, mode uint32, data string) {
		t.Helper()
		e := byName[name]
		if e.Mode != mode || string(e.Data) != data {
			t.Errorf("%s: mode %o data %q, want %o %q", name, e.Mode, e.Data, mode, data)
		}
	}
	check("init", sIFREG|0o755, "AGENT")
	check("sbin/runc", sIFREG|0o755, "RUNC")
	check("etc/msb/kernel-release", sIFREG|0o644, "6.0.0-test\n")
	check("etc/msb/oci-runtime", sIFREG|0o644, "/sbin/runc\n")
	check("etc/msb/modules", sIFREG|0o644, "/lib/modules/6.0.0-test/kernel/lib/b.ko\n/lib/modules/6.0.0-test/kernel/fs/a.ko\n")
	check("lib/modules/6.0.0-test/modules.dep", sIFREG|0o644, "kernel/lib/b.ko:\nkernel/fs/a.ko: kernel/lib/b.ko\n")
	if e := byName["dev/null"]; e.Mode != sIFCHR|0o666 || e.Major != 1 || e.Minor != 3 {
		t.Errorf("dev/null = %+v", e)
	}
}
