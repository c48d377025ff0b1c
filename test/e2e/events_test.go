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
	c, _ := e.goClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evc, errc := c.EventService().Subscribe(ctx, `topic~="/tasks/"`)
	var mu sync.Mutex
	seen := map[string][]string{} // container id → topics in order
	done := make(chan struct{})
	go func() {
		defer close(done)
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
				}
				mu.Lock()
				seen[id] = append(seen[id], env.Topic)
				mu.Unlock()
			case <-errc:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	n := intEnv(t, "MSB_TEST_EVENT_CYCLES", 50)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("ev%d", i)
		if _, stderr, code, err := e.run(id, nil, "true"); err != nil || code != 0 {
			t.Fatalf("cycle %d: %v exit %d: %s", i, err, code, stderr)
		}
	}
	time.Sleep(2 * time.Second) // events are asynchronous to ctr's return
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	want := "/tasks/create /tasks/start /tasks/exit /tasks/delete"
	var bad []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("ev%d", i)
		if got := strings.Join(seen[id], " "); got != want {
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
