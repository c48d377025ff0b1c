package vmmproc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/msb-dev/msb/protocol"
)

// frame is one raw yamux frame, as a hostile guest writes it.
func frame(typ byte, flags uint16, id uint32, body []byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], id)
	binary.BigEndian.PutUint32(h[8:12], length)
	return append(h, body...)
}

// Streams the guest opens never reach the host's session: thousands of
// them, each with data, leave it with none, and the host's own streams
// still work.
func TestGuestStreamsDropped(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	sess, err := yamux.Client(newGuestFrames(host), protocol.MuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	data := bytes.Repeat([]byte("x"), 64<<10)
	for id := uint32(2); id < 2*3000; id += 2 {
		if _, err := guest.Write(frame(yamuxTypeData, yamuxFlagSYN, id, data, uint32(len(data)))); err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
		if id >= 2*300 {
			// Without the filter the host answers a full backlog with
			// RSTs: they must be read for the pipe to go on.
			_ = guest.SetReadDeadline(time.Now().Add(time.Millisecond))
			_, _ = io.Copy(io.Discard, guest)
			_ = guest.SetReadDeadline(time.Time{})
		}
	}
	if n := sess.NumStreams(); n != 0 {
		t.Fatalf("the host's session holds %d streams the guest opened, want 0", n)
	}
	got := make(chan string, 1)
	go func() { // the guest reads the host's frames: the first data is what the host wrote
		buf := make([]byte, yamuxHeaderSize)
		for {
			if _, err := io.ReadFull(guest, buf); err != nil {
				got <- err.Error()
				return
			}
			n := binary.BigEndian.Uint32(buf[8:12])
			if buf[1] != yamuxTypeData || n == 0 {
				continue
			}
			b := make([]byte, n)
			_, _ = io.ReadFull(guest, b)
			got <- fmt.Sprintf("stream %d: %s", binary.BigEndian.Uint32(buf[4:8]), b)
			return
		}
	}()
	s, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if g, want := <-got, fmt.Sprintf("stream %d: hi", s.StreamID()); g != want {
		t.Fatalf("the guest read %q, want %q", g, want)
	}
}

// A data frame longer than any window ends the session before its body
// is read.
func TestGuestOversizeFrameEndsSession(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	sess, err := yamux.Client(newGuestFrames(host), protocol.MuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	go func() { _, _ = io.Copy(io.Discard, guest) }()
	if _, err := guest.Write(frame(yamuxTypeData, 0, 1, nil, 1<<30)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sess.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("session still open after a 1 GiB data frame")
	}
}
