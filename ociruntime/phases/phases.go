// Package phases records when `msb-runtime run` reached each step, for
// bench/.
package phases

import (
	"encoding/json"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
)

// Phases are the steps a run reached. They are written
// only when MSB_TIMINGS names a file, as one JSON line of milliseconds since
// the run began.
type Phases struct {
	mu    sync.Mutex
	start time.Time
	at    map[string]float64
}

// New starts the clock.
func New() *Phases { return &Phases{start: time.Now(), at: map[string]float64{}} }

// Mark records the first time name is reached.
func (p *Phases) Mark(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.at[name]; !ok {
		p.at[name] = float64(time.Since(p.start).Microseconds()) / 1000
	}
}

// Write appends the marks to $MSB_TIMINGS, if set.
func (p *Phases) Write(l *log.Entry) {
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
