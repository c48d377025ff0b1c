package vmmproc

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// guestFrames sits between the guest channel and the host's yamux session
// and reads the guest's yamux frames before yamux does. The host opens
// every stream (odd ids, as yamux's client); the agent never opens one. A
// stream the guest opens (an even id) would sit in yamux's accept backlog,
// each buffering up to a window of data (256 of 256 KiB by default), and
// yamux has no reset for a stream once accepted. So a guest's stream never
// reaches yamux: its frames are read and dropped here, in constant memory,
// and the guest's side of it stays unanswered. A data frame longer than
// any window yamux grants ends the session (yamux ends it for an unknown
// version, type or a frame over the window). What is dropped is logged at
// a bounded rate.
type guestFrames struct {
	net.Conn
	vmm.FrameFilter
	logs *protocol.Limiter
}

// yamux's frame header (github.com/hashicorp/yamux const.go): version,
// type, flags, stream id, length; the length of a data frame is its body's.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	yamuxFlagSYN    = 1
)

func newGuestFrames(c net.Conn) *guestFrames {
	g := &guestFrames{Conn: c, logs: vmm.NewGuestLogLimiter()}
	g.FrameFilter = vmm.NewFrameFilter(bufio.NewReaderSize(c, 64<<10), yamuxHeaderSize, g.judge)
	return g
}

func (g *guestFrames) Read(p []byte) (int, error) { return g.FrameFilter.Read(p) }

// judge passes the frames of the host's streams (odd ids) and the
// session's (0), drops the guest's own streams' and ends the session on a
// data frame over any window.
func (g *guestFrames) judge(hdr []byte) (uint32, bool, error) {
	flags := binary.BigEndian.Uint16(hdr[2:4])
	id := binary.BigEndian.Uint32(hdr[4:8])
	var body uint32
	if hdr[1] == yamuxTypeData {
		body = binary.BigEndian.Uint32(hdr[8:12])
		if body > protocol.MuxConfig().MaxStreamWindowSize {
			return 0, false, fmt.Errorf("guest channel: data frame of %d bytes on stream %d, over any window granted: ending the session", body, id)
		}
	}
	if id == 0 || id%2 == 1 {
		return body, true, nil
	}
	if flags&yamuxFlagSYN != 0 {
		g.logf("the guest opened stream %d: dropped (the host never accepts streams from the guest)", id)
	}
	return body, false, nil
}

func (g *guestFrames) logf(format string, args ...any) {
	if ok, dropped := g.logs.Allow(); ok {
		log.L.WithField("suppressed", dropped).Warnf(format, args...)
	}
}
