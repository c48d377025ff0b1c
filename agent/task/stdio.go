package task

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// stdioRegistry pairs "stdio <token>" streams with the task requests that
// name them. Either side may come first: a stream that arrives before its
// request waits (up to unclaimedTTL) in ready; a request that comes first
// waits (up to its own timeout) in waiting.
type stdioRegistry struct {
	mu           sync.Mutex
	ready        map[string]*readyStream
	waiting      map[string]chan net.Conn
	unclaimedTTL time.Duration
}

type readyStream struct {
	conn  net.Conn
	timer *time.Timer
}

func newStdioRegistry(ttl time.Duration) *stdioRegistry {
	return &stdioRegistry{
		ready:        map[string]*readyStream{},
		waiting:      map[string]chan net.Conn{},
		unclaimedTTL: ttl,
	}
}

// register adds a stream that arrived with header "stdio <token>".
func (r *stdioRegistry) register(token string, c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch, ok := r.waiting[token]; ok {
		delete(r.waiting, token)
		ch <- c // buffered, never blocks
		return
	}
	if _, dup := r.ready[token]; dup {
		log.L.Warnf("stdio stream %q opened twice: closing the second", token)
		c.Close()
		return
	}
	rs := &readyStream{conn: c}
	rs.timer = time.AfterFunc(r.unclaimedTTL, func() {
		r.mu.Lock()
		cur, ok := r.ready[token]
		if ok && cur == rs {
			delete(r.ready, token)
		}
		r.mu.Unlock()
		if ok && cur == rs {
			log.L.Warnf("stdio stream %q not claimed by any task request within %s: closing it", token, r.unclaimedTTL)
			c.Close()
		}
	})
	r.ready[token] = rs
}

// take returns the stream for token, waiting up to timeout for it to arrive.
func (r *stdioRegistry) take(ctx context.Context, token string, timeout time.Duration) (net.Conn, error) {
	r.mu.Lock()
	if rs, ok := r.ready[token]; ok {
		delete(r.ready, token)
		rs.timer.Stop()
		r.mu.Unlock()
		return rs.conn, nil
	}
	if _, ok := r.waiting[token]; ok {
		r.mu.Unlock()
		return nil, fmt.Errorf("stdio stream %q is already claimed by another request: %w", token, errdefs.ErrAlreadyExists)
	}
	ch := make(chan net.Conn, 1)
	r.waiting[token] = ch
	r.mu.Unlock()

	t := time.NewTimer(timeout)
	defer t.Stop()
	var why error
	select {
	case c := <-ch:
		return c, nil
	case <-t.C:
		why = fmt.Errorf("stdio stream %q did not arrive within %s (open it with header \"stdio %s\" before or right after the request): %w",
			token, timeout, token, context.DeadlineExceeded)
	case <-ctx.Done():
		why = fmt.Errorf("waiting for stdio stream %q: %w", token, ctx.Err())
	}
	r.mu.Lock()
	if r.waiting[token] == ch {
		delete(r.waiting, token)
	}
	r.mu.Unlock()
	// It may have been delivered between the timeout and the lock.
	select {
	case c := <-ch:
		return c, nil
	default:
	}
	return nil, why
}

// closeAll closes every unclaimed stream (agent shutdown).
func (r *stdioRegistry) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for tok, rs := range r.ready {
		rs.timer.Stop()
		rs.conn.Close()
		delete(r.ready, tok)
	}
}
