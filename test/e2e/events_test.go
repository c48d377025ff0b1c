package e2e

// Task events as containerd's clients receive them.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"
)

// Every `ctr run --rm` publishes the whole task lifecycle: create, start,
// exit and delete, each once, none missing, whatever the timing of the
// shim's shutdown (anything waiting for /tasks/delete hangs otherwise).
// MSB_TEST_EVENT_CYCLES sets the number of runs (default 50).
func TestShimEventsComplete(t *testing.T) {
	e := startShimEnv(t)
	events := e.recordTaskEvents(t)
	n := intEnv(t, "MSB_TEST_EVENT_CYCLES", 50)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("ev%d", i)
		if _, stderr, code, err := e.run(id, nil, "true"); err != nil || code != 0 {
			t.Fatalf("cycle %d: %v exit %d: %s", i, err, code, stderr)
		}
	}
	want := "/tasks/create /tasks/start /tasks/exit /tasks/delete"
	var bad []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("ev%d", i)
		if got := events.wait(id, "/tasks/delete", 10*time.Second); got != want {
			bad = append(bad, id+": "+got)
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%d of %d cycles with incomplete events (want %q):\n%s", len(bad), n, want, strings.Join(bad, "\n"))
	}
}

// intEnv reads a positive integer knob, def when unset.
func intEnv(t *testing.T, k string, def int) int {
	t.Helper()
	v := os.Getenv(k)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", k, v)
	}
	return n
}

// taskEvents records the /tasks/ topics each container's events carry, in
// order, from a subscription made before anything runs.
type taskEvents struct {
	mu   sync.Mutex
	seen map[string][]string // container id → topics
}

func (e *shimEnv) recordTaskEvents(t *testing.T) *taskEvents {
	t.Helper()
	c, _ := e.goClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	evc, errc := c.EventService().Subscribe(ctx, `topic~="/tasks/"`)
	r := &taskEvents{seen: map[string][]string{}}
	go func() {
		for {
			select {
			case env := <-evc:
				v, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					continue
				}
				id := ""
				switch ev := v.(type) {
				case *eventstypes.TaskCreate:
					id = ev.ContainerID
				case *eventstypes.TaskStart:
					id = ev.ContainerID
				case *eventstypes.TaskExit:
					id = ev.ContainerID
				case *eventstypes.TaskDelete:
					id = ev.ContainerID
				case *eventstypes.TaskOOM:
					id = ev.ContainerID
				}
				r.mu.Lock()
				r.seen[id] = append(r.seen[id], env.Topic)
				r.mu.Unlock()
			case <-errc:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return r
}

// wait returns id's topics once last has come (events are asynchronous to
// the calls that cause them), or what came within d.
func (r *taskEvents) wait(id, last string, d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		r.mu.Lock()
		got := strings.Join(r.seen[id], " ")
		r.mu.Unlock()
		if strings.HasSuffix(got, last) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
}
