package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

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
// only answers to its calls reach it (agentConn), and every call but the
// long polls is bounded by AgentCallTimeout.
func DialTTRPC(ctx context.Context, socket string) (*ttrpc.Client, error) {
	c, err := DialAgent(ctx, socket, protocol.KindTTRPC, "")
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(NewAgentConn(c), ttrpc.WithUnaryClientInterceptor(boundCall)), nil
}

// AgentCallTimeout bounds each call to the guest agent (runc create and
// start, the NICs' setup, an exec's start: seconds under TCG), so that a
// guest that stops answering fails the call instead of hanging its
// caller: seen with 30 VMs booting at once under TCG, whose channels went
// quiet between create and start (bench/RESULTS.md). A caller's own
// shorter deadline still applies.
var AgentCallTimeout = time.Minute

// longPolls are the calls that wait on the guest by design: a process's
// exit, OOM events (the agent answers within 5 min) and the guest's
// shutdown.
var longPolls = map[string]bool{
	"/containerd.task.v3.Task/Wait":                   true,
	"/" + protocol.AgentServiceName + "/OOMEvents":    true,
	"/" + protocol.AgentServiceName + "/WaitShutdown": true,
}

// boundCall is the agent client's interceptor: AgentCallTimeout on every
// call but the long polls, and an error that says the guest was silent.
func boundCall(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
	if longPolls[info.FullMethod] {
		return invoke(ctx, req, resp)
	}
	cctx, cancel := context.WithTimeout(ctx, AgentCallTimeout)
	defer cancel()
	err := invoke(cctx, req, resp)
	if err != nil && ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("the guest did not answer %s within %s (the VM is stuck or overloaded): %w", info.FullMethod, AgentCallTimeout, err)
	}
	return err
}

// WaitReady blocks until the agent answers Status through the relay. The
// relay accepts only after boot, so one call bounded by ctx is enough.
func WaitReady(ctx context.Context, c *ttrpc.Client) error {
	if _, err := protocol.NewAgentClient(c).Status(ctx); err != nil {
		return fmt.Errorf("agent not ready: %w", err)
	}
	return nil
}
