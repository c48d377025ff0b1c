package ociruntime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/network"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/vmm"
)

// recordFile is a created container's record in its state dir: what
// runc keeps in its state.json, read by every later command.
const recordFile = "container.json"

// record is what `create` leaves for the commands that follow it.
type record struct {
	ID      string    `json:"id"`
	Bundle  string    `json:"bundle"`
	Rootfs  string    `json:"rootfs"`
	Created time.Time `json:"created"`
	// Spec keeps what later commands need of the bundle's spec, which may
	// be gone by then: the hooks and the annotations.
	Spec specs.Spec `json:"spec"`
	// VMRecord is the container's VM: Pid, the VMM process, is the
	// container's pid. A pod member's (Owner) names its relay process as
	// Pid and its owner's VM's AgentSocket; its VM is the owner's to stop
	// and remove.
	launch.VMRecord
	NetNS   string        `json:"netns,omitempty"`
	NICs    []network.NIC `json:"nics,omitempty"`
	Started bool          `json:"started,omitempty"`
	// VM is its VM's size, which update checks against (zero in a record
	// from before it was kept: not checked).
	VM specconv.VMSize `json:"vm"`
	// MemoryLimit is the container's memory limit in bytes as created or
	// last updated (0: none, -1: none since an update): update moves its
	// VM's memory by the change (ADR 031).
	MemoryLimit int64 `json:"memoryLimit,omitempty"`
	// Pod: its VM exports a pod share (podDir) that other containers'
	// rootfs and volumes join it through (ADR 024).
	Pod bool `json:"pod,omitempty"`
	// Owner is the container whose VM this one joined (a pod member,
	// ADR 024), "" for a VM of its own; then Pid is the member's pid
	// process and AgentSocket the owner's. Tags are the member's shares
	// below the owner's pod dir.
	Owner string   `json:"owner,omitempty"`
	Tags  []string `json:"tags,omitempty"`
}

// podDir is the pod share of container id's VM on the host.
func podDir(root, id string) string { return filepath.Join(vmm.StateDirPath(root, id), "containers") }

// container is a created container as a command finds it under --root.
type container struct {
	rec record
	dir string // its state dir
}

// errNotExist is runc's wording: callers (containerd's runc shim, Podman)
// match "does not exist".
func errNotExist(id string) error { return fmt.Errorf("container %q does not exist", id) }

// load finds container id under o.Root.
func load(o Options, id string) (*container, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	dir := vmm.StateDirPath(o.Root, id)
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNotExist(id)
	}
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", id, err)
	}
	c := &container{dir: dir}
	if err := json.Unmarshal(b, &c.rec); err != nil {
		return nil, fmt.Errorf("container %q: state %s: %w", id, filepath.Join(dir, recordFile), err)
	}
	return c, nil
}

// save writes the record atomically.
func (c *container) save() error {
	b, err := json.Marshal(c.rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.dir, "."+recordFile)
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write container state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(c.dir, recordFile))
}

// vmmAlive says whether the container's pid process (its VMM, a
// member's relay) still runs.
func (c *container) vmmAlive() bool { return c.rec.Alive() }

// agentConn is a connection to the container's guest agent.
type agentConn struct {
	client *ttrpc.Client
	task   taskapi
	agent  *protocol.AgentClient
}

type taskapi = task.TTRPCTaskService

func (a *agentConn) Close() { a.client.Close() }

// dial connects to the guest agent; the VM must be running.
func (c *container) dial(ctx context.Context) (*agentConn, error) {
	if !c.vmmAlive() {
		return nil, fmt.Errorf("container %q is not running: %w", c.rec.ID, errStopped)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cl, err := vmm.DialTTRPC(dctx, c.rec.AgentSocket)
	if err != nil {
		return nil, err
	}
	return &agentConn{client: cl, task: task.NewTTRPCTaskClient(cl), agent: protocol.NewAgentClient(cl)}, nil
}

// errStopped carries runc's wording, which containerd's runc shim matches
// ("container not running").
var errStopped = errors.New("container not running")

// Statuses as runc reports them.
const (
	statusCreated = "created"
	statusRunning = "running"
	statusPaused  = "paused"
	statusStopped = "stopped"
)

// status asks the guest; a container whose VMM is gone has stopped.
func (c *container) status(ctx context.Context) string {
	if !c.vmmAlive() {
		return statusStopped
	}
	a, err := c.dial(ctx)
	if err != nil {
		return statusStopped
	}
	defer a.Close()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := a.task.State(sctx, &task.StateRequest{ID: c.rec.ID})
	if err != nil {
		if c.vmmAlive() {
			log.G(ctx).WithError(err).Warnf("state of %q in the guest", c.rec.ID)
		}
		return statusStopped
	}
	switch st.Status {
	case tasktypes.Status_CREATED:
		return statusCreated
	case tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
		return statusPaused
	case tasktypes.Status_STOPPED:
		return statusStopped
	}
	return statusRunning
}

// ociState is `state`'s output: the runtime-spec state plus runc's
// rootfs, created and owner.
type ociState struct {
	Version     string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Pid         int               `json:"pid"`
	Status      string            `json:"status"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Owner       string            `json:"owner"`
}

func (c *container) state(ctx context.Context) ociState {
	st := ociState{Version: specs.Version, ID: c.rec.ID, Status: c.status(ctx), Bundle: c.rec.Bundle,
		Rootfs: c.rec.Rootfs, Created: c.rec.Created, Annotations: c.rec.Spec.Annotations}
	if st.Status != statusStopped {
		st.Pid = c.rec.Pid
	}
	return st
}

// remove undoes what create left once the VM is gone: the network
// wiring, the host cgroup (the VMM undoes both itself unless it was
// killed), staged binds, sockets and the state dir.
func (c *container) remove(ctx context.Context) error {
	if wires, err := network.LoadWires(c.dir); err == nil && len(wires) > 0 && c.rec.NetNS != "" {
		if ns, err := network.OpenNS(c.rec.NetNS); err == nil {
			if err := network.Detach(ns, wires); err != nil {
				log.G(ctx).WithError(err).Debug("unwire network (already undone by the VMM?)")
			}
			ns.Close()
		}
	}
	vr := c.rec.VMRecord
	vr.StateDir = c.dir
	if err := vr.Remove(); err != nil {
		return fmt.Errorf("remove state of %q: %w", c.rec.ID, err)
	}
	return nil
}
