package ociruntime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// Options configure the runtime CLI.
type Options struct {
	// Root is the state root (runc's --root), default /run/msb.
	Root   string
	Config config.Config
	// Self is the msb-runtime binary that serves as the VMM process.
	Self string
	// Log and LogFormat are the global --log and --log-format, passed on
	// to the processes msb-runtime leaves behind (exec relays).
	Log, LogFormat string
}

// socketBase holds msb-runtime's VM sockets, whatever --root is: a
// caller's root can be long (containerd's runc shim passes
// /run/containerd/runc/<namespace>, and a namespace has up to 76 bytes), a
// socket path cannot (vmm.AgentSocketPath), as containerd keeps its shims'
// sockets in /run/containerd/s whatever its state dir is.
const socketBase = "/run/msb/sock"

// SocketDir is where the VM sockets of the containers of state root root
// live: socketBase/<first 16 hex of sha256(root)>, one dir per root, so
// two roots' containers of one id never share a socket.
func SocketDir(root string) string {
	sum := sha256.Sum256([]byte(root))
	return filepath.Join(socketBase, hex.EncodeToString(sum[:8]))
}

// launchVM is a container's VM being launched: state dir made, files
// staged, disks locked; the VMM once spawned.
// destroy undoes all of it.
type launchVM struct {
	id       string
	bundle   string
	spec     *specs.Spec // as the bundle has it: its hooks run on the host
	stateDir string
	prep     *launch.Prepared // launch config and the guest spec
	net      *launch.Net      // once the VMM runs
}

// bundleSpec is a bundle as create reads it.
type bundleSpec struct {
	dir    string // absolute
	spec   *specs.Spec
	rootfs string // resolved
}

// readBundle loads the bundle's spec and resolves its rootfs.
func readBundle(bundle string) (bundleSpec, error) {
	bundle, err := filepath.Abs(bundle)
	if err != nil {
		return bundleSpec{}, fmt.Errorf("bundle: %w", err)
	}
	spec, err := launch.LoadSpec(bundle)
	if err != nil {
		return bundleSpec{}, err
	}
	rootfs, err := rootfsPath(bundle, spec)
	if err != nil {
		return bundleSpec{}, err
	}
	return bundleSpec{dir: bundle, spec: spec, rootfs: rootfs}, nil
}

// makeStateDir makes container id's state dir under o.Root; it fails
// when the id is taken.
func makeStateDir(o Options, id string) (string, error) {
	stateDir := vmm.StateDirPath(o.Root, id)
	if err := os.MkdirAll(filepath.Dir(stateDir), 0o711); err != nil {
		return "", fmt.Errorf("state root: %w", err)
	}
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("container %q already exists (state in %s): pick another id or delete it", id, stateDir)
		}
		return "", fmt.Errorf("state dir: %w", err)
	}
	return stateDir, nil
}

// prepare turns a bundle into a launch config and reserves what it needs.
// With pod, the VM can take members (ADR 024): it exports a pod share,
// an empty directory until one joins. On error nothing it made is left
// behind.
func prepare(o Options, b bundleSpec, id string, pod bool) (_ *launchVM, retErr error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	sock, err := vmm.AgentSocketPath(SocketDir(o.Root), id)
	if err != nil {
		return nil, err
	}
	stateDir, err := makeStateDir(o, id)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			if err := mounts.RemoveAllUnmounted(stateDir); err != nil {
				log.L.WithError(err).Warn("remove the state dir")
			}
		}
	}()
	r := launch.Request{
		ID: id, Spec: b.spec, Bundle: b.dir, Rootfs: b.rootfs,
		StateDir: stateDir, AgentSocket: sock, Config: o.Config,
	}
	if pod {
		r.PodDir = podDir(o.Root, id)
	}
	p, err := launch.Prepare(r)
	if err != nil {
		return nil, err
	}
	return &launchVM{id: id, bundle: b.dir, spec: b.spec, stateDir: stateDir, prep: p}, nil
}

// destroy unwires the network, releases the staged files and disks, and
// removes the host cgroup, the state dir and the sockets (what a VMM
// that was killed leaves).
func (s *launchVM) destroy() {
	if err := s.net.Close(); err != nil {
		log.L.WithError(err).Warn("unwire network")
	}
	if err := s.prep.Release(); err != nil {
		log.L.WithError(err).Warn("release the VM's disks and files")
	}
	rec := launch.VMRecord{StateDir: s.stateDir, AgentSocket: s.prep.Launch.AgentSocket}
	if s.prep.Launch.Host != nil {
		rec.Cgroup = s.prep.Launch.Host.Cgroup
	}
	if err := rec.Remove(); err != nil {
		log.L.WithError(err).Warn("remove the VM's state")
	}
}

// callContext bounds the calls that create a container in its VM once
// its agent answers (stdio, Create): as long as a boot may take.
func (s *launchVM) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, time.Duration(s.prep.Launch.BootTimeout)+10*time.Second)
}

// createTask creates container id in the guest from guestSpec with the
// stdio streams named by tokens.
func createTask(ctx context.Context, tc task.TTRPCTaskService, id string, guestSpec *specs.Spec, tokens [3]string, terminal bool) error {
	spec, err := json.Marshal(guestSpec)
	if err != nil {
		return err
	}
	if _, err := tc.Create(ctx, &task.CreateTaskRequest{
		ID:       id,
		Bundle:   "/run/msb/bundles/" + id,
		Terminal: terminal,
		Stdin:    protocol.StreamURI(tokens[0]),
		Stdout:   protocol.StreamURI(tokens[1]),
		Stderr:   protocol.StreamURI(tokens[2]),
		Options:  &anypb.Any{TypeUrl: protocol.GuestSpecTypeURL, Value: spec},
	}); err != nil {
		return fmt.Errorf("create container in the guest: %w", err)
	}
	return nil
}

// abandon ends a VMM whose launch failed (vmm.Handle.Stop: it sees its
// creator go and shuts the guest down, or is killed). The returned error
// is err with the logs' last lines, which the state dir's removal would
// lose.
func (s *launchVM) abandon(h *vmm.Handle, err error) error {
	if serr := h.Stop(nil); serr != nil {
		log.L.WithError(serr).Warn("abandon the VM")
	}
	_, _ = h.Wait()
	return fmt.Errorf("%w%s%s", err, launch.LogTail(s.prep.VMMLog()), launch.LogTail(s.prep.Launch.ConsoleLog))
}
