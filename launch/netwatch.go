package launch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/network"
	"github.com/msb-dev/msb/protocol"
)

// Networks connected after start (ADR 029): a watcher subscribes to the
// changes of the VM's network namespace and, once they settle, syncs the
// wiring and the guest's NICs with it (Net.sync), as Attach does at start.

// netSettle is how long the namespace must stay quiet before a sync: a
// network manager (libnetwork, a CNI plugin) moves an interface in,
// renames, addresses and sets it up, and adds routes, within a few
// milliseconds. netSettleMax bounds the wait under a stream of changes.
var (
	netSettle    = 250 * time.Millisecond
	netSettleMax = 2 * time.Second
)

// watcher is a running Net.Watch.
type watcher struct {
	changes *network.Changes
	cancel  context.CancelFunc
	done    chan struct{}
}

// Watch starts following the namespace after the container started:
// interfaces that arrive are wired to a free NIC and configured in
// container id's guest namespace by agent, interfaces that leave are
// unwired and their NIC is given back, changed ones are reconfigured.
// What fails (no spare NIC left, the guest's error) is logged as an
// error on ctx's logger, naming the fix, and retried at the next change.
// StopWatch, Close and Release stop it. A Net without NICs (no network) has nothing
// to watch.
func (n *Net) Watch(ctx context.Context, agent *protocol.AgentClient, id string) error {
	if n == nil || len(n.nics) == 0 {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil || n.watch != nil {
		return nil
	}
	ch, err := network.Subscribe(n.ns)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	// It outlives the call that starts it (a Start request): ctx gives
	// only its logger.
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &watcher{changes: ch, cancel: cancel, done: make(chan struct{})}
	n.watch = w
	go func() {
		defer close(w.done)
		n.follow(ctx, w.changes.C, agent, id)
	}()
	return nil
}

// follow syncs once (a change may have come before the subscription),
// then after each settled burst of changes, until changes ends.
func (n *Net) follow(ctx context.Context, changes <-chan struct{}, agent *protocol.AgentClient, id string) {
	logger := log.G(ctx).WithField("container", id)
	for {
		if err := n.sync(ctx, agent, id, true); err != nil && ctx.Err() == nil {
			logger.WithError(err).Error("network changed after start: the guest does not follow it")
		}
		if !settle(changes) {
			return
		}
	}
}

// settle waits for a change on changes, then for netSettle without one
// (at most netSettleMax). It reports false when changes ended.
func settle(changes <-chan struct{}) bool {
	if _, ok := <-changes; !ok {
		return false
	}
	limit := time.NewTimer(netSettleMax)
	defer limit.Stop()
	for {
		quiet := time.NewTimer(netSettle)
		select {
		case _, ok := <-changes:
			quiet.Stop()
			if !ok {
				return false
			}
		case <-quiet.C:
			return true
		case <-limit.C:
			quiet.Stop()
			return true
		}
	}
}

// StopWatch ends what Watch started and waits for it (a sync under way
// ends first: its agent calls are bounded); creators call it when the
// container ends, before the VM goes. Close and Release call it too. Safe
// on nil.
func (n *Net) StopWatch() {
	if n == nil {
		return
	}
	n.mu.Lock()
	w := n.watch
	n.watch = nil
	n.mu.Unlock()
	if w == nil {
		return
	}
	w.cancel()
	w.changes.Close()
	<-w.done
}

// lockState takes the lock of the network record in the state dir dir
// (none without one) and returns its release.
func lockState(dir string) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(filepath.Join(dir, "network.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("network record lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("network record lock: %w", err)
	}
	return func() { f.Close() }, nil
}
