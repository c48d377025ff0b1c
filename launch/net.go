package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/msb-dev/msb/network"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// Net is a running VM's network as its creator holds it: the VMM's
// network namespace (the container's), open so the wiring can be undone
// even after the VMM is gone, and the interfaces joined to its NICs.
type Net struct {
	ns       *os.File
	nics     []network.NIC
	stateDir string
	loopback *network.LoopbackForwarder

	// mu serializes syncs in this process (the watcher's and Attach);
	// the state dir's lock serializes them with other processes.
	mu    sync.Mutex
	wires []network.Wire
	// sent is the guest configuration last sent for each wired
	// interface, by index.
	sent  map[int]string
	watch *watcher
}

// OpenNet opens the network namespace of the VMM process pid started
// for lc: lc.NetNS, or the VMM's own new one.
func OpenNet(lc *vmm.LaunchConfig, pid int) (*Net, error) {
	p := lc.NetNS
	if p == "" {
		p = fmt.Sprintf("/proc/%d/ns/net", pid)
	}
	ns, err := network.OpenNS(p)
	if err != nil {
		return nil, err
	}
	return &Net{ns: ns, nics: lc.NICs, stateDir: lc.RuntimeDir}, nil
}

// Attach joins the namespace's interfaces that are not joined yet to the
// VM's NICs and has agent configure them in container id's guest
// namespace. Creators call it just before the container starts: Docker
// moves its veth in after create, CNI runs before it. The wires are
// recorded in the state dir for whoever cleans up (network.LoadWires).
func (n *Net) Attach(ctx context.Context, agent *protocol.AgentClient, id string) error {
	if n == nil || len(n.nics) == 0 {
		return nil
	}
	return n.sync(ctx, agent, id, false)
}

// sync brings the wiring and the guest's NICs to the namespace's
// interfaces now (network.Sync), under the state dir's lock: the CLI's
// start and the VMM's watcher are two processes. It tells the agent of
// the NICs whose interface left and of those new or changed.
func (n *Net) sync(ctx context.Context, agent *protocol.AgentClient, id string, upOnly bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil {
		return nil
	}
	unlock, err := lockState(n.stateDir)
	if err != nil {
		return err
	}
	defer unlock()
	wires := n.wires
	if n.stateDir != "" {
		if wires, err = network.LoadWires(n.stateDir); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	s, serr := network.Sync(n.ns, n.nics, wires, upOnly)
	if serr != nil {
		serr = fmt.Errorf("network: %w", serr)
	}
	n.wires = s.Wires
	if n.stateDir != "" {
		if err := network.SaveWires(n.stateDir, n.wires); err != nil {
			return errors.Join(serr, err)
		}
	}
	return errors.Join(serr, n.tellGuest(ctx, agent, id, s))
}

// tellGuest has the agent give back the NICs of s.Removed and configure
// those of s whose configuration it has not been sent yet.
func (n *Net) tellGuest(ctx context.Context, agent *protocol.AgentClient, id string, s network.Synced) error {
	if len(s.Removed) > 0 {
		if err := agent.NetworkRemove(ctx, id, s.Removed); err != nil {
			return guestNetErr("remove NICs in the guest", err)
		}
	}
	sent := map[int]string{}
	var changed []protocol.NetInterface
	for i, c := range s.Configs {
		b, err := json.Marshal(c)
		if err != nil {
			return err
		}
		idx := s.Wires[i].Index
		if sent[idx] = string(b); n.sent[idx] != sent[idx] {
			changed = append(changed, c)
		}
	}
	if len(changed) > 0 {
		if err := agent.Network(ctx, id, changed); err != nil {
			return guestNetErr("configure the guest network", err)
		}
	}
	n.sent = sent
	return nil
}

func guestNetErr(what string, err error) error {
	if status.Code(err) == codes.Unimplemented {
		return fmt.Errorf("the guest agent cannot %s (guest image older than msb): rebuild the guest image: %w", what, errdefs.ErrFailedPrecondition)
	}
	return fmt.Errorf("%s: %w", what, errgrpc.ToNative(err))
}

// portOpenTimeout bounds the agent's answer to a port-forward open: it
// connects to a port on the guest's loopback, a matter of milliseconds
// even under TCG, where a busy guest may still stall for seconds. A
// client's own timeouts (kubectl's) are longer, so its connection is
// refused, not left hanging.
const portOpenTimeout = 20 * time.Second

// ForwardLoopback makes TCP connections to 127.0.0.1 in the VM's network
// namespace on the host reach the same port on container id's loopback in
// the guest, through the agent socket: containerd's CRI serves a pod's
// port-forward by dialing there (network.ForwardLoopback).
func (n *Net) ForwardLoopback(agentSocket, id string) error {
	if n == nil || n.ns == nil || n.loopback != nil {
		return nil
	}
	f, err := network.ForwardLoopback(fmt.Sprintf("/proc/self/fd/%d", n.ns.Fd()), func(port int) (io.ReadWriteCloser, error) {
		c, err := net.DialTimeout("unix", agentSocket, portOpenTimeout)
		if err != nil {
			return nil, err
		}
		// The guest answers or the connection is refused: a guest that
		// never answers must not hold the client's connection open.
		_ = c.SetDeadline(time.Now().Add(portOpenTimeout))
		if err := protocol.OpenPort(c, id, port); err != nil {
			c.Close()
			return nil, err
		}
		_ = c.SetDeadline(time.Time{})
		return c, nil
	})
	if err != nil {
		return err
	}
	n.loopback = f
	return nil
}

// Release closes the namespace and leaves the wiring in place, for a
// creator that hands the VM over (the VMM then undoes it when it ends);
// safe on nil.
func (n *Net) Release() {
	if n == nil {
		return
	}
	n.StopWatch()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil {
		return
	}
	n.ns.Close()
	n.ns = nil
}

// Close stops loopback forwarding, undoes the wiring (the taps go with the
// VMM) and closes the namespace; safe on nil.
func (n *Net) Close() error {
	if n == nil {
		return nil
	}
	n.StopWatch()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil {
		return nil
	}
	ferr := n.loopback.Close()
	n.loopback = nil
	err := errors.Join(ferr, network.Detach(n.ns, n.wires))
	n.ns.Close()
	n.ns = nil
	return err
}
