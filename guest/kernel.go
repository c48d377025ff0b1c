package guest

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"

	"github.com/ulikunitz/xz/lzma"
)

// Offsets in the x86 boot protocol's setup header (Documentation/arch/x86/boot.rst).
const (
	bzSetupSects    = 0x1f1
	bzHeaderMagic   = 0x202 // "HdrS"
	bzVersion       = 0x206
	bzPayloadOffset = 0x248
	bzPayloadLength = 0x24c

	// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
	xenElfnotePhys32Entry = 18
)

// bzPayload locates the compressed kernel inside a bzImage.
func bzPayload(bz []byte) ([]byte, error) {
	if len(bz) < 0x250 {
		return nil, errors.New("bzImage: file too short")
	}
	if string(bz[bzHeaderMagic:bzHeaderMagic+4]) != "HdrS" {
		return nil, errors.New("bzImage: no HdrS setup header")
	}
	if v := binary.LittleEndian.Uint16(bz[bzVersion:]); v < 0x208 {
		return nil, fmt.Errorf("bzImage: boot protocol %#x has no payload fields (need >= 2.08)", v)
	}
	setupSects := int(bz[bzSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	pm := (setupSects + 1) * 512
	off := int(binary.LittleEndian.Uint32(bz[bzPayloadOffset:]))
	n := int(binary.LittleEndian.Uint32(bz[bzPayloadLength:]))
	start := pm + off
	if off < 0 || n <= 0 || start+n > len(bz) || start < pm {
		return nil, fmt.Errorf("bzImage: payload [%d,+%d) outside the file (%d bytes)", start, n, len(bz))
	}
	return bz[start : start+n], nil
}

// compression names a payload compression detected by magic.
func compression(p []byte) string {
	switch {
	case bytes.HasPrefix(p, xzMagic):
		return "xz"
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		return "gzip"
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		return "lz4" // legacy frame, as the kernel build writes it (lz4 -l)
	case bytes.HasPrefix(p, []byte{0x04, 0x22, 0x4d, 0x18}):
		return "lz4"
	case bytes.HasPrefix(p, []byte("BZh")):
		return "bzip2"
	case bytes.HasPrefix(p, []byte{0x89, 'L', 'Z', 'O'}):
		return "lzo"
	case bytes.HasPrefix(p, []byte{0x5d, 0x00, 0x00}):
		return "lzma"
	case bytes.HasPrefix(p, []byte("\x7fELF")):
		return "none"
	}
	return ""
}

// decompress decodes p according to its magic. Formats without a Go decoder at hand use
// the usual command-line tools (zstd, lz4, lzop).
func decompress(ctx context.Context, p []byte) (data []byte, kind string, err error) {
	kind = compression(p)
	switch kind {
	case "none":
		return p, kind, nil
	case "xz":
		data, err = xzDecode(p)
	case "gzip":
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(p)); err == nil {
			zr.Multistream(false)
			data, err = io.ReadAll(zr)
		}
	case "bzip2":
		data, err = io.ReadAll(bzip2.NewReader(bytes.NewReader(p)))
	case "lzma":
		var lr *lzma.Reader
		if lr, err = lzma.NewReader(bytes.NewReader(p)); err == nil {
			data, err = readAllTolerant(lr)
		}
	case "zstd":
		data, err = pipeTool(ctx, p, "zstd", "-dcq")
	case "lz4":
		data, err = pipeTool(ctx, p, "lz4", "-dcq")
	case "lzo":
		data, err = pipeTool(ctx, p, "lzop", "-dcq")
	default:
		return nil, "", fmt.Errorf("unknown compression (magic % x)", p[:min(len(p), 6)])
	}
	if err != nil {
		return nil, kind, fmt.Errorf("%s: %w", kind, err)
	}
	return data, kind, nil
}

// readAllTolerant reads r to the end; an error after some data was produced is
// ignored, because kernel payloads carry trailing bytes some decoders complain about.
func readAllTolerant(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(r)
	if err != nil && len(data) > 0 {
		return data, nil
	}
	return data, err
}

// pipeTool runs "tool args..." with p on stdin and returns stdout. Trailing garbage
// warnings are tolerated when output was produced (the kernel appends its size).
func pipeTool(ctx context.Context, p []byte, tool string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil, fmt.Errorf("need the %q command to decompress (install it): %w", tool, err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(p)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil && out.Len() == 0 {
		return nil, fmt.Errorf("%s: %v: %s", tool, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out.Bytes(), nil
}

// extractVmlinux returns the uncompressed ELF kernel inside a bzImage, trimmed to the
// ELF's extent (the build may append relocation data), and the payload compression.
func extractVmlinux(ctx context.Context, bz []byte) ([]byte, string, error) {
	payload, err := bzPayload(bz)
	if err != nil {
		return nil, "", err
	}
	data, kind, err := decompress(ctx, payload)
	if err != nil {
		return nil, kind, fmt.Errorf("bzImage payload: %w", err)
	}
	data, err = trimELF(data)
	if err != nil {
		return nil, kind, fmt.Errorf("bzImage payload (%s): %w", kind, err)
	}
	if err := checkPVH(data); err != nil {
		return nil, kind, err
	}
	return data, kind, nil
}

// trimELF cuts data after the last byte any program header or section refers to.
func trimELF(data []byte) ([]byte, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not an ELF file: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("ELF is %v/%v, want ELFCLASS64/EM_X86_64", f.Class, f.Machine)
	}
	end := uint64(0)
	grow := func(v uint64) {
		if v > end {
			end = v
		}
	}
	var hdr elf.Header64
	if err := binary.Read(bytes.NewReader(data), binary.LittleEndian, &hdr); err != nil {
		return nil, err
	}
	grow(hdr.Phoff + uint64(hdr.Phnum)*uint64(hdr.Phentsize))
	grow(hdr.Shoff + uint64(hdr.Shnum)*uint64(hdr.Shentsize))
	for _, p := range f.Progs {
		grow(p.Off + p.Filesz)
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS {
			grow(s.Offset + s.FileSize)
		}
	}
	if end > uint64(len(data)) {
		return nil, fmt.Errorf("ELF truncated: needs %d bytes, have %d", end, len(data))
	}
	return data[:end], nil
}

// checkPVH verifies the ELF carries a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY),
// which QEMU needs to boot an uncompressed kernel with -kernel on -M microvm.
func checkPVH(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an ELF file: %w", err)
	}
	var notes [][]byte
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return fmt.Errorf("reading PT_NOTE: %w", err)
			}
			notes = append(notes, b)
		}
	}
	if len(notes) == 0 {
		for _, s := range f.Sections {
			if s.Type == elf.SHT_NOTE {
				if b, err := s.Data(); err == nil {
					notes = append(notes, b)
				}
			}
		}
	}
	for _, b := range notes {
		if _, ok := findNote(b, "Xen", xenElfnotePhys32Entry); ok {
			return nil
		}
	}
	return errors.New("kernel ELF has no PVH entry note (Xen note type 18, XEN_ELFNOTE_PHYS32_ENTRY): " +
		"it was built without CONFIG_PVH and cannot be booted by qemu -M microvm -kernel")
}

// findNote scans an ELF note blob (4-byte aligned entries) for name/type.
func findNote(b []byte, name string, typ uint32) ([]byte, bool) {
	for len(b) >= 12 {
		namesz := int(binary.LittleEndian.Uint32(b[0:]))
		descsz := int(binary.LittleEndian.Uint32(b[4:]))
		t := binary.LittleEndian.Uint32(b[8:])
		b = b[12:]
		nlen := (namesz + 3) &^ 3
		dlen := (descsz + 3) &^ 3
		if namesz < 0 || descsz < 0 || nlen > len(b) || nlen+dlen > len(b) {
			return nil, false
		}
		n := string(bytes.TrimRight(b[:namesz], "\x00"))
		desc := b[nlen : nlen+descsz]
		b = b[nlen+dlen:]
		if n == name && t == typ {
			return desc, true
		}
	}
	return nil, false
}
