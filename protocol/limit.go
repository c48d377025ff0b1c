package protocol

import (
	"sync"
	"time"
)

// Limiter is a token bucket: the host bounds with it how often it acts on
// what a guest sends (events it publishes, lines it logs), since a hostile
// guest can send without end. It counts what it refused, so a caller can
// say how much it dropped.
type Limiter struct {
	mu      sync.Mutex
	perSec  float64
	burst   float64
	tokens  float64
	last    time.Time
	dropped uint64
}

// NewLimiter allows perSec events a second on average and burst at once.
func NewLimiter(perSec, burst int) *Limiter {
	return &Limiter{perSec: float64(perSec), burst: float64(burst), tokens: float64(burst)}
}

// Allow takes one token; false (and one more dropped) when there is none.
// On true it also returns how many were dropped since the last true, for
// the caller to report.
func (l *Limiter) Allow() (ok bool, droppedBefore uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !l.last.IsZero() {
		l.tokens += now.Sub(l.last).Seconds() * l.perSec
		if l.tokens > l.burst {
			l.tokens = l.burst
		}
	}
	l.last = now
	if l.tokens < 1 {
		l.dropped++
		return false, 0
	}
	l.tokens--
	d := l.dropped
	l.dropped = 0
	return true, d
}
