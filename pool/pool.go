// Package pool keeps booted VMs ready for containers to claim at Create
// (warm start, ADR 020). A pool VM is an ordinary VMM process of the
// default size, booted as a pod VM with nothing in it yet and parked: it
// waits on its lifeline socket for the creator that claims it. There is
// no daemon: Fill boots what is missing and exits, Claim takes one entry
// (removing its ready file is the claim, so two claimers never get the
// same VM), Drain stops them all.
//
// Layout under Root, per config (Fingerprint): <fp>/vms/<id>/ (each VM's
// state dir), <fp>/sock/ (their relay sockets), <fp>/ready/<id>.json (one
// entry per parked VM), <fp>/lock (serialises Fill and Drain). Runtime
// handlers with different configs keep apart pools.
package pool

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/template"
	"github.com/msb-dev/msb/vmm"
)

// ParkedNice is the scheduling priority pool VMs boot and idle at: a
// refill runs while the container that claimed a VM starts, and should
// not slow it down. A claimed VM goes back to 0 (vmm.Adopt).
const ParkedNice = 10

// Pool is the pool under Root.
type Pool struct {
	Root string
	// Binary is msb-runtime, whose vmm command is the VMM process: Fill
	// boots VMs with it, and it is part of their fingerprint.
	Binary string
	// Logf, when set, reports progress.
	Logf func(format string, args ...any)
}

// Entry is one parked VM.
type Entry struct {
	ID string `json:"id"`
	// VMRecord names its VMM process and what its removal needs.
	launch.VMRecord
	Launch *vmm.LaunchConfig `json:"launch"`
}

// podDirName is a pool VM's pod share below its state dir.
const podDirName = "containers"

// PodDir is the VM's pod share on the host, where a claimer binds the
// container's rootfs and volumes.
func (e *Entry) PodDir() string { return filepath.Join(e.Launch.RuntimeDir, podDirName) }

// Fingerprint identifies what a VM is booted with: the config, and the
// guest image's files, the VMM binary and qemu as they are on disk (path,
// size, modification time), so a VM parked or a template saved before an
// upgrade or an image rebuild is never used. A claimer takes only VMs of
// its own.
func Fingerprint(c config.Config, binary string) string {
	c.PoolSize = 0
	files := []string{c.Kernel, c.Initrd, c.GuestRoot, binary}
	// A template's saved device state is qemu's: a new qemu gets a new one.
	if q, err := exec.LookPath(c.QEMU); err == nil {
		files = append(files, q)
	}
	if c.Kernel != "" {
		files = append(files, filepath.Join(filepath.Dir(c.Kernel), launch.RootDiskFile))
	}
	type ident struct {
		Path  string
		Size  int64
		MTime int64
	}
	ids := []ident{}
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			ids = append(ids, ident{f, st.Size(), st.ModTime().UnixNano()})
		}
	}
	// The config in the TOML the shim hands pool fill (on stdin), which
	// holds a value one way only (an empty list and none alike), so the
	// shim and its fill name one bucket.
	cfg, _ := toml.Marshal(c)
	b, _ := json.Marshal(struct {
		Config string
		Files  []ident
	}{string(cfg), ids})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func (p Pool) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

// bucket is the pool of VMs booted with one config.
type bucket struct {
	Pool
	dir string
}

func (p Pool) bucket(fp string) bucket { return bucket{p, filepath.Join(p.Root, fp)} }

func (b bucket) readyDir() string { return filepath.Join(b.dir, "ready") }

// lock takes the bucket's lock, which Fill and Drain hold while they work.
func (b bucket) lock() (func(), error) {
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return nil, fmt.Errorf("pool root: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(b.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pool lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("pool lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// entries lists the bucket's parked VMs, oldest first.
func (p bucket) entries() ([]*Entry, error) {
	des, err := os.ReadDir(p.readyDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	type dated struct {
		e  *Entry
		at time.Time
	}
	var list []dated
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), ".json") {
			continue
		}
		e, at, err := p.read(de.Name())
		if err != nil {
			continue // claimed meanwhile, or half-written by a dead Fill
		}
		list = append(list, dated{e, at})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].at.Before(list[j].at) })
	out := make([]*Entry, len(list))
	for i, d := range list {
		out[i] = d.e
	}
	return out, nil
}

func (p bucket) read(name string) (*Entry, time.Time, error) {
	path := filepath.Join(p.readyDir(), name)
	st, err := os.Stat(path)
	if err != nil {
		return nil, time.Time{}, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, time.Time{}, err
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, time.Time{}, err
	}
	if e.Launch == nil || e.ID+".json" != name || e.Pid <= 0 {
		return nil, time.Time{}, fmt.Errorf("pool entry %s is malformed", path)
	}
	return &e, st.ModTime(), nil
}

// take claims e: removing its ready file succeeds for one caller only.
func (p bucket) take(e *Entry) bool {
	return os.Remove(filepath.Join(p.readyDir(), e.ID+".json")) == nil
}

// Claim takes the oldest VM parked for config c and adopts it
// (vmm.Adopt), sending it claim (the container's cgroup, OOM score and
// network namespace).
// A VM that died in the pool, or could not move, is cleared away and the
// next tried. It returns nil, nil, nil when none is left.
func (p Pool) Claim(c config.Config, claim vmm.Claim) (*Entry, *vmm.Handle, error) {
	b := p.bucket(Fingerprint(c, p.Binary))
	list, err := b.entries()
	if err != nil {
		return nil, nil, err
	}
	for _, e := range list {
		if !b.take(e) {
			continue
		}
		h, err := vmm.Adopt(e.Pid, e.Launch.Lifeline, claim)
		if err != nil {
			p.logf("pool VM %s: %v: clearing it", e.ID, err)
			p.discard(e, nil)
			continue
		}
		return e, h, nil
	}
	return nil, nil, nil
}

// Fill boots VMs with config c until c.PoolSize are parked, first
// clearing those that died.
func (p Pool) Fill(ctx context.Context, c config.Config) error {
	b := p.bucket(Fingerprint(c, p.Binary))
	unlock, err := b.lock()
	if err != nil {
		return err
	}
	defer unlock()
	list, err := b.entries()
	if err != nil {
		return err
	}
	have := 0
	for _, e := range list {
		if e.Alive() {
			have++
		} else if b.take(e) {
			p.logf("pool VM %s died: clearing it", e.ID)
			p.discard(e, nil)
		}
	}
	if c.Template {
		if err := b.ensureTemplate(ctx, c); err != nil {
			return err
		}
	}
	for ; have < c.PoolSize; have++ {
		e, err := b.boot(ctx, c)
		if err == nil {
			err = b.write(e)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Drain stops every parked VM, of every config.
func (p Pool) Drain() error {
	dirs, err := os.ReadDir(p.Root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		if d.IsDir() {
			errs = append(errs, p.bucket(d.Name()).drain())
		}
	}
	return errors.Join(errs...)
}

func (p bucket) drain() error {
	unlock, err := p.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := template.Stop(p.dir); err != nil {
		p.logf("%v", err)
	}
	list, err := p.entries()
	if err != nil {
		return err
	}
	for _, e := range list {
		if !p.take(e) {
			continue
		}
		h, err := vmm.Adopt(e.Pid, e.Launch.Lifeline, vmm.Claim{})
		if err != nil {
			h = nil
		}
		p.discard(e, h)
		p.logf("pool VM %s stopped", e.ID)
	}
	return nil
}

// discard stops a taken VM (through h when adopted: the VMM sees its
// lifeline go and shuts the guest down) and removes what is left of it.
func (p Pool) discard(e *Entry, h *vmm.Handle) {
	var err error
	if h != nil {
		err = h.Stop(nil)
	} else {
		err = e.Stop(nil)
	}
	if err == nil {
		err = e.Remove()
	}
	if err != nil {
		p.logf("pool VM %s: %v", e.ID, err)
	}
}

// boot starts one pool VM (from the bucket's template when c.Template),
// waits for its agent and parks it. On error nothing of it is left.
func (p bucket) boot(ctx context.Context, c config.Config) (*Entry, error) {
	return p.start(ctx, c, false)
}

// start starts one VM with the pool's layout (see boot), or, asTemplate,
// the bucket's template VM, which is saved and ends.
func (p bucket) start(ctx context.Context, c config.Config, asTemplate bool) (_ *Entry, retErr error) {
	id, err := newID()
	if err != nil {
		return nil, err
	}
	stateDir := vmm.StateDirPath(p.dir, id)
	sock, err := vmm.AgentSocketPath(filepath.Join(p.dir, "sock"), id)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(stateDir), 0o711); err != nil {
		return nil, err
	}
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("pool VM state dir: %w", err)
	}
	var prep *launch.Prepared
	var h *vmm.Handle
	defer func() {
		if retErr == nil && !asTemplate {
			return
		}
		if h != nil {
			_ = h.Kill()
			_, _ = h.Wait()
		}
		if prep != nil {
			_ = prep.Release()
		}
		_ = mounts.RemoveAllUnmounted(stateDir)
		vmm.RemoveSockets(sock)
	}()
	rootfs := filepath.Join(stateDir, "rootfs")
	if err := os.Mkdir(rootfs, 0o700); err != nil {
		return nil, err
	}
	podDir := filepath.Join(stateDir, podDirName)
	guestID := "pool-" + id
	if c.Template {
		// What the guest learnt at the template's boot stays: the share
		// tags (its 9p driver reads them at probe) follow from this ID.
		guestID = "pool-template"
	}
	prep, err = launch.Prepare(launch.Request{
		ID: guestID, Name: "pool/" + id, Spec: Spec(rootfs, id), Bundle: stateDir, Rootfs: rootfs,
		StateDir: stateDir, AgentSocket: sock, Config: c, PodDir: podDir,
	})
	if err != nil {
		return nil, fmt.Errorf("pool VM: %w", err)
	}
	how := "booted"
	if c.Template {
		templateLayout(prep.Launch)
		if asTemplate {
			prep.Launch.TemplateSave = p.dir
		} else {
			prep.Launch.Template = filepath.Join(p.dir, template.SockName)
			how = "started from the template"
		}
	}
	if asTemplate {
		// Saved, the template VM ends: the deferred cleanup removes it.
		start := time.Now()
		if h, err = prep.Spawn(p.Binary); err != nil {
			return nil, fmt.Errorf("template VM: %w", err)
		}
		if code, err := h.Wait(); err != nil || code != 0 {
			return nil, fmt.Errorf("template VM: exit %d (%v)%s", code, err, launch.LogTail(prep.VMMLog()))
		}
		p.logf("template saved in %s", time.Since(start).Round(time.Millisecond))
		return nil, nil
	}
	prep.Launch.Lifeline = vmm.LifelineSocket(sock)
	prep.Launch.Nice = ParkedNice
	start := time.Now()
	if h, err = prep.Spawn(p.Binary); err != nil {
		return nil, fmt.Errorf("pool VM: %w", err)
	}
	client, err := launch.WaitAgent(ctx, prep.Launch, h)
	if err != nil {
		return nil, fmt.Errorf("pool VM %s: %w%s", id, err, launch.LogTail(prep.VMMLog()))
	}
	client.Close()
	rec, err := launch.RecordVM(prep.Launch, h)
	if err != nil {
		return nil, fmt.Errorf("pool VM %s: %w", id, err)
	}
	if err := h.Park(); err != nil {
		return nil, fmt.Errorf("pool VM %s: park: %w", id, err)
	}
	p.logf("pool VM %s %s, ready in %s (pid %d)", id, how, time.Since(start).Round(time.Millisecond), h.Pid)
	return &Entry{ID: id, VMRecord: rec, Launch: prep.Launch}, nil
}

// write publishes e atomically.
func (p bucket) write(e *Entry) error {
	if err := os.MkdirAll(p.readyDir(), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	tmp := filepath.Join(p.readyDir(), "."+e.ID+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(p.readyDir(), e.ID+".json")); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Spec is the spec a pool VM is booted for: no container of its own (the
// process never runs), the namespaces every VM container has, and its
// own host cgroup.
func Spec(rootfs, id string) *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: rootfs},
		Process: &specs.Process{Args: []string{"/pool-vm-has-no-container"}, Cwd: "/"},
		Linux: &specs.Linux{
			CgroupsPath: "/msb-pool/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
		},
	}
}
