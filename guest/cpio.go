package guest

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
)

// File type bits of st_mode as cpio stores them.
const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
	sIFBLK = 0o060000
)

// CpioEntry is one member of a newc archive.
type CpioEntry struct {
	Name         string // relative, no leading "/" ("init", "dev/console")
	Mode         uint32 // st_mode: type and permission bits
	Data         []byte // file content, or the target of a symlink
	Major, Minor uint32 // device number of a device node
}

// IsDir reports whether e is a directory.
func (e CpioEntry) IsDir() bool { return e.Mode&sIFMT == sIFDIR }

func cleanName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

// writeCpio writes entries as a deterministic newc ("070701") archive: names sorted,
// missing parent directories added (0755), inode numbers sequential, every mtime 0,
// owner root.
func writeCpio(w io.Writer, entries []CpioEntry) error {
	byName := map[string]CpioEntry{}
	for _, e := range entries {
		e.Name = cleanName(e.Name)
		if e.Name == "" {
			continue
		}
		if old, ok := byName[e.Name]; ok && !(old.IsDir() && e.IsDir()) {
			return fmt.Errorf("cpio: duplicate entry %q", e.Name)
		}
		byName[e.Name] = e
		for d := path.Dir(e.Name); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := byName[d]; !ok {
				byName[d] = CpioEntry{Name: d, Mode: sIFDIR | 0o755}
			}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)

	cw := &countWriter{w: w}
	ino := uint32(1)
	for _, n := range names {
		e := byName[n]
		switch e.Mode & sIFMT {
		case sIFDIR, sIFCHR, sIFBLK:
			if len(e.Data) != 0 {
				return fmt.Errorf("cpio: %s: data on a directory or device", n)
			}
		case sIFREG, sIFLNK:
		default:
			return fmt.Errorf("cpio: %s: unsupported mode %o", n, e.Mode)
		}
		nlink := uint32(1)
		if e.IsDir() {
			nlink = 2
		}
		if err := writeCpioRecord(cw, ino, e.Mode, nlink, e.Major, e.Minor, n, e.Data); err != nil {
			return err
		}
		ino++
	}
	if err := writeCpioRecord(cw, 0, 0, 1, 0, 0, "TRAILER!!!", nil); err != nil {
		return err
	}
	// Pad to a 512-byte multiple, as cpio(1) does.
	if pad := (512 - cw.n%512) % 512; pad != 0 {
		if _, err := cw.Write(make([]byte, pad)); err != nil {
			return err
		}
	}
	return nil
}

func writeCpioRecord(w *countWriter, ino, mode, nlink, major, minor uint32, name string, data []byte) error {
	var h bytes.Buffer
	fmt.Fprintf(&h, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	h.WriteString(name)
	h.WriteByte(0)
	for h.Len()%4 != 0 {
		h.WriteByte(0)
	}
	if _, err := w.Write(h.Bytes()); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	if pad := (4 - len(data)%4) % 4; pad != 0 {
		_, err := w.Write(make([]byte, pad))
		return err
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// readCpio lists a newc archive (as written by Build) up to its trailer.
func readCpio(r io.Reader) ([]CpioEntry, error) {
	var out []CpioEntry
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		off += n
		return b, err
	}
	skipPad := func() error {
		if p := (4 - off%4) % 4; p != 0 {
			_, err := read(p)
			return err
		}
		return nil
	}
	for {
		h, err := read(110)
		if err != nil {
			return nil, fmt.Errorf("cpio: header at %d: %w", off-110, err)
		}
		if string(h[:6]) != "070701" && string(h[:6]) != "070702" {
			return nil, fmt.Errorf("cpio: bad magic %q at %d", h[:6], off-110)
		}
		field := func(i int) (uint32, error) {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			return uint32(v), err
		}
		var f [13]uint32
		for i := range f {
			if f[i], err = field(i); err != nil {
				return nil, fmt.Errorf("cpio: bad header field: %w", err)
			}
		}
		nb, err := read(int64(f[11]))
		if err != nil {
			return nil, err
		}
		name := string(bytes.TrimRight(nb, "\x00"))
		if err := skipPad(); err != nil {
			return nil, err
		}
		if name == "TRAILER!!!" {
			return out, nil
		}
		data, err := read(int64(f[6]))
		if err != nil {
			return nil, err
		}
		if err := skipPad(); err != nil {
			return nil, err
		}
		out = append(out, CpioEntry{Name: name, Mode: f[1], Data: data, Major: f[9], Minor: f[10]})
	}
}
