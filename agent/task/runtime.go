package task

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// RuntimeFile names the guest's OCI runtime binary, one path on a line: the
// image build writes it (guest.GuestRuntimeFile) with the runtime it put in
// (/sbin/runc or /sbin/crun).
const RuntimeFile = "/etc/msb/oci-runtime"

// RuntimeFromImage returns the OCI runtime binary file names, or
// DefaultRuntimePath when the image has no such file (one built before the
// runtime was a choice).
func RuntimeFromImage(file string) (string, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return DefaultRuntimePath, nil
	}
	if err != nil {
		return "", err
	}
	p := strings.TrimSpace(string(b))
	if !filepath.IsAbs(p) || strings.ContainsAny(p, "\n") {
		return "", fmt.Errorf("%s: %q is not an absolute path of an OCI runtime binary; rebuild the guest image", file, p)
	}
	return p, nil
}

// runtimeName is the OCI runtime's name for messages and quirks ("runc",
// "crun").
func (s *Service) runtimeName() string { return filepath.Base(s.opts.RuntimePath) }

// crunSpecVersion is the ociVersion a bundle gets for crun: crun 1.8
// (Debian 12) refuses any config.json whose ociVersion is not 1.0.x
// ("unknown version specified"), while the shim's specs say 1.2 or 1.3
// (the runtime-spec Go module's version). crun's parser reads every field it
// knows whatever the version says, so only the string changes.
const crunSpecVersion = "1.0.2"

// runtimeSpec adapts spec to what the runtime can run and reports whether
// it changed it. For crun 1.8: an ociVersion it accepts (crunSpecVersion),
// and no time namespace without offsets: crun 1.8's child dies making one
// ("write to sync socket: Connection reset by peer"; Docker 29 asks for
// one in every container), and one without offsets shows the container
// nothing but its own /proc/self/ns/time (the clocks are the VM's either
// way). A time namespace with offsets is refused, naming the fix.
func (s *Service) runtimeSpec(spec *specs.Spec) (bool, error) {
	if s.runtimeName() != "crun" {
		return false, nil
	}
	changed := false
	if !strings.HasPrefix(spec.Version, "1.0.") {
		spec.Version = crunSpecVersion
		changed = true
	}
	if l := spec.Linux; l != nil {
		for i, ns := range l.Namespaces {
			if ns.Type != specs.TimeNamespace {
				continue
			}
			if len(l.TimeOffsets) > 0 {
				return false, fmt.Errorf("linux.timeOffsets: the guest's crun 1.8 cannot make a time namespace; build the guest image with MSB_GUEST_RUNTIME=runc (install.sh) to run containers with clock offsets: %w", errdefs.ErrNotImplemented)
			}
			l.Namespaces = append(l.Namespaces[:i:i], l.Namespaces[i+1:]...)
			changed = true
			break
		}
	}
	return changed, nil
}

// OOMExecEnv, when set ("<oom_score_adj> <runtime binary>"), makes the
// agent binary a launcher of the OCI runtime: OOMExec.
const OOMExecEnv = "MSB_OOM_EXEC"

// OOMExec is main for the agent binary started with OOMExecEnv: it sets
// its own oom_score_adj and becomes the runtime, with args. The agent runs
// crun exec through it, because a process crun 1.8 execs keeps crun's
// score (crun applies process.oomScoreAdj at create only, and only when
// not 0), which is the agent's -1000: a container's exec would be the OOM
// killer's last choice, and a memory-limited container whose processes
// none may be killed livelocks in reclaim. runc sets the score itself.
func OOMExec(args []string) int {
	score, runtime, ok := strings.Cut(os.Getenv(OOMExecEnv), " ")
	if !ok || !filepath.IsAbs(runtime) {
		fmt.Fprintf(os.Stderr, "msb-agent: %s=%q: want \"<oom_score_adj> <runtime path>\"\n", OOMExecEnv, os.Getenv(OOMExecEnv))
		return 2
	}
	os.Unsetenv(OOMExecEnv)
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(score), 0); err != nil {
		fmt.Fprintf(os.Stderr, "msb-agent: oom_score_adj %s for %s: %v\n", score, runtime, err)
		return 1
	}
	err := unix.Exec(runtime, append([]string{runtime}, args...), os.Environ())
	fmt.Fprintf(os.Stderr, "msb-agent: exec %s: %v\n", runtime, err)
	return 1
}

// oomScore is the oom_score_adj of c's processes: the spec's, as runc
// applies it to init and exec processes (guestDefaults made it 0 when
// the spec had none).
func oomScore(c *container) int {
	if c.spec != nil && c.spec.Process != nil && c.spec.Process.OOMScoreAdj != nil {
		return *c.spec.Process.OOMScoreAdj
	}
	return 0
}

// execRuntime returns the client and context for an exec in c: for crun,
// the runtime goes through OOMExec so the process gets c's OOM score.
func (s *Service) execRuntime(c *container) (*runc.Runc, context.Context) {
	rc := s.runc(c.bundle)
	ctx := context.Background()
	if s.runtimeName() != "crun" {
		return rc, ctx
	}
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	ctx = runc.WithExtraEnv(ctx, fmt.Sprintf("%s=%d %s", OOMExecEnv, oomScore(c), rc.Command))
	rc.Command = self
	return rc, ctx
}

// setInitOOMScore gives a created container's init process (blocked until
// start, so it has no children yet) its OOM score: crun 1.8 writes
// process.oomScoreAdj only when it is not 0, and init would keep the
// agent's -1000 (see OOMExec).
func (s *Service) setInitOOMScore(c *container) error {
	if s.runtimeName() != "crun" {
		return nil
	}
	score := oomScore(c)
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", c.init.pid), []byte(strconv.Itoa(score)), 0); err != nil {
		return fmt.Errorf("create %q: oom_score_adj %d of init (pid %d): %w", c.id, score, c.init.pid, err)
	}
	return nil
}
