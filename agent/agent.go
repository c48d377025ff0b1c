package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"

	"github.com/msb-dev/msb/agent/task"
	"github.com/msb-dev/msb/protocol"
)

// Channel kinds: how the guest talks to the host. The kind also decides how
// shared directories are mounted (9p over virtio for virtio-serial guests,
// i.e. QEMU; virtio-fs for vsock guests, i.e. libkrun).
const (
	ChannelVirtioSerial = "virtio-serial"
	ChannelVsock        = "vsock"
)

// Options configure an Agent. Zero values take the defaults.
type Options struct {
	// Options are the task service's: the OCI runtime, bundles, stdio.
	task.Options
	// Channel is ChannelVirtioSerial (default) or ChannelVsock.
	Channel string
	// Guest says the agent runs in a VM's guest, whose machine it owns:
	// Shutdown powers it off (and deletes nothing from the OCI runtime,
	// whose state goes with it), SetClock steps its clock.
	Guest bool
	// Handoff, when set, asks the init supervisor to hand PID 1 to the user
	// init of the boot env. Without it a boot env with MSB_HANDOFF_INIT is
	// refused.
	Handoff func(HandoffRequest) error
}

// Agent serves the agent protocol over one channel connection at a time
// (Serve may be called again after the channel was lost; the task
// service's containers survive): the task service, and the msb Agent
// service (boot, status, clock, shutdown).
type Agent struct {
	opts  Options
	srv   *ttrpc.Server
	lis   *chanListener
	tasks *task.Service

	bootMu  sync.Mutex
	booted  bool
	mounted []string // boot mounts, in mount order

	shutdownOnce sync.Once
	shutdownCh   chan struct{}
	shutdownCode int32

	closeOnce sync.Once

	detachState // template.go
}

// New creates an agent: it starts the task service (whose reaper reaps
// this process's children from now on) and the ttrpc server.
func New(opts Options) (*Agent, error) {
	if opts.Channel == "" {
		opts.Channel = ChannelVirtioSerial
	}
	tasks, err := task.New(opts.Options)
	if err != nil {
		return nil, err
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		tasks.Close()
		return nil, err
	}
	a := &Agent{
		opts:       opts,
		srv:        srv,
		lis:        newChanListener(),
		tasks:      tasks,
		shutdownCh: make(chan struct{}),
	}
	a.detach = make(chan struct{}, 1)
	tasks.Register(srv)
	protocol.RegisterAgent(srv, &agentService{a: a})
	go func() {
		if err := srv.Serve(context.Background(), a.lis); err != nil && !errors.Is(err, ttrpc.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			log.L.WithError(err).Error("ttrpc server stopped")
		}
	}()
	return a, nil
}

// Serve runs a yamux server on conn and dispatches its streams until the
// session ends (conn closed or broken) or ctx is done. It does not close
// conn's containers: a later Serve on a new connection finds them.
func (a *Agent) Serve(ctx context.Context, conn net.Conn) error {
	sess, err := yamux.Server(conn, protocol.MuxConfig())
	if err != nil {
		return fmt.Errorf("agent channel: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	defer sess.Close()
	ended := make(chan struct{})
	defer close(ended)
	go a.endOnDetach(sess, ended)
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			// The session ends when the host goes away (EOF, broken
			// pipe) or ctx is done: the normal end of a channel.
			if ctx.Err() != nil || sess.IsClosed() || errors.Is(err, io.EOF) {
				log.L.WithError(err).Debug("agent channel closed")
				return nil
			}
			return fmt.Errorf("agent channel: %w", err)
		}
		go a.dispatch(st)
	}
}

// headerTimeout bounds how long a new stream may take to name itself.
const headerTimeout = 30 * time.Second

func (a *Agent) dispatch(st *yamux.Stream) {
	_ = st.SetReadDeadline(time.Now().Add(headerTimeout))
	kind, arg, err := protocol.ReadHeader(st)
	_ = st.SetReadDeadline(time.Time{})
	if err != nil {
		log.L.WithError(err).Warn("stream without a valid header: closing it")
		st.Close()
		return
	}
	switch kind {
	case protocol.KindTTRPC:
		a.lis.push(st)
	case protocol.KindStdio:
		if arg == "" {
			log.L.Warn("stdio stream without a token: closing it")
			st.Close()
			return
		}
		a.tasks.AddStdio(arg, st)
	case protocol.KindPort:
		a.tasks.ForwardPort(st, arg)
	default:
		log.L.Warnf("stream of unknown kind %q: closing it", kind)
		st.Close()
	}
}

// Close stops serving. Containers keep running (use Shutdown or
// KillAll to stop them).
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		a.lis.Close()
		a.srv.Close()
		a.tasks.Close()
	})
	return nil
}

// Serve runs a fresh agent over conn until the session ends or ctx is done,
// then kills and deletes the containers it created. It is how the agent runs
// outside a VM (tests, development): no early init, no module loading.
func Serve(ctx context.Context, conn net.Conn, opts Options) error {
	a, err := New(opts)
	if err != nil {
		return err
	}
	defer a.Close()
	defer a.KillAll()
	return a.Serve(ctx, conn)
}

// KillAll kills and deletes every container (end of Serve).
func (a *Agent) KillAll() { a.tasks.KillAll() }
