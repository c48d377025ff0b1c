package task

import (
	"os"
	"os/signal"
	"sync"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

var reaperOnce sync.Once

// startReaper makes this process reap every child on SIGCHLD through
// containerd's reaper, which also serves as go-runc's process monitor (runc
// commands are waited for through it). When the process is not PID 1 it
// becomes a child subreaper, so container processes that runc leaves behind
// are reparented to it and their exits are seen here.
func startReaper() {
	reaperOnce.Do(func() {
		runc.Monitor = reaper.Default
		if os.Getpid() != 1 {
			if err := reaper.SetSubreaper(1); err != nil {
				log.L.WithError(err).Warn("cannot become a child subreaper: container exits may be missed")
			}
		}
		ch := make(chan os.Signal, 64)
		signal.Notify(ch, unix.SIGCHLD)
		go func() {
			for range ch {
				if err := reaper.Reap(); err != nil {
					log.L.WithError(err).Debug("reap")
				}
			}
		}()
		// Children that exited before Notify was in place.
		_ = reaper.Reap()
	})
}

// exitTracker routes the reaper's exit events to processes by pid. Exits of
// pids nobody watches are kept while a start is in flight (pending > 0), so
// a process that exits between runc returning and the pid being recorded is
// not lost (the same scheme as containerd's runc shim).
type exitTracker struct {
	mu        sync.Mutex
	byPid     map[int]*process
	pending   int
	unmatched map[int]runc.Exit
	sub       chan runc.Exit
}

func newExitTracker() *exitTracker {
	startReaper()
	t := &exitTracker{
		byPid:     map[int]*process{},
		unmatched: map[int]runc.Exit{},
		sub:       reaper.Default.Subscribe(),
	}
	go t.run()
	return t
}

func (t *exitTracker) run() {
	for e := range t.sub {
		t.mu.Lock()
		p := t.byPid[e.Pid]
		if p != nil {
			delete(t.byPid, e.Pid)
		} else if t.pending > 0 {
			t.unmatched[e.Pid] = e
		}
		t.mu.Unlock()
		if p != nil {
			p.setExited(e)
		}
	}
}

// begin marks a start in flight; end must follow.
func (t *exitTracker) begin() {
	t.mu.Lock()
	t.pending++
	t.mu.Unlock()
}

func (t *exitTracker) end() {
	t.mu.Lock()
	t.pending--
	if t.pending == 0 {
		clear(t.unmatched)
	}
	t.mu.Unlock()
}

// watch routes pid's exit to p. If pid already exited (during the pending
// window), p is told right away.
func (t *exitTracker) watch(pid int, p *process) {
	t.mu.Lock()
	e, gone := t.unmatched[pid]
	if gone {
		delete(t.unmatched, pid)
	} else {
		t.byPid[pid] = p
	}
	t.mu.Unlock()
	if gone {
		p.setExited(e)
	}
}

func (t *exitTracker) close() {
	reaper.Default.Unsubscribe(t.sub)
}
