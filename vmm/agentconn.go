package vmm

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/protocol"
)

// agentConn is a host ttrpc client's connection to the agent: it passes
// on only the answers to calls the host made. ttrpc's client logs an
// error for every message on a stream it has no call on, so a guest that
// sends such messages in a loop would flood the host's log (containerd's,
// for the shim); here each is dropped and logged at a bounded rate. A
// message longer than ttrpc allows ends the connection before its body
// is read.
type agentConn struct {
	net.Conn
	r *bufio.Reader

	mu    sync.Mutex
	calls map[uint32]bool // stream ids of requests sent, not yet answered
	// out parses the client's own writes: the header being written and
	// the body bytes left of the message being written.
	outHdr  []byte
	outBody uint32

	// in: the header of a message passed on, not yet read by ttrpc, and
	// the body bytes left to pass.
	pending []byte
	body    uint32
	logs    *protocol.Limiter
}

// ttrpc's message framing (github.com/containerd/ttrpc channel.go).
const (
	ttrpcHeaderSize   = 10
	ttrpcMaxMessage   = 4 << 20
	ttrpcTypeRequest  = 1
	ttrpcTypeResponse = 2
	ttrpcTypeData     = 3
)

func newAgentConn(c net.Conn) *agentConn {
	return &agentConn{Conn: c, r: bufio.NewReader(c), calls: map[uint32]bool{},
		logs: protocol.NewLimiter(guestFrameLogsPerSec, guestFrameLogsBurst)}
}

// Write records the stream id of each request the client writes.
func (a *agentConn) Write(p []byte) (int, error) {
	a.mu.Lock()
	for rest := p; len(rest) > 0; {
		if a.outBody > 0 {
			n := min(uint32(len(rest)), a.outBody)
			a.outBody -= n
			rest = rest[n:]
			continue
		}
		n := min(ttrpcHeaderSize-len(a.outHdr), len(rest))
		a.outHdr = append(a.outHdr, rest[:n]...)
		rest = rest[n:]
		if len(a.outHdr) == ttrpcHeaderSize {
			if a.outHdr[8] == ttrpcTypeRequest {
				a.calls[binary.BigEndian.Uint32(a.outHdr[4:8])] = true
			}
			a.outBody = binary.BigEndian.Uint32(a.outHdr[0:4])
			a.outHdr = a.outHdr[:0]
		}
	}
	a.mu.Unlock()
	return a.Conn.Write(p)
}

// Read passes on the messages that answer a call and drops the others.
func (a *agentConn) Read(p []byte) (int, error) {
	for {
		if len(a.pending) > 0 {
			n := copy(p, a.pending)
			a.pending = a.pending[n:]
			return n, nil
		}
		if a.body > 0 {
			if uint32(len(p)) > a.body {
				p = p[:a.body]
			}
			n, err := a.r.Read(p)
			a.body -= uint32(n)
			return n, err
		}
		hdr := make([]byte, ttrpcHeaderSize)
		if _, err := io.ReadFull(a.r, hdr); err != nil {
			return 0, err
		}
		length, id, typ := binary.BigEndian.Uint32(hdr[0:4]), binary.BigEndian.Uint32(hdr[4:8]), hdr[8]
		if length > ttrpcMaxMessage {
			return 0, fmt.Errorf("guest agent: message of %d bytes on stream %d, over ttrpc's %d: closing the connection", length, id, ttrpcMaxMessage)
		}
		a.mu.Lock()
		ok := a.calls[id] && (typ == ttrpcTypeResponse || typ == ttrpcTypeData)
		if typ == ttrpcTypeResponse {
			delete(a.calls, id)
		}
		a.mu.Unlock()
		if ok {
			a.pending, a.body = hdr, length
			continue
		}
		if ok, dropped := a.logs.Allow(); ok {
			log.L.WithFields(log.Fields{"stream": id, "type": typ, "suppressed": dropped}).
				Warn("guest agent: message on no call of the host's: dropped")
		}
		if _, err := io.CopyN(io.Discard, a.r, int64(length)); err != nil {
			return 0, err
		}
	}
}
