package mounts

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// qcow2Header builds a qcow2 header: version 2 or 3, an optional backing
// file name, the external data file feature bit and header extensions
// (type, data).
func qcow2Header(version uint32, backing string, dataFileBit bool, exts ...any) []byte {
	be := binary.BigEndian
	b := make([]byte, 4096)
	copy(b, qcow2Magic)
	be.PutUint32(b[4:], version)
	hdrLen := 104
	if version == 2 {
		hdrLen = qcow2V2HeaderLen
	} else {
		be.PutUint32(b[100:], uint32(hdrLen))
		if dataFileBit {
			be.PutUint64(b[72:], qcow2IncompatDataFile)
		}
	}
	off := hdrLen
	for i := 0; i+1 < len(exts); i += 2 {
		data := exts[i+1].(string)
		be.PutUint32(b[off:], exts[i].(uint32))
		be.PutUint32(b[off+4:], uint32(len(data)))
		copy(b[off+8:], data)
		off += 8 + (len(data)+7)&^7
	}
	off += 8 // the end extension (zeros)
	if backing != "" {
		be.PutUint64(b[8:], uint64(off))
		be.PutUint32(b[16:], uint32(len(backing)))
		copy(b[off:], backing)
	}
	return b
}

// vmdkSparse builds a KDMV header with capacity and an embedded
// descriptor at sector 1.
func vmdkSparse(capacity uint64, desc string) []byte {
	le := binary.LittleEndian
	b := make([]byte, 4096)
	copy(b, "KDMV")
	le.PutUint32(b[4:], 1)
	le.PutUint64(b[12:], capacity)
	le.PutUint64(b[28:], 1)
	le.PutUint64(b[36:], 4)
	copy(b[512:], desc)
	return b
}

func TestImageReferences(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, format string
		body         []byte
		want         string // "" = self-contained
	}{
		{"raw", "raw", []byte("anything"), ""},
		{"qcow2 plain", "qcow2", qcow2Header(3, "", false), ""},
		{"qcow2 v2 backing", "qcow2", qcow2Header(2, "/etc/shadow", false), `backing file "/etc/shadow"`},
		{"qcow2 v3 backing", "qcow2", qcow2Header(3, "base.raw", false, uint32(0xe2792aca), "raw"), `backing file "base.raw"`},
		{"qcow2 data file", "qcow2", qcow2Header(3, "", true, uint32(qcow2ExtDataFile), "/dev/sda"), `external data file "/dev/sda"`},
		{"qcow2 data file bit only", "qcow2", qcow2Header(3, "", true), `external data file ""`},
		{"vmdk sparse", "vmdk", vmdkSparse(2048, "createType=\"monolithicSparse\"\nparentCID=ffffffff\nRW 2048 SPARSE \"self.vmdk\"\n"), ""},
		{"vmdk sparse parent", "vmdk", vmdkSparse(2048, "parentFileNameHint=\"/var/lib/x.vmdk\"\nRW 2048 SPARSE \"self.vmdk\"\n"), `parent "/var/lib/x.vmdk"`},
		{"vmdk sparse no capacity", "vmdk", vmdkSparse(0, "RW 2048 FLAT \"/etc/passwd\" 0\n"), `extent "/etc/passwd"`},
		{"vmdk descriptor", "vmdk", []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 32768 FLAT \"/dev/sda\" 0\nRDONLY 8 FLAT \"b.img\" 0\n"), `extent "/dev/sda", extent "b.img"`},
		{"vmdk descriptor without extents", "vmdk", []byte("version=1\n"), "a text descriptor file"},
		{"vmdk cowd", "vmdk", []byte("COWD\x01\x00\x00\x00"), "VMDK3 (COWD)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
			if err := os.WriteFile(p, c.body, 0o644); err != nil {
				t.Fatal(err)
			}
			refs, err := ImageReferences(p, c.format)
			if err != nil {
				t.Fatal(err)
			}
			if got := refs.String(); got != c.want && (c.want == "" || !strings.Contains(got, c.want)) {
				t.Fatalf("refs = %q, want %q", got, c.want)
			}
		})
	}
	p := filepath.Join(dir, "not-qcow2")
	_ = os.WriteFile(p, make([]byte, 512), 0o644)
	if _, err := ImageReferences(p, "qcow2"); err == nil || !strings.Contains(err.Error(), "not a qcow2 image") {
		t.Fatalf("zeros as qcow2: %v", err)
	}
}

// TestImageReferencesQEMUImg reads images made by qemu-img itself.
func TestImageReferencesQEMUImg(t *testing.T) {
	qimg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not found (apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	// mk runs qemu-img create with opts, the file name, and size ("" for
	// an image whose size comes from its backing file).
	mk := func(name, size string, opts ...string) string {
		args := append(append([]string{"create", "-q"}, opts...), name)
		if size != "" {
			args = append(args, size)
		}
		cmd := exec.Command(qimg, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
		return filepath.Join(dir, name)
	}
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		format, path, want string
	}{
		{"qcow2", mk("plain.qcow2", "1M", "-f", "qcow2"), ""},
		{"qcow2", mk("top.qcow2", "", "-f", "qcow2", "-b", "base.raw", "-F", "raw"), `backing file "base.raw"`},
		{"qcow2", mk("v2.qcow2", "", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw"), `backing file "base.raw"`},
		{"qcow2", mk("ext.qcow2", "1M", "-f", "qcow2", "-o", "data_file=data.raw"), `external data file "data.raw"`},
		{"vmdk", mk("mono.vmdk", "1M", "-f", "vmdk"), ""},
		{"vmdk", mk("stream.vmdk", "1M", "-f", "vmdk", "-o", "subformat=streamOptimized"), ""},
		{"vmdk", mk("child.vmdk", "", "-f", "vmdk", "-b", "mono.vmdk", "-F", "vmdk"), `parent "mono.vmdk"`},
		{"vmdk", mk("flat.vmdk", "1M", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat"), `extent "flat-f001.vmdk"`},
		{"vmdk", mk("split.vmdk", "1M", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"), `extent "split-s001.vmdk"`},
	} {
		refs, err := ImageReferences(c.path, c.format)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		if got := refs.String(); got != c.want && (c.want == "" || !strings.Contains(got, c.want)) {
			t.Errorf("%s: refs = %q, want %q", filepath.Base(c.path), got, c.want)
		}
	}
}
