// Package task is the guest's task service: containerd's task API v3 served
// by the agent, backed by the OCI runtime in the guest (runc or crun). It
// owns the guest's containers and their processes: create, start, exec,
// kill, delete, exits (the reaper), stdio streams and pipes, terminals,
// cgroup stats and OOM events, a pod member's Prepare mounts, its network
// (Network) and port forwarding.
//
// It knows nothing of the channel or of PID 1: the agent (package agent)
// registers it on its ttrpc server and hands it the stdio and port streams
// that arrive on the channel.
package task

import (
	"net"
	"os"
	"sync"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// Defaults of Options.
const (
	DefaultRuntimePath    = "/sbin/runc"
	DefaultRuntimeRoot    = "/run/runc"
	DefaultBundleRoot     = "/run/msb/bundles"
	DefaultStdioWait      = 10 * time.Second
	DefaultIODrainTimeout = 5 * time.Second
)

// Version is reported by the task API's Connect.
var Version = "dev"

// Options configure a Service. Zero values take the defaults.
type Options struct {
	// RuntimePath is the OCI runtime binary, runc or crun (DefaultRuntimePath;
	// in the guest what RuntimeFile names).
	RuntimePath string
	// RuntimeRoot is the OCI runtime's --root (DefaultRuntimeRoot).
	RuntimeRoot string
	// BundleRoot holds one bundle directory per container (DefaultBundleRoot).
	BundleRoot string
	// NoPivot runs runc create with --no-pivot (needed when the agent's
	// root is the initramfs itself and could not be switched).
	NoPivot bool
	// StdioWait bounds how long a task request waits for a stdio stream it
	// names (DefaultStdioWait).
	StdioWait time.Duration
	// IODrainTimeout is how long after a process exited its output pipes
	// may stay silent without EOF before the agent stops waiting for them
	// (DefaultIODrainTimeout). It never cuts output that is still flowing.
	IODrainTimeout time.Duration
}

func (o *Options) setDefaults() {
	if o.RuntimePath == "" {
		o.RuntimePath = DefaultRuntimePath
	}
	if o.RuntimeRoot == "" {
		o.RuntimeRoot = DefaultRuntimeRoot
	}
	if o.BundleRoot == "" {
		o.BundleRoot = DefaultBundleRoot
	}
	if o.StdioWait <= 0 {
		o.StdioWait = DefaultStdioWait
	}
	if o.IODrainTimeout <= 0 {
		o.IODrainTimeout = DefaultIODrainTimeout
	}
}

// Service holds the guest's containers. They outlive the channel: the
// agent serves them again on a new connection.
type Service struct {
	opts  Options
	stdio *stdioRegistry
	exits *exitTracker
	ooms  *oomLog // also guards container.oomKills

	mu         sync.Mutex
	containers map[string]*container
	reserved   map[string]bool

	prepMu sync.Mutex
	// prepared are the mounts Prepare made, by container, in mount order.
	prepared map[string][]string
	// podTmpfs are the pod tmpfs Prepare mounted (by guest path), kept
	// until the VM ends: every container naming one shares it (ADR 032).
	podTmpfs map[string]bool

	closeOnce sync.Once
}

// New creates the task service: it starts the reaper (this process reaps
// its children from now on).
func New(opts Options) (*Service, error) {
	opts.setDefaults()
	for _, d := range []string{opts.RuntimeRoot, opts.BundleRoot} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, err
		}
	}
	return &Service{
		opts:       opts,
		stdio:      newStdioRegistry(time.Minute),
		exits:      newExitTracker(),
		ooms:       newOOMLog(),
		containers: map[string]*container{},
		reserved:   map[string]bool{},
	}, nil
}

// Register serves containerd's task API v3 on srv.
func (s *Service) Register(srv *ttrpc.Server) {
	task.RegisterTTRPCTaskService(srv, &taskService{svc: s})
}

// AddStdio hands over a stream that arrived with header "stdio <token>",
// for the task request that names token (either may come first).
func (s *Service) AddStdio(token string, c net.Conn) { s.stdio.register(token, c) }

// Shutdown stops every container, syncs and removes every container's
// Prepare mounts. powerOff: the machine goes right after (destroy).
func (s *Service) Shutdown(powerOff bool) {
	s.killAll(powerOff)
	unix.Sync()
	s.unprepareAll()
}

// Close closes unclaimed stdio streams and stops following exits.
// Containers keep running (use Shutdown or KillAll to stop them).
func (s *Service) Close() {
	s.closeOnce.Do(func() {
		s.stdio.closeAll()
		s.exits.close()
	})
}
