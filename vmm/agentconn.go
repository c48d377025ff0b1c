package vmm

import (
	"bufio"
	"encoding/binary"
	"fmt"
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
	FrameFilter

	mu    sync.Mutex
	calls map[uint32]bool // stream ids of requests sent, not yet answered
	// out parses the client's own writes: the header being written and
	// the body bytes left of the message being written.
	outHdr  []byte
	outBody uint32

	logs *protocol.Limiter
}

// ttrpc's message framing (github.com/containerd/ttrpc channel.go).
const (
	ttrpcHeaderSize   = 10
	ttrpcMaxMessage   = 4 << 20
	ttrpcTypeRequest  = 1
	ttrpcTypeResponse = 2
	ttrpcTypeData     = 3
)

// NewAgentConn wraps c, a stream to the agent's ttrpc server, for a
// ttrpc client (agentConn): the creator's through the relay, the VMM
// process's own on the guest channel.
func NewAgentConn(c net.Conn) net.Conn {
	a := &agentConn{Conn: c, calls: map[uint32]bool{}, logs: NewGuestLogLimiter()}
	a.FrameFilter = NewFrameFilter(bufio.NewReader(c), ttrpcHeaderSize, a.judge)
	return a
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
func (a *agentConn) Read(p []byte) (int, error) { return a.FrameFilter.Read(p) }

func (a *agentConn) judge(hdr []byte) (uint32, bool, error) {
	length, id, typ := binary.BigEndian.Uint32(hdr[0:4]), binary.BigEndian.Uint32(hdr[4:8]), hdr[8]
	if length > ttrpcMaxMessage {
		return 0, false, fmt.Errorf("guest agent: message of %d bytes on stream %d, over ttrpc's %d: closing the connection", length, id, ttrpcMaxMessage)
	}
	a.mu.Lock()
	ok := a.calls[id] && (typ == ttrpcTypeResponse || typ == ttrpcTypeData)
	if typ == ttrpcTypeResponse {
		delete(a.calls, id)
	}
	a.mu.Unlock()
	if !ok {
		if ok, dropped := a.logs.Allow(); ok {
			log.L.WithFields(log.Fields{"stream": id, "type": typ, "suppressed": dropped}).
				Warn("guest agent: message on no call of the host's: dropped")
		}
	}
	return length, ok, nil
}
