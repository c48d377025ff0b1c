package guest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// xzMagic is the magic of an .xz stream header.
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

const (
	xzFilterX86   = 0x04
	xzFilterLZMA2 = 0x21
)

var crc64Table = crc64.MakeTable(crc64.ECMA)

// xzDecode decodes the first .xz stream in data and returns its content; bytes after
// the stream (e.g. the 4-byte size the kernel build appends) are ignored.
//
// github.com/ulikunitz/xz only knows the LZMA2 filter, but the kernel's payload is
// compressed with "xz --x86 --lzma2" (scripts/xz_wrap.sh), so this decoder parses the
// container itself, uses ulikunitz's raw LZMA2 reader and applies the x86 BCJ filter.
func xzDecode(data []byte) ([]byte, error) {
	if len(data) < 12 || !bytes.Equal(data[:6], xzMagic) {
		return nil, errors.New("xz: bad stream header magic")
	}
	flags := data[6:8]
	if flags[0] != 0 || flags[1]&0xf0 != 0 {
		return nil, fmt.Errorf("xz: unsupported stream flags %x", flags)
	}
	if crc32.ChecksumIEEE(flags) != binary.LittleEndian.Uint32(data[8:12]) {
		return nil, errors.New("xz: stream header CRC mismatch")
	}
	checkType := flags[1] & 0x0f
	var newHash func() hash.Hash
	checkSize := 0
	switch checkType {
	case 0x00:
	case 0x01:
		newHash, checkSize = func() hash.Hash { return crc32.NewIEEE() }, 4
	case 0x04:
		newHash, checkSize = func() hash.Hash { return crc64.New(crc64Table) }, 8
	case 0x0a:
		newHash, checkSize = sha256.New, 32
	default:
		return nil, fmt.Errorf("xz: unsupported check type %#x", checkType)
	}

	var out bytes.Buffer
	pos := 12
	for {
		if pos >= len(data) {
			return nil, io.ErrUnexpectedEOF
		}
		if data[pos] == 0x00 { // index indicator: no more blocks
			break
		}
		block, n, err := xzDecodeBlock(data[pos:], newHash, checkSize)
		if err != nil {
			return nil, err
		}
		out.Write(block)
		pos += n
	}
	// The index and footer follow; their content is not needed to decode.
	return out.Bytes(), nil
}

// xzDecodeBlock decodes one block starting at b and returns its content and the number
// of bytes it occupies (header, data, padding and check).
func xzDecodeBlock(b []byte, newHash func() hash.Hash, checkSize int) ([]byte, int, error) {
	hlen := (int(b[0]) + 1) * 4
	if len(b) < hlen {
		return nil, 0, io.ErrUnexpectedEOF
	}
	hdr := b[:hlen]
	if crc32.ChecksumIEEE(hdr[:hlen-4]) != binary.LittleEndian.Uint32(hdr[hlen-4:]) {
		return nil, 0, errors.New("xz: block header CRC mismatch")
	}
	bflags := hdr[1]
	if bflags&0x3c != 0 {
		return nil, 0, fmt.Errorf("xz: unsupported block flags %#x", bflags)
	}
	r := bytes.NewReader(hdr[2 : hlen-4])
	compSize, uncompSize := int64(-1), int64(-1)
	if bflags&0x40 != 0 {
		v, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, 0, fmt.Errorf("xz: block header: %w", err)
		}
		compSize = int64(v)
	}
	if bflags&0x80 != 0 {
		v, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, 0, fmt.Errorf("xz: block header: %w", err)
		}
		uncompSize = int64(v)
	}
	nfilters := int(bflags&0x03) + 1
	var x86, haveLZMA2 bool
	var x86Start uint32
	var dictCap int
	for i := 0; i < nfilters; i++ {
		id, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, 0, fmt.Errorf("xz: filter flags: %w", err)
		}
		psize, err := binary.ReadUvarint(r)
		if err != nil || psize > uint64(r.Len()) {
			return nil, 0, errors.New("xz: bad filter properties size")
		}
		props := make([]byte, psize)
		_, _ = io.ReadFull(r, props)
		last := i == nfilters-1
		switch {
		case id == xzFilterX86 && !last:
			x86 = true
			switch psize {
			case 0:
			case 4:
				x86Start = binary.LittleEndian.Uint32(props)
			default:
				return nil, 0, errors.New("xz: bad x86 BCJ properties")
			}
		case id == xzFilterLZMA2 && last:
			if psize != 1 || props[0] > 40 {
				return nil, 0, errors.New("xz: bad LZMA2 properties")
			}
			haveLZMA2 = true
			bits := uint(props[0])
			if bits == 40 {
				dictCap = 1<<31 - 1 // ulikunitz caps it anyway
			} else {
				dictCap = (2 | int(bits&1)) << (bits/2 + 11)
			}
		default:
			return nil, 0, fmt.Errorf("xz: unsupported filter chain (filter id %#x at position %d)", id, i)
		}
	}
	if !haveLZMA2 {
		return nil, 0, errors.New("xz: filter chain does not end with LZMA2")
	}

	body := bytes.NewReader(b[hlen:])
	cfg := lzma.Reader2Config{DictCap: max(dictCap, lzma.MinDictCap)}
	lr, err := cfg.NewReader2(body)
	if err != nil {
		return nil, 0, fmt.Errorf("xz: %w", err)
	}
	var buf bytes.Buffer
	if uncompSize > 0 {
		buf.Grow(int(uncompSize))
	}
	if _, err := io.Copy(&buf, lr); err != nil {
		return nil, 0, fmt.Errorf("xz: LZMA2: %w", err)
	}
	used := int64(len(b)-hlen) - int64(body.Len())
	if compSize >= 0 && used != compSize {
		return nil, 0, errors.New("xz: compressed size mismatch")
	}
	out := buf.Bytes()
	if uncompSize >= 0 && int64(len(out)) != uncompSize {
		return nil, 0, errors.New("xz: uncompressed size mismatch")
	}
	if x86 {
		bcjX86Decode(out, x86Start)
	}
	n := hlen + int(used)
	n += (4 - n%4) % 4 // block padding
	if n+checkSize > len(b) {
		return nil, 0, io.ErrUnexpectedEOF
	}
	for _, c := range b[hlen+int(used) : n] {
		if c != 0 {
			return nil, 0, errors.New("xz: non-zero block padding")
		}
	}
	if newHash != nil {
		h := newHash()
		h.Write(out)
		sum := h.Sum(nil)
		// crc32 and crc64 are stored little-endian, sha256 as is.
		if checkSize <= 8 {
			for i, j := 0, len(sum)-1; i < j; i, j = i+1, j-1 {
				sum[i], sum[j] = sum[j], sum[i]
			}
		}
		if !bytes.Equal(sum, b[n:n+checkSize]) {
			return nil, 0, errors.New("xz: block check mismatch")
		}
	}
	return out, n + checkSize, nil
}

// bcjX86Decode reverses the x86 branch/call/jump filter in place over the whole buffer
// (a port of xz-embedded's bcj_x86, run once over the complete output with start offset
// pos). The last four bytes are never converted, as in the encoder.
func bcjX86Decode(buf []byte, pos uint32) {
	maskToAllowed := [8]bool{true, true, true, false, true, false, false, false}
	maskToBitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	testMSByte := func(b byte) bool { return b == 0x00 || b == 0xff }

	if len(buf) <= 4 {
		return
	}
	size := len(buf) - 4
	prevPos := -1
	var prevMask uint32
	for i := 0; i < size; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		d := i - prevPos
		if d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << (d - 1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(maskToBitNum[prevMask])]
				if !maskToAllowed[prevMask] || testMSByte(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if testMSByte(buf[i+4]) {
			src := binary.LittleEndian.Uint32(buf[i+1:])
			var dest uint32
			for {
				dest = src - (pos + uint32(i) + 5)
				if prevMask == 0 {
					break
				}
				j := maskToBitNum[prevMask] * 8
				b := byte(dest >> (24 - j))
				if !testMSByte(b) {
					break
				}
				src = dest ^ (1<<(32-j) - 1)
			}
			dest &= 0x01ffffff
			dest |= 0 - (dest & 0x01000000)
			binary.LittleEndian.PutUint32(buf[i+1:], dest)
			i += 4
		} else {
			prevMask = prevMask<<1 | 1
		}
	}
}
