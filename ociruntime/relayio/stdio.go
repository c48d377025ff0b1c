package relayio

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"os"
	"sync"

	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// Stdio is a process's standard streams on the host.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
}

// Streams are the three relay connections of a guest process's stdio,
// each copied to or from the host side with backpressure: nothing is
// dropped, a slow host reader stalls the guest process.
type Streams struct {
	conns [3]*net.UnixConn
	out   sync.WaitGroup
}

// Open dials the streams named by tokens (the agent pairs them with
// the create or exec request that names the same tokens, whichever comes
// first) and starts copying. first, if set, runs at the first output byte.
func Open(ctx context.Context, sock string, tokens [3]string, stdio Stdio, first func()) (*Streams, error) {
	s := &Streams{}
	for i := range s.conns {
		c, err := vmm.DialAgent(ctx, sock, protocol.KindStdio, tokens[i])
		if err != nil {
			s.Close()
			return nil, err
		}
		s.conns[i] = c
	}
	go func() {
		if stdio.In != nil {
			_, _ = io.Copy(s.conns[0], stdio.In)
		}
		_ = s.conns[0].CloseWrite()
	}()
	var once sync.Once
	if first == nil {
		first = func() {}
	}
	for i, w := range []io.Writer{stdio.Out, stdio.Err} {
		c := s.conns[i+1]
		if w == nil {
			w = io.Discard
		}
		_ = c.CloseWrite()
		s.out.Add(1)
		go func() {
			defer s.out.Done()
			if _, err := io.Copy(w, &markReader{r: c, once: &once, mark: first}); err != nil {
				// The host side is gone (a closed pipe): the guest
				// process gets the error on its next write, as with runc.
				c.Close()
			}
		}()
	}
	return s, nil
}

// Wait returns once both output streams have reached EOF and every byte
// is written to the host side. The agent closes them before it reports the
// process's exit.
func (s *Streams) Wait() { s.out.Wait() }

func (s *Streams) Close() {
	for _, c := range s.conns {
		if c != nil {
			c.Close()
		}
	}
}

type markReader struct {
	r    io.Reader
	once *sync.Once
	mark func()
}

func (m *markReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if n > 0 {
		m.once.Do(m.mark)
	}
	return n, err
}

// Files are this process's fds 0–2, which create and exec hand on.
func Files() [3]*os.File { return [3]*os.File{os.Stdin, os.Stdout, os.Stderr} }

// NewTokens names the three stdio streams of a guest process (the agent
// pairs them with the request that names the same tokens).
func NewTokens() [3]string {
	var t [3]string
	for i := range t {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		t[i] = hex.EncodeToString(b)
	}
	return t
}
