package protocol

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// AgentServiceName is the ttrpc service beside containerd's task API that
// carries what only msb needs: boot config, status and power-off.
const AgentServiceName = "msb.agent.v1.Agent"

// Agent is the guest-side implementation of the Agent service.
type Agent interface {
	// Boot applies the MSB_* boot env (mounts, hostname, rlimits, handoff
	// init). Backends that pass env to the guest's init (libkrun) skip it.
	Boot(ctx context.Context, env []string) error
	// Status returns a short description (kernel release, booted or not).
	Status(ctx context.Context) (string, error)
	// Shutdown stops all containers, syncs and powers the VM off; the VMM
	// process then exits with exitCode.
	Shutdown(ctx context.Context, exitCode int32) error
	// WaitShutdown blocks until Shutdown is called and returns its exit code.
	// The VMM process keeps one such call open to learn its exit status.
	WaitShutdown(ctx context.Context) (int32, error)
}

// RegisterAgent registers a on a ttrpc server.
func RegisterAgent(s *ttrpc.Server, a Agent) {
	s.RegisterService(AgentServiceName, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Boot": func(ctx context.Context, un func(any) error) (any, error) {
			var req wrapperspb.BytesValue
			if err := un(&req); err != nil {
				return nil, err
			}
			var env []string
			if err := json.Unmarshal(req.Value, &env); err != nil {
				return nil, fmt.Errorf("boot env: %w", err)
			}
			return &emptypb.Empty{}, a.Boot(ctx, env)
		},
		"Status": func(ctx context.Context, un func(any) error) (any, error) {
			var req emptypb.Empty
			if err := un(&req); err != nil {
				return nil, err
			}
			s, err := a.Status(ctx)
			return wrapperspb.String(s), err
		},
		"Shutdown": func(ctx context.Context, un func(any) error) (any, error) {
			var req wrapperspb.Int32Value
			if err := un(&req); err != nil {
				return nil, err
			}
			return &emptypb.Empty{}, a.Shutdown(ctx, req.Value)
		},
		"WaitShutdown": func(ctx context.Context, un func(any) error) (any, error) {
			var req emptypb.Empty
			if err := un(&req); err != nil {
				return nil, err
			}
			code, err := a.WaitShutdown(ctx)
			return wrapperspb.Int32(code), err
		},
	}})
}

// AgentClient calls the Agent service over a ttrpc client.
type AgentClient struct{ c *ttrpc.Client }

// NewAgentClient wraps c.
func NewAgentClient(c *ttrpc.Client) *AgentClient { return &AgentClient{c: c} }

// Boot sends the boot env.
func (a *AgentClient) Boot(ctx context.Context, env []string) error {
	b, err := json.Marshal(env)
	if err != nil {
		return err
	}
	return a.c.Call(ctx, AgentServiceName, "Boot", wrapperspb.Bytes(b), &emptypb.Empty{})
}

// Status returns the agent's status line.
func (a *AgentClient) Status(ctx context.Context) (string, error) {
	var resp wrapperspb.StringValue
	err := a.c.Call(ctx, AgentServiceName, "Status", &emptypb.Empty{}, &resp)
	return resp.Value, err
}

// Shutdown asks the guest to power off; the VMM exits with exitCode.
func (a *AgentClient) Shutdown(ctx context.Context, exitCode int32) error {
	return a.c.Call(ctx, AgentServiceName, "Shutdown", wrapperspb.Int32(exitCode), &emptypb.Empty{})
}

// WaitShutdown blocks until the guest is asked to power off.
func (a *AgentClient) WaitShutdown(ctx context.Context) (int32, error) {
	var resp wrapperspb.Int32Value
	err := a.c.Call(ctx, AgentServiceName, "WaitShutdown", &emptypb.Empty{}, &resp)
	return resp.Value, err
}
