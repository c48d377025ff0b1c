package vmm

import (
	"context"
	"fmt"
	"net"

	"github.com/containerd/ttrpc"

	"github.com/msb-dev/msb/protocol"
)

// DialAgent connects to a VM's relay socket and names the stream (a
// protocol.Kind* and its argument). The relay accepts only once the agent
// has booted, so the first reply on the stream also means "agent ready".
func DialAgent(ctx context.Context, socket, kind, arg string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to agent relay %s: %w", socket, err)
	}
	uc := c.(*net.UnixConn)
	if err := protocol.WriteHeader(uc, kind, arg); err != nil {
		uc.Close()
		return nil, fmt.Errorf("agent relay %s: %w", socket, err)
	}
	return uc, nil
}

// DialTTRPC opens a ttrpc client to the guest agent through the relay;
// only answers to its calls reach it (agentConn).
func DialTTRPC(ctx context.Context, socket string) (*ttrpc.Client, error) {
	c, err := DialAgent(ctx, socket, protocol.KindTTRPC, "")
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(NewAgentConn(c)), nil
}

// WaitReady blocks until the agent answers Status through the relay. The
// relay accepts only after boot, so one call bounded by ctx is enough.
func WaitReady(ctx context.Context, c *ttrpc.Client) error {
	if _, err := protocol.NewAgentClient(c).Status(ctx); err != nil {
		return fmt.Errorf("agent not ready: %w", err)
	}
	return nil
}
