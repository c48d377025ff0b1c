package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/version"
	"github.com/msb-dev/msb/vmm"
)

// RuntimeName is the containerd runtime type msb's shim serves.
const RuntimeName = "io.containerd.msb.v2"

// groupLabels are the annotations that put containers into one shim, in
// order of precedence: msb's own group, then the Kubernetes pod.
var groupLabels = []string{
	"io.containerd.msb.v2.group",
	"io.kubernetes.cri.sandbox-id",
}

// New returns the shim manager: containerd runs it as
// `containerd-shim-msb-v2 start` (start or reuse the group's shim),
// `delete` (clean up after a dead shim) and `-info`.
func New(name string) cshim.Shim { return manager{name: name} }

type manager struct{ name string }

func (m manager) Name() string { return m.name }

// Start starts the long-running shim for the container's group, or
// returns the address of the one already serving it.
func (m manager) Start(ctx context.Context, opts *bootapi.BootstrapParams) (_ *bootapi.BootstrapResult, retErr error) {
	result := &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc"}
	id := opts.GetInstanceID()
	debug := opts.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG
	grouping, err := groupOf(id)
	if err != nil {
		return nil, err
	}
	socketDir := opts.GetSocketDir()
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	sock, err := newShimSocket(ctx, socketDir, opts.GetContainerdGrpcAddress(), grouping, false)
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			// The group's shim runs: it takes this container too.
			result.Address = sock.addr
			return result, nil
		}
		return nil, err
	}
	sockets := []*shimSocket{sock}
	defer func() {
		if retErr != nil {
			for _, s := range sockets {
				s.Close()
			}
		}
	}()
	cmd, err := newCommand(ctx, id, opts.GetContainerdGrpcAddress(), debug)
	if err != nil {
		return nil, err
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, sock.f)
	if debug {
		dsock, err := newShimSocket(ctx, socketDir, opts.GetContainerdGrpcAddress(), grouping, true)
		if err != nil {
			return nil, err
		}
		sockets = append(sockets, dsock)
		cmd.ExtraFiles = append(cmd.ExtraFiles, dsock.f)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	go func() { _ = cmd.Wait() }()
	if err := joinShimCgroup(opts, cmd.Process.Pid); err != nil {
		return nil, err
	}
	if err := cshim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		return nil, fmt.Errorf("adjust OOM score of the shim: %w", err)
	}
	result.Address = sock.addr
	return result, nil
}

// Stop is `containerd-shim-msb-v2 delete`: containerd runs it when the
// shim of a container is gone, to clean up what it left.
func (m manager) Stop(ctx context.Context, id string) (cshim.StopStatus, error) {
	bundle := ""
	if o, ok := ctx.Value(cshim.OptsKey{}).(cshim.Opts); ok {
		bundle = o.BundlePath
	}
	if bundle == "" {
		cwd, err := os.Getwd()
		if err != nil {
			return cshim.StopStatus{}, err
		}
		bundle = filepath.Join(filepath.Dir(cwd), id)
	}
	st, err := cleanupBundle(ctx, bundle)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("cleanup of %s incomplete", id)
	}
	return st, nil
}

// Info describes the runtime; features come from `msb-runtime features`.
func (m manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	info := &types.RuntimeInfo{
		Name:    m.name,
		Version: &types.RuntimeVersion{Version: version.Version},
	}
	bin, err := VMMBinary()
	if err != nil {
		return info, nil
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "features")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		log.G(ctx).WithError(err).Debugf("%s features: %s", bin, stderr.String())
		return info, nil
	}
	var feat features.Features
	if err := json.Unmarshal(out, &feat); err != nil {
		log.G(ctx).WithError(err).Debug("msb-runtime features: bad JSON")
		return info, nil
	}
	if info.Features, err = typeurl.MarshalAnyToProto(&feat); err != nil {
		return nil, err
	}
	return info, nil
}

// groupOf returns the group of the container id whose bundle is the
// current directory (the start command runs in it): the group its
// annotations name; else, when its spec names the namespaces of another
// running msb container of this containerd namespace (Docker's and
// nerdctl's container: modes), that container's group, whose shim makes
// it a member of its VM (ADR 030); else its own.
func groupOf(id string) (string, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return "", err
	}
	spec, err := readSpec(bundle)
	if err != nil {
		return "", err
	}
	if g := labelGroup(spec); g != "" {
		return g, nil
	}
	owner, err := joinedBundle(spec, bundle)
	if err != nil || owner == "" {
		return id, err
	}
	ospec, err := readSpec(owner)
	if err != nil {
		return "", fmt.Errorf("container %s, whose namespaces the spec joins: %w", filepath.Base(owner), err)
	}
	if g := labelGroup(ospec); g != "" {
		return g, nil
	}
	return filepath.Base(owner), nil
}

// labelGroup is the group spec's annotations name, or "".
func labelGroup(spec *specs.Spec) string {
	for _, l := range groupLabels {
		if g := spec.Annotations[l]; g != "" {
			return g
		}
	}
	return ""
}

// joinedBundle returns the bundle of the running msb container whose
// namespaces spec names (launch.FindJoin), "" when none: candidates are
// the containers beside bundle (containerd keeps a namespace's bundles in
// one directory) whose shim record names a task pid that still runs.
// Only containerd's bundles and the shims' records are read, never
// anything a guest can write.
func joinedBundle(spec *specs.Spec, bundle string) (string, error) {
	if !launch.NamesNamespaces(spec) {
		return "", nil
	}
	dir := filepath.Dir(bundle)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var cands []launch.JoinCandidate
	for _, e := range entries {
		b := filepath.Join(dir, e.Name())
		if !e.IsDir() || b == bundle {
			continue
		}
		rec, err := readRecord(b)
		if err != nil || rec == nil {
			continue
		}
		if pid, start := rec.taskPid(); vmm.Alive(pid, start) {
			cands = append(cands, launch.JoinCandidate{ID: e.Name(), VM: e.Name(), Pid: pid})
		}
	}
	id, _, err := launch.FindJoin(spec, cands)
	if id == "" || err != nil {
		return "", err
	}
	return filepath.Join(dir, id), nil
}

// readSpec reads the OCI spec of bundle.
func readSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(bundle, "config.json"), err)
	}
	return &spec, nil
}

func newCommand(ctx context.Context, id, containerdAddress string, debug bool) (*exec.Cmd, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", containerdAddress}
	if debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "OTEL_SERVICE_NAME=containerd-shim-"+id)
	// Its own process group: signals to containerd's group do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

type shimSocket struct {
	addr string
	s    *net.UnixListener
	f    *os.File
}

func (s *shimSocket) Close() {
	if s.s != nil {
		s.s.Close()
	}
	if s.f != nil {
		s.f.Close()
	}
	_ = cshim.RemoveSocket(s.addr)
}

// newShimSocket makes the group's socket; errdefs.ErrAlreadyExists (with
// the address) means a live shim already serves the group.
func newShimSocket(ctx context.Context, root, path, id string, debug bool) (*shimSocket, error) {
	address, err := cshim.CreateSocketAddress(ctx, root, path, id, debug)
	if err != nil {
		return nil, err
	}
	socket, err := cshim.NewSocket(address)
	if err != nil {
		if !cshim.SocketEaddrinuse(err) {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
		if !debug && cshim.CanConnect(address) {
			return &shimSocket{addr: address}, errdefs.ErrAlreadyExists
		}
		if err := cshim.RemoveSocket(address); err != nil {
			return nil, fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = cshim.NewSocket(address); err != nil {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
	}
	s := &shimSocket{addr: address, s: socket}
	f, err := socket.File()
	if err != nil {
		s.Close()
		return nil, err
	}
	s.f = f
	return s, nil
}
