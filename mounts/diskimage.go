package mounts

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// An image's references are the other host files its hypervisor opens when
// it opens the image: a qcow2's backing file and external data file, a
// vmdk's parent and extents. QEMU (as root) and libkrun follow them, so an
// image from a container's author could expose any host file to the guest.
// ImageReferences reads them from the image itself, never through the
// hypervisor (ADR 016).

// ImageRefs lists what an image refers to; empty when it is self-contained.
type ImageRefs []string

func (r ImageRefs) String() string { return strings.Join(r, ", ") }

// maxHeaderRead bounds what is read of an image's metadata.
const maxHeaderRead = 1 << 20

// ImageReferences returns the host files the image at path in format (raw,
// qcow2 or vmdk) refers to. A raw image refers to nothing; a block device
// is read like an image file.
func ImageReferences(path, format string) (ImageRefs, error) {
	if format == "raw" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	switch format {
	case "qcow2":
		return qcow2References(f)
	case "vmdk":
		return vmdkReferences(f)
	}
	return nil, fmt.Errorf("image format %q unknown: use raw, qcow2 or vmdk", format)
}

// qcow2 header fields (big-endian; docs/interop/qcow2.txt in QEMU).
const (
	qcow2Magic            = "QFI\xfb"
	qcow2ExtDataFile      = 0x44415441 // header extension: external data file name
	qcow2IncompatDataFile = 1 << 2     // incompatible feature: external data file
	qcow2V2HeaderLen      = 72
)

func qcow2References(r io.ReaderAt) (ImageRefs, error) {
	hdr := make([]byte, 104)
	if n, err := r.ReadAt(hdr, 0); n < qcow2V2HeaderLen {
		return nil, fmt.Errorf("not a qcow2 image: header too short (%v)", err)
	}
	if string(hdr[:4]) != qcow2Magic {
		return nil, errors.New("not a qcow2 image (no QFI\\xfb magic): fix the format (msb.format=) or the file")
	}
	be := binary.BigEndian
	version := be.Uint32(hdr[4:])
	var refs ImageRefs
	if off, size := be.Uint64(hdr[8:]), be.Uint32(hdr[16:]); off != 0 {
		name, err := readString(r, int64(off), int64(size))
		if err != nil {
			return nil, fmt.Errorf("qcow2 backing file name: %w", err)
		}
		refs = append(refs, "backing file "+strconv.Quote(name))
	}
	if version < 3 {
		return refs, nil
	}
	incompat := be.Uint64(hdr[72:])
	hdrLen := int64(be.Uint32(hdr[100:]))
	if hdrLen < int64(len(hdr)) {
		return nil, fmt.Errorf("not a qcow2 image: version 3 header length %d below %d", hdrLen, len(hdr))
	}
	dataFile := ""
	// Header extensions: type, length, data padded to 8 bytes; type 0 ends.
	for off := hdrLen; off < maxHeaderRead; {
		var ext [8]byte
		if _, err := r.ReadAt(ext[:], off); err != nil {
			return nil, fmt.Errorf("qcow2 header extension at %d: %w", off, err)
		}
		typ, n := be.Uint32(ext[:]), int64(be.Uint32(ext[4:]))
		if typ == 0 {
			break
		}
		if typ == qcow2ExtDataFile {
			name, err := readString(r, off+8, n)
			if err != nil {
				return nil, fmt.Errorf("qcow2 data file name: %w", err)
			}
			dataFile = name
		}
		off += 8 + (n+7)&^7
	}
	if incompat&qcow2IncompatDataFile != 0 || dataFile != "" {
		refs = append(refs, "external data file "+strconv.Quote(dataFile))
	}
	return refs, nil
}

func readString(r io.ReaderAt, off, n int64) (string, error) {
	if n <= 0 || n > 4096 {
		return "", fmt.Errorf("length %d out of range", n)
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil {
		return "", err
	}
	return string(b), nil
}

// vmdk: a sparse extent starts with "KDMV" (VMDK4, little-endian header)
// and may embed a descriptor; anything else QEMU reads as a text
// descriptor file, whose extent lines name the files holding the data.
var (
	vmdkExtentLine = regexp.MustCompile(`^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"`)
	vmdkParentHint = regexp.MustCompile(`^\s*parentFileNameHint\s*=\s*"([^"]*)"`)
)

func vmdkReferences(r io.ReaderAt) (ImageRefs, error) {
	hdr := make([]byte, 512)
	n, err := r.ReadAt(hdr, 0)
	if n < 4 {
		return nil, fmt.Errorf("not a vmdk image: %v", err)
	}
	switch string(hdr[:4]) {
	case "KDMV":
		if n < 44 {
			return nil, errors.New("not a vmdk image: sparse header too short")
		}
		le := binary.LittleEndian
		capacity, descOff, descSize := le.Uint64(hdr[12:]), le.Uint64(hdr[28:]), le.Uint64(hdr[36:])
		if descOff == 0 || descSize == 0 {
			return nil, nil
		}
		if descSize > maxHeaderRead/512 {
			return nil, fmt.Errorf("vmdk embedded descriptor of %d sectors: too large", descSize)
		}
		desc := make([]byte, descSize*512)
		if _, err := r.ReadAt(desc, int64(descOff)*512); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("vmdk embedded descriptor: %w", err)
		}
		// QEMU follows the embedded descriptor's extents when the header
		// has no capacity of its own.
		return vmdkDescriptorRefs(desc, capacity == 0), nil
	case "COWD":
		return ImageRefs{"a VMDK3 (COWD) parent chain msb does not read"}, nil
	}
	desc := make([]byte, maxHeaderRead)
	n, err = r.ReadAt(desc, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	refs := vmdkDescriptorRefs(desc[:n], true)
	if len(refs) == 0 {
		return ImageRefs{"a text descriptor file (no sparse KDMV header)"}, nil
	}
	return refs, nil
}

func vmdkDescriptorRefs(desc []byte, extents bool) ImageRefs {
	var refs ImageRefs
	sc := bufio.NewScanner(bytes.NewReader(bytes.TrimRight(desc, "\x00")))
	for sc.Scan() {
		line := sc.Text()
		if m := vmdkParentHint.FindStringSubmatch(line); m != nil {
			refs = append(refs, "parent "+strconv.Quote(m[1]))
		} else if m := vmdkExtentLine.FindStringSubmatch(line); m != nil && extents {
			refs = append(refs, "extent "+strconv.Quote(m[2]))
		}
	}
	return refs
}
