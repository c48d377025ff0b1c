package guest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// fakeKernelELF builds a minimal x86-64 ELF executable with one PT_NOTE segment that
// holds a Xen note of type noteType, followed by some filler the ELF does not cover.
func fakeKernelELF(noteType uint32) (elfBytes, trailer []byte) {
	var note bytes.Buffer
	binary.Write(&note, binary.LittleEndian, []uint32{4, 8, noteType})
	note.WriteString("Xen\x00")
	binary.Write(&note, binary.LittleEndian, uint64(0x1000000))

	const ehsize, phsize = 64, 56
	var b bytes.Buffer
	// e_ident
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	le(uint16(2))  // ET_EXEC
	le(uint16(62)) // EM_X86_64
	le(uint32(1))  // EV_CURRENT
	le(uint64(0))  // e_entry
	le(uint64(64)) // e_phoff
	le(uint64(0))  // e_shoff
	le(uint32(0))  // e_flags
	le(uint16(ehsize))
	le(uint16(phsize))
	le(uint16(1)) // e_phnum
	le(uint16(64))
	le(uint16(0))
	le(uint16(0))
	// PT_NOTE
	off := uint64(ehsize + phsize)
	le(uint32(4)) // PT_NOTE
	le(uint32(4)) // PF_R
	le(off)
	le(uint64(0))
	le(uint64(0))
	le(uint64(note.Len()))
	le(uint64(note.Len()))
	le(uint64(4))
	b.Write(note.Bytes())
	// Some x86-looking code after the note, still inside the ELF? No: the ELF ends at
	// the note; what follows stands for the relocation data the build appends.
	trailer = bytes.Repeat([]byte{0xe8, 0x10, 0x20, 0x00, 0x00, 0x90}, 1000)
	return b.Bytes(), trailer
}

// fakeBzImage wraps a compressed payload into a bzImage-like blob: setup_sects = 3,
// the payload at payload_offset 0x180 into the protected-mode part, followed by the
// 4-byte uncompressed size as the kernel build appends it.
func fakeBzImage(payload []byte, rawSize int) []byte {
	return fakeBzImageSects(payload, rawSize, 3)
}

// fakeBzImageSects is fakeBzImage with a given setup_sects (0 stands for 4).
func fakeBzImageSects(payload []byte, rawSize int, setupSects byte) []byte {
	pm := (int(setupSects) + 1) * 512
	if setupSects == 0 {
		pm = 5 * 512
	}
	off := 0x180
	p := append(append([]byte(nil), payload...), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(p[len(payload):], uint32(rawSize))
	bz := make([]byte, pm+off+len(p)+1000) // + junk after the payload
	bz[bzSetupSects] = setupSects
	copy(bz[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(bz[bzVersion:], 0x20f)
	binary.LittleEndian.PutUint32(bz[bzPayloadOffset:], uint32(off))
	binary.LittleEndian.PutUint32(bz[bzPayloadLength:], uint32(len(p)))
	copy(bz[pm+off:], p)
	return bz
}

func compressWith(t *testing.T, raw []byte, tool string, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed", tool)
	}
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v", tool, args, err)
	}
	return out
}

func TestExtractVmlinux(t *testing.T) {
	e, trailer := fakeKernelELF(xenElfnotePhys32Entry)
	raw := append(append([]byte(nil), e...), trailer...)
	cases := []struct {
		name, kind string
		compress   func(t *testing.T) []byte
	}{
		{"gzip", "gzip", func(t *testing.T) []byte {
			var b bytes.Buffer
			w := gzip.NewWriter(&b)
			w.Write(raw)
			w.Close()
			return b.Bytes()
		}},
		{"xz-go", "xz", func(t *testing.T) []byte {
			var b bytes.Buffer
			w, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&b)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(raw)
			w.Close()
			return b.Bytes()
		}},
		// What scripts/xz_wrap.sh does for the kernel.
		{"xz-x86", "xz", func(t *testing.T) []byte {
			return compressWith(t, raw, "xz", "-c", "--check=crc32", "--x86", "--lzma2=,dict=32MiB")
		}},
		{"zstd", "zstd", func(t *testing.T) []byte { return compressWith(t, raw, "zstd", "-c", "-19", "-q") }},
		{"lzma", "lzma", func(t *testing.T) []byte { return compressWith(t, raw, "xz", "-c", "--format=lzma") }},
		{"lz4-legacy", "lz4", func(t *testing.T) []byte { return compressWith(t, raw, "lz4", "-c", "-l", "-q") }},
		{"none", "none", func(t *testing.T) []byte { return raw }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bz := fakeBzImage(c.compress(t), len(raw))
			got, kind, err := extractVmlinux(context.Background(), bz)
			if err != nil {
				t.Fatal(err)
			}
			if kind != c.kind {
				t.Errorf("compression = %q, want %q", kind, c.kind)
			}
			if !bytes.Equal(got, e) {
				t.Errorf("vmlinux: got %d bytes, want the %d-byte ELF without trailer", len(got), len(e))
			}
		})
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	noPVH, _ := fakeKernelELF(17)
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(noPVH)
	w.Close()
	_, _, err := extractVmlinux(context.Background(), fakeBzImage(gz.Bytes(), len(noPVH)))
	if err == nil || !strings.Contains(err.Error(), "PVH") {
		t.Errorf("kernel without PVH note: err = %v", err)
	}

	bad := fakeBzImage([]byte("not compressed data at all"), 10)
	if _, _, err := extractVmlinux(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "unknown compression") {
		t.Errorf("unknown payload: err = %v", err)
	}

	hdr := fakeBzImage(gz.Bytes(), len(noPVH))
	copy(hdr[bzHeaderMagic:], "XXXX")
	if _, err := bzPayload(hdr); err == nil || !strings.Contains(err.Error(), "HdrS") {
		t.Errorf("no HdrS: err = %v", err)
	}
	short := fakeBzImage(gz.Bytes(), len(noPVH))
	binary.LittleEndian.PutUint32(short[bzPayloadLength:], 1<<30)
	if _, err := bzPayload(short); err == nil {
		t.Error("payload beyond the file accepted")
	}
	if _, err := bzPayload(make([]byte, 100)); err == nil {
		t.Error("short file accepted")
	}
}

func TestBzPayloadOffsets(t *testing.T) {
	bz := fakeBzImage([]byte("PAYLOAD"), 7)
	p, err := bzPayload(bz)
	if err != nil {
		t.Fatal(err)
	}
	if string(p[:7]) != "PAYLOAD" || len(p) != 11 {
		t.Errorf("payload = %q", p)
	}
	bz = fakeBzImageSects([]byte("PAYLOAD"), 7, 0) // setup_sects 0 means 4
	if p, err = bzPayload(bz); err != nil || string(p[:7]) != "PAYLOAD" {
		t.Errorf("setup_sects 0: %q %v", p, err)
	}
}

// TestXZDecodeX86 checks the x86 BCJ decoder against xz(1) on real x86 machine code,
// with several blocks and each check type.
func TestXZDecodeX86(t *testing.T) {
	exe, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Skip(err)
	}
	if len(exe) > 3<<20 {
		exe = exe[:3<<20]
	}
	for _, args := range [][]string{
		{"--check=crc32", "--x86", "--lzma2=preset=1"},
		{"--check=crc64", "--x86=start=4096", "--lzma2=preset=1", "--block-size=300000"},
		{"--check=sha256", "--lzma2=preset=0"},
		{"--check=none", "--x86", "--lzma2=preset=0"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			c := compressWith(t, exe, "xz", append([]string{"-c", "-T1"}, args...)...)
			got, err := xzDecode(append(c, "trailing"...))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, exe) {
				t.Fatalf("decoded %d bytes differ from the %d-byte original", len(got), len(exe))
			}
		})
	}
}

func TestXZDecodeCorrupt(t *testing.T) {
	var b bytes.Buffer
	w, _ := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&b)
	w.Write(bytes.Repeat([]byte("hello world "), 1000))
	w.Close()
	c := b.Bytes()
	// Flip a byte of the last block's check, which sits right before the index; the
	// footer's backward size gives the index's length.
	footer := c[len(c)-12:]
	index := len(c) - 12 - int(binary.LittleEndian.Uint32(footer[4:])+1)*4
	bad := append([]byte(nil), c...)
	bad[index-1] ^= 0xff
	if _, err := xzDecode(bad); err == nil || !strings.Contains(err.Error(), "check mismatch") {
		t.Errorf("corrupt check: err = %v", err)
	}
	if _, err := xzDecode(c[:len(c)/2]); err == nil {
		t.Error("truncated stream accepted")
	}
}
