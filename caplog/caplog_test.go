package caplog

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A guest that writes far more than the cap leaves a log within it that
// ends with its newest lines, starting at a line, behind the marker.
func TestCappedLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	const max = 64 << 10
	c, err := Open(p, max)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100000; i++ { // ~1.8 MB of lines
		fmt.Fprintf(c, "line %06d of the guest\n", i)
	}
	if _, err := c.Write(bytes.Repeat([]byte("x"), 3*max)); err != nil { // one write over the cap
		t.Fatal(err)
	}
	c.Write([]byte("\nlast line\n"))
	c.Close()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > max {
		t.Fatalf("log is %d bytes, cap %d", len(b), max)
	}
	if !strings.HasPrefix(string(b), "msb-vmm: console log over 65536 bytes: older lines dropped\n") || !strings.HasSuffix(string(b), "x\nlast line\n") {
		t.Fatalf("log starts %q, ends %q", b[:80], b[len(b)-40:])
	}
}
