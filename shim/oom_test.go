package shim

import (
	"context"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"

	"github.com/msb-dev/msb/protocol"
)

// The guest names the containers its OOM events are for: only this VM's
// are published, at most the rate limit's burst at once.
func TestPublishOOMsOnlyThisVM(t *testing.T) {
	s := &service{ctx: context.Background(), containers: map[string]*container{}, events: make(chan any, 1000)}
	mine, other := &vm{name: "mine"}, &vm{name: "other"}
	oom := newOOMState()
	c := &container{id: "sb", vm: mine, oom: oom}
	s.containers["sb"] = c
	s.containers["app"] = &container{id: "app", vm: mine, oom: oom}
	s.containers["elsewhere"] = &container{id: "elsewhere", vm: other, oom: newOOMState()}

	s.publishOOMs(c, []protocol.OOMEvent{
		{Seq: 1, ContainerID: "app"}, {Seq: 2, ContainerID: "victim"}, {Seq: 3, ContainerID: "elsewhere"}, {Seq: 4},
	})
	if got := oomIDs(s); len(got) != 2 || got[0] != "app" || got[1] != "sb" {
		t.Fatalf("published %v, want [app sb]", got)
	}

	var flood []protocol.OOMEvent
	for i := uint64(10); i < 1010; i++ {
		flood = append(flood, protocol.OOMEvent{Seq: i, ContainerID: "sb"})
	}
	s.publishOOMs(c, flood)
	if got := oomIDs(s); len(got) > oomEventsBurst {
		t.Fatalf("a flood of 1000 OOM events published %d, want at most %d", len(got), oomEventsBurst)
	}
}

func oomIDs(s *service) []string {
	var ids []string
	for {
		select {
		case e := <-s.events:
			ids = append(ids, e.(*eventstypes.TaskOOM).ContainerID)
		default:
			return ids
		}
	}
}
