package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

// OOMEvent is one OOM kill in a container's cgroup in the guest. Seq
// numbers the agent's events from 1 up, so a host can fetch the same
// events from several places and publish each once.
type OOMEvent struct {
	Seq         uint64 `json:"seq"`
	ContainerID string `json:"id"`
}

// OOMWatcher is an optional part of the Agent service: an agent that
// implements it serves OOMEvents.
type OOMWatcher interface {
	// OOMEvents returns the OOM events numbered above after, oldest
	// first. With wait it blocks until there is one (or ctx ends, or the
	// agent's own bound passes: then it returns none).
	OOMEvents(ctx context.Context, after uint64, wait bool) ([]OOMEvent, error)
}

// Pod VMs (ADR 007): the sandbox container's VM exports one more share,
// the pod directory, mounted at PodGuestDir; each later container's
// rootfs and bind sources appear below it as <PodGuestDir>/<id>/<tag>.
const (
	PodShareTag = "msb-pod"
	PodGuestDir = "/run/msb/pod"
)

// The guest kernel's whole module tree (qemu backend): the image's
// modules dir is exported read-only under ModulesShareTag, and PID 1 in the
// guest mounts it at ModulesGuestDir right after the boot-time modules, so
// that the kernel's request_module finds every module (docs/guest-image.md,
// ADR 012). A VM without the share has the boot-time modules only.
const (
	ModulesShareTag = "msb-modules"
	ModulesGuestDir = "/lib/modules"
)

// Preparer is an optional part of the Agent service: an agent that
// implements it serves Prepare, which readies one more container in a
// running VM (a pod's later container).
type Preparer interface {
	// Prepare mounts what the boot env names for container id: each dir
	// and file mount is bound from PodGuestDir/<id>/<tag> to its guest
	// path, each tmpfs is mounted. Disks, the handoff init, hostname and
	// rlimits are refused or ignored: they are the VM's. The mounts are
	// removed when the container is deleted.
	Prepare(ctx context.Context, id string, env []string) error
}

// Clocker is an optional part of the Agent service: an agent that
// implements it serves SetClock, which steps the guest's wall clock to the
// host's. A guest starts from the RTC's whole seconds; a pool VM may have
// been parked for long (ADR 020).
type Clocker interface {
	SetClock(ctx context.Context, unixNano int64) error
}

// Templater is an optional part of the Agent service, for VMs started
// from a saved template (ADR 025). Detach ends the host's session once
// answered, so that the VM is saved with none in it (a restored guest
// then opens a new one with its new host); Reseed mixes seed into the
// guest's RNG and reseeds it, since every restored guest resumes with the
// template's RNG state.
type Templater interface {
	Detach(ctx context.Context) error
	Reseed(ctx context.Context, seed []byte) error
}

// reseedRequest is Reseed's request, JSON in a BytesValue.
type reseedRequest struct {
	Seed []byte `json:"seed"`
}

// clockRequest is SetClock's request, JSON in a BytesValue.
type clockRequest struct {
	UnixNano int64 `json:"unixNano"`
}

// prepareRequest is Prepare's request, JSON in a BytesValue.
type prepareRequest struct {
	ID  string   `json:"id"`
	Env []string `json:"env"`
}

// oomEventsRequest is OOMEvents' request, JSON in a BytesValue.
type oomEventsRequest struct {
	After uint64 `json:"after"`
	Wait  bool   `json:"wait,omitempty"`
}

// RegisterAgent registers a on a ttrpc server (with OOMEvents where a is
// an OOMWatcher, Prepare where it is a Preparer).
func RegisterAgent(s *ttrpc.Server, a Agent) {
	methods := agentMethods(a)
	if w, ok := a.(OOMWatcher); ok {
		methods["OOMEvents"] = jsonMethod("OOMEvents", func(ctx context.Context, r oomEventsRequest) (any, error) {
			evs, err := w.OOMEvents(ctx, r.After, r.Wait)
			if err != nil {
				return nil, err
			}
			b, err := json.Marshal(evs)
			if err != nil {
				return nil, err
			}
			return wrapperspb.Bytes(b), nil
		})
	}
	if p, ok := a.(Preparer); ok {
		methods["Prepare"] = jsonMethod("Prepare", func(ctx context.Context, r prepareRequest) (any, error) {
			return &emptypb.Empty{}, p.Prepare(ctx, r.ID, r.Env)
		})
	}
	if c, ok := a.(Clocker); ok {
		methods["SetClock"] = jsonMethod("SetClock", func(ctx context.Context, r clockRequest) (any, error) {
			return &emptypb.Empty{}, c.SetClock(ctx, r.UnixNano)
		})
	}
	if n, ok := a.(Networker); ok {
		methods["Network"] = jsonMethod("Network", func(ctx context.Context, r networkRequest) (any, error) {
			return &emptypb.Empty{}, n.Network(ctx, r.ID, r.NICs)
		})
	}
	if n, ok := a.(NetworkRemover); ok {
		methods["NetworkRemove"] = jsonMethod("NetworkRemove", func(ctx context.Context, r networkRequest) (any, error) {
			return &emptypb.Empty{}, n.NetworkRemove(ctx, r.ID, r.NICs)
		})
	}
	if t, ok := a.(Templater); ok {
		methods["Detach"] = jsonMethod("Detach", func(ctx context.Context, _ struct{}) (any, error) {
			return &emptypb.Empty{}, t.Detach(ctx)
		})
		methods["Reseed"] = jsonMethod("Reseed", func(ctx context.Context, r reseedRequest) (any, error) {
			return &emptypb.Empty{}, t.Reseed(ctx, r.Seed)
		})
	}
	s.RegisterService(AgentServiceName, &ttrpc.ServiceDesc{Methods: methods})
}

// jsonMethod is a ttrpc method whose request is R as JSON in a
// BytesValue.
func jsonMethod[R any](name string, call func(context.Context, R) (any, error)) ttrpc.Method {
	return func(ctx context.Context, un func(any) error) (any, error) {
		var req wrapperspb.BytesValue
		if err := un(&req); err != nil {
			return nil, err
		}
		var r R
		if err := json.Unmarshal(req.Value, &r); err != nil {
			return nil, fmt.Errorf("%s request: %w", name, err)
		}
		return call(ctx, r)
	}
}

func agentMethods(a Agent) map[string]ttrpc.Method {
	return map[string]ttrpc.Method{
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
	}
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

// Shutdown asks the guest to power off; the VMM exits with exitCode. The
// VMM stops the hypervisor as soon as the guest is ready to go, which may
// cut the answer off: a connection closed during the call is the
// shutdown's success, not its failure.
func (a *AgentClient) Shutdown(ctx context.Context, exitCode int32) error {
	err := a.c.Call(ctx, AgentServiceName, "Shutdown", wrapperspb.Int32(exitCode), &emptypb.Empty{})
	if errors.Is(err, ttrpc.ErrClosed) {
		return nil
	}
	return err
}

// WaitShutdown blocks until the guest is asked to power off.
func (a *AgentClient) WaitShutdown(ctx context.Context) (int32, error) {
	var resp wrapperspb.Int32Value
	err := a.c.Call(ctx, AgentServiceName, "WaitShutdown", &emptypb.Empty{}, &resp)
	return resp.Value, err
}

// OOMEvents fetches the guest's OOM events numbered above after (see
// OOMWatcher). An agent without it answers with codes.Unimplemented.
func (a *AgentClient) OOMEvents(ctx context.Context, after uint64, wait bool) ([]OOMEvent, error) {
	b, err := json.Marshal(oomEventsRequest{After: after, Wait: wait})
	if err != nil {
		return nil, err
	}
	var resp wrapperspb.BytesValue
	if err := a.c.Call(ctx, AgentServiceName, "OOMEvents", wrapperspb.Bytes(b), &resp); err != nil {
		return nil, err
	}
	var evs []OOMEvent
	if len(resp.Value) > 0 {
		if err := json.Unmarshal(resp.Value, &evs); err != nil {
			return nil, fmt.Errorf("OOMEvents response: %w", err)
		}
	}
	return evs, nil
}

// Prepare readies container id's mounts in a running VM (see Preparer).
// An agent without it answers with codes.Unimplemented.
func (a *AgentClient) Prepare(ctx context.Context, id string, env []string) error {
	b, err := json.Marshal(prepareRequest{ID: id, Env: env})
	if err != nil {
		return err
	}
	return a.c.Call(ctx, AgentServiceName, "Prepare", wrapperspb.Bytes(b), &emptypb.Empty{})
}

// Detach asks the agent to end this session once it has answered (see
// Templater).
func (a *AgentClient) Detach(ctx context.Context) error {
	return a.c.Call(ctx, AgentServiceName, "Detach", wrapperspb.Bytes([]byte("{}")), &emptypb.Empty{})
}

// Reseed mixes seed into the guest's RNG and reseeds it (see Templater).
func (a *AgentClient) Reseed(ctx context.Context, seed []byte) error {
	b, err := json.Marshal(reseedRequest{Seed: seed})
	if err != nil {
		return err
	}
	return a.c.Call(ctx, AgentServiceName, "Reseed", wrapperspb.Bytes(b), &emptypb.Empty{})
}

// SetClock steps the guest's clock to t when it is off (see Clocker). An
// agent without it (a guest image older than the call) keeps its clock:
// that is no error.
func (a *AgentClient) SetClock(ctx context.Context, t time.Time) error {
	b, err := json.Marshal(clockRequest{UnixNano: t.UnixNano()})
	if err != nil {
		return err
	}
	err = a.c.Call(ctx, AgentServiceName, "SetClock", wrapperspb.Bytes(b), &emptypb.Empty{})
	if status.Code(err) == codes.Unimplemented {
		return nil
	}
	return err
}
