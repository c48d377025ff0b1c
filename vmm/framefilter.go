package vmm

import (
	"bufio"
	"io"

	"github.com/msb-dev/msb/protocol"
)

// What a guest sends the host is filtered frame by frame before a
// protocol library reads it: the host's ttrpc client (agentConn) and, in
// the VMM process, its yamux session (vmmproc's guestFrames).

// Logs about dropped guest frames: enough to see an attack, not a flood.
const (
	guestFrameLogsPerSec = 1
	guestFrameLogsBurst  = 5
)

// NewGuestLogLimiter bounds the logs about one connection's dropped guest
// messages.
func NewGuestLogLimiter() *protocol.Limiter {
	return protocol.NewLimiter(guestFrameLogsPerSec, guestFrameLogsBurst)
}

// FrameFilter reads a framed stream (fixed-size headers, each saying its
// body's length) and passes each frame on or drops it unread, as judge
// says of its header; an error from judge ends the stream. It holds one
// header and reads bodies through, so it buffers nothing a guest sends.
type FrameFilter struct {
	r       *bufio.Reader
	hdrSize int
	judge   func(hdr []byte) (body uint32, pass bool, err error)
	// pending is the header of a frame passed on, not yet read; body is
	// how much of its body is left to pass.
	pending []byte
	body    uint32
}

// NewFrameFilter reads frames of hdrSize-byte headers from r, as judge
// says of each header: the length of its body, whether it passes, or an
// error that ends the stream.
func NewFrameFilter(r *bufio.Reader, hdrSize int, judge func(hdr []byte) (body uint32, pass bool, err error)) FrameFilter {
	return FrameFilter{r: r, hdrSize: hdrSize, judge: judge}
}

// Read passes on the frames judge passes, header and body.
func (f *FrameFilter) Read(p []byte) (int, error) {
	for {
		if len(f.pending) > 0 {
			n := copy(p, f.pending)
			f.pending = f.pending[n:]
			return n, nil
		}
		if f.body > 0 {
			if uint32(len(p)) > f.body {
				p = p[:f.body]
			}
			n, err := f.r.Read(p)
			f.body -= uint32(n)
			return n, err
		}
		hdr := make([]byte, f.hdrSize)
		if _, err := io.ReadFull(f.r, hdr); err != nil {
			return 0, err
		}
		body, pass, err := f.judge(hdr)
		if err != nil {
			return 0, err
		}
		if pass {
			f.pending, f.body = hdr, body
			continue
		}
		if _, err := io.CopyN(io.Discard, f.r, int64(body)); err != nil {
			return 0, err
		}
	}
}
