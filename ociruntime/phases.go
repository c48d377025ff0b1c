package ociruntime

import (
	"encoding/json"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
)

// phases records when a run reached each step, for bench/. It is written
// only when MSB_TIMINGS names a file, as one JSON line of milliseconds since
// the run began.
type phases struct {
	mu    sync.Mutex
	start time.Time
	at    map[string]float64
}

func newPhases() *phases { return &phases{start: time.Now(), at: map[string]float64{}} }

func (p *phases) mark(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.at[name]; !ok {
		p.at[name] = float64(time.Since(p.start).Microseconds()) / 1000
	}
}

func (p *phases) write(l *log.Entry) {
	path := os.Getenv("MSB_TIMINGS")
	if path == "" {
		return
	}
	p.mu.Lock()
	b, _ := json.Marshal(p.at)
	p.mu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.WithError(err).Warn("timings")
		return
	}
	defer f.Close()
	_, _ = f.Write(append(b, '\n'))
}
