// Package vmm is the creator's side of a VMM process: its versioned launch
// config, spawning it with remapped file descriptors (Spawn) or adopting a
// parked pool VM (Adopt), the handle its creator keeps, dialing its agent
// relay, and the paths, exit codes and records both sides share. The VMM
// process itself is package vmmproc; this package imports neither it nor
// the jail.
package vmm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/network"
)

// ConfigVersion is the launch config version this build writes and reads.
// A VMM refuses configs from newer creators instead of half-understanding them.
const ConfigVersion = 1

// Fixed fd numbers in the VMM process (the VMM contract, docs/architecture.md).
const (
	ConfigFD      = 3 // launch config JSON, an unlinked temp file
	ParentWatchFD = 4 // read end of a pipe; EOF means the creator died
	StartupFD     = 5 // write end of a pipe; one line {"pid":N}
	// ContainerStdioFD is the first of a container-mode VMM's stdio fds:
	// stdin, stdout, stderr, or the one pty slave.
	ContainerStdioFD = 6
)

// DetachByte, written by the creator on the parent-watch pipe, tells the
// VMM to outlive its creator from then on (Handle.Detach).
const DetachByte = 'd'

// ParkByte, written by the creator of a pool VM (LaunchConfig.Lifeline)
// on the parent-watch pipe, hands the VM to the pool: the VMM stops
// watching the pipe and waits for its next creator on the lifeline
// socket (Handle.Park, Adopt).
const ParkByte = 'p'

// Backend names.
const (
	BackendAuto    = "auto"
	BackendQEMU    = "qemu"
	BackendLibkrun = "libkrun"
)

// Share is a host directory exported to the guest under Tag.
type Share struct {
	Tag      string `json:"tag"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// MultiDevs says the directory can span several host mounts (devices):
	// the backend must keep files of different devices apart in the guest
	// (inode numbers repeat across devices).
	MultiDevs bool `json:"multiDevs,omitempty"`
	// Shifted says its files show owners shifted to LaunchConfig.JailIDBase
	// already (mounts.MountShifted): the jail binds it as it is.
	Shifted bool `json:"shifted,omitempty"`
	// Propagated says the host's later mounts below Path reach the guest
	// ("rslave", "rshared", …): a jailed qemu with a user namespace gets
	// them mirrored id-mapped by the VMM process (mounts.MirrorBound).
	Propagated bool `json:"propagated,omitempty"`
	// IDMappedFile names a file staged in Path as an id-mapped bind (a
	// container user namespace's single-file bind): the jail id-maps
	// Path's own mount for qemu and binds that file's mount as it is.
	IDMappedFile string `json:"idMappedFile,omitempty"`
}

// Disk is a disk image or block device attached as virtio-blk; the guest
// finds it by its serial, which is Tag.
type Disk struct {
	Tag      string `json:"tag"`
	Path     string `json:"path"`
	Format   string `json:"format"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Backing lets the hypervisor open the backing file (qcow2, vmdk
	// parent) the image names (config allow_disk_backing_files); without
	// it qemu is told to open none.
	Backing bool `json:"backing,omitempty"`
}

// LaunchConfig is everything the VMM process needs. It travels as JSON
// through an unlinked temp file on ConfigFD, never on argv.
type LaunchConfig struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	Backend string `json:"backend"`
	// View is the host directory the VMM process shows clients as its
	// root (package view): the container's rootfs; "" for none (a pool VM).
	View string `json:"view,omitempty"`
	// RuntimeDir holds the VMM's logs and private sockets.
	RuntimeDir  string `json:"runtimeDir"`
	AgentSocket string `json:"agentSocket"`
	ConsoleLog  string `json:"consoleLog"`
	// ConsoleLogMax caps ConsoleLog in bytes (0: caplog.DefaultMax);
	// the oldest half goes when it is reached.
	ConsoleLogMax int64 `json:"consoleLogMax,omitempty"`

	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memoryMiB"`
	// MaxMemoryMiB is what a qemu VM boots with (-m): the most a resize
	// may grow it to (ADR 031). The balloon holds all of it but MemoryMiB
	// from the start; 0 or MemoryMiB: no headroom. libkrun ignores it.
	MaxMemoryMiB int `json:"maxMemoryMiB,omitempty"`

	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// RootDisk is a read-only guest root image (ext4, package guest's
	// RootDiskFile) the qemu guest boots from as /dev/vda instead of an
	// initramfs: one file every VM shares. Initrd is not used with it.
	RootDisk string `json:"rootDisk,omitempty"`
	// QEMU is the qemu-system-x86_64 binary (qemu backend).
	QEMU string `json:"qemu,omitempty"`
	// Accel forces "kvm" or "tcg"; "" picks KVM when /dev/kvm opens.
	Accel string `json:"accel,omitempty"`
	// NoJail runs qemu as the VMM's plain child: no mount namespace,
	// capabilities, no_new_privs or seccomp filter (debugging only; ADR
	// 013). The zero value jails.
	NoJail bool `json:"noJail,omitempty"`
	// JailHostRoot keeps a jailed qemu root of the host's user namespace
	// instead of an unprivileged user of its own (ADR 022): for a
	// container user namespace whose host ids reach msb's own ranges.
	JailHostRoot bool `json:"jailHostRoot,omitempty"`
	// JailHostIDs runs a jailed qemu as an unprivileged user in a user
	// namespace that maps the host's ids below JailIDBase to themselves
	// (ADR 022): for a container user namespace whose
	// host ids hold host root.
	JailHostIDs bool `json:"jailHostIDs,omitempty"`
	// JailKeptIDs are host ids qemu's user namespace maps to themselves
	// beside its own range (mounts.JailMap): a container user namespace's,
	// which its VM's files and guest use.
	JailKeptIDs *mounts.KeptIDs `json:"jailKeptIDs,omitempty"`
	// JailIDBase, when not 0, is the first of the host ids qemu's user
	// namespace maps (ADR 022), held by the creator (AllocJailIDs) for
	// the VM's life because it shifted a share to them already: a rootfs
	// overlay mounted over id-mapped layers (Share.Shifted). 0: the VMM
	// takes a range of its own.
	JailIDBase uint32 `json:"jailIDBase,omitempty"`
	// GuestRoot is the guest root directory for the libkrun backend (the
	// agent as /init, runc as /sbin/runc; see docs/backends.md); libkrun
	// boots libkrunfw's kernel with it as the virtio-fs root. Empty means
	// libkrun cannot be used: auto takes qemu.
	GuestRoot string `json:"guestRoot,omitempty"`
	// Libkrun overrides the library the libkrun backend loads (default
	// libkrun.so.1 from the loader's search path, or $MSB_LIBKRUN).
	Libkrun string `json:"libkrun,omitempty"`

	Shares []Share `json:"shares,omitempty"`
	// Modules is the guest image's kernel module tree (its modules dir,
	// holding <release>/), exported read-only to qemu guests under
	// protocol.ModulesShareTag, where the agent mounts it at /lib/modules.
	// Empty: the guest has its boot-time modules only. libkrun ignores it
	// (libkrunfw's kernel is another kernel).
	Modules string `json:"modules,omitempty"`
	Disks   []Disk `json:"disks,omitempty"`
	// Env is the MSB_* guest boot env (mounts/bootenv).
	Env []string `json:"env,omitempty"`

	// NetNS is the network namespace (a path) the VMM process is started
	// in: the container's, so its pid points clients at the container's
	// network. Empty: Spawn gives the VMM a new, empty namespace. Never
	// the host's.
	NetNS string `json:"netns,omitempty"`
	// NICs are the VM's virtio-net devices; the VMM creates their taps in
	// its namespace (network.CreateTaps).
	NICs []network.NIC `json:"nics,omitempty"`

	// Container, when set, makes the VMM the host process of one
	// container for a runtime CLI caller (msb-runtime create): it holds the
	// container's stdio (fds from ContainerStdioFD on), outlives the CLI
	// once detached, and exits with the container's exit status.
	Container *ContainerMode `json:"container,omitempty"`
	// BootTimeout bounds kernel boot up to the agent answering.
	BootTimeout Duration `json:"bootTimeout,omitempty"`
	// KVMBootTimeout bounds a boot under automatically chosen KVM before
	// the VMM retries under TCG (default 15 s).
	KVMBootTimeout Duration `json:"kvmBootTimeout,omitempty"`
	// ShutdownGrace is the flush window between asking the guest to power
	// off and killing the hypervisor.
	ShutdownGrace Duration `json:"shutdownGrace,omitempty"`
	// Cleanup lists paths the VMM removes when it exits after its creator
	// died, so a killed creator leaves nothing behind.
	Cleanup []string `json:"cleanup,omitempty"`
	// Host places the VMM process tree on the host: the container's
	// cgroup and OOM score (ADR 014); nil leaves both the creator's.
	Host *HostResources `json:"host,omitempty"`
	// Lifeline makes the VM a pool VM (ADR 020): once parked
	// (ParkByte), the VMM accepts one connection on this Unix socket and
	// treats its end as its creator's death, as it does EOF on the
	// parent-watch pipe.
	Lifeline string `json:"lifeline,omitempty"`
	// TemplateSave makes the VM a template (ADR 025): booted to a ready
	// agent with its RAM in a memory file, saved, and never booted; the
	// VMM then starts the template's holder on this directory
	// (package template) and ends. Template names a holder's socket: the
	// VM starts from that saved state instead of booting. Both need the
	// qemu backend and the same device layout (a pool VM's).
	TemplateSave string `json:"templateSave,omitempty"`
	Template     string `json:"template,omitempty"`
	// Nice is the scheduling priority (0..19) the VMM process and its
	// hypervisor start at: a pool VM boots and idles below the containers
	// that run, and goes back to 0 when claimed.
	Nice int `json:"nice,omitempty"`
}

// ContainerMode is LaunchConfig.Container.
type ContainerMode struct {
	// ID is the container's id in the guest.
	ID string `json:"id"`
	// Tokens name the stdio streams (stdin, stdout, stderr) the creator
	// gave the container in its create request.
	Tokens [3]string `json:"tokens"`
	// Terminal: the VMM holds one fd, a pty's slave end, instead of three.
	Terminal bool `json:"terminal,omitempty"`
	// Unstage lists what the VMM removes (unmounting below first) when it
	// ends after being detached: what only the running VM needed, such as
	// staged file binds. The container's record stays for its delete, which
	// a caller may never make (Podman when conmon was killed).
	Unstage []string `json:"unstage,omitempty"`
}

// Duration is a time.Duration that reads and writes as a Go duration string.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Or is d, or def when d is not set.
func (d Duration) Or(def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return time.Duration(d)
}

// Validate checks the fields a VMM needs before it reserves anything.
func (c *LaunchConfig) Validate() error {
	switch {
	case c.Version != ConfigVersion:
		return fmt.Errorf("launch config version %d is not supported by this VMM (speaks %d): install matching msb binaries", c.Version, ConfigVersion)
	case c.Name == "":
		return errors.New("launch config: name is empty")
	case c.RuntimeDir == "" || !filepath.IsAbs(c.RuntimeDir):
		return fmt.Errorf("launch config: runtimeDir %q must be an absolute path", c.RuntimeDir)
	case c.AgentSocket == "":
		return errors.New("launch config: agentSocket is empty")
	case c.VCPUs < 1 || c.VCPUs > 255:
		return fmt.Errorf("launch config: vcpus %d out of range 1..255", c.VCPUs)
	case c.MemoryMiB < 64:
		return fmt.Errorf("launch config: memoryMiB %d below the 64 MiB minimum", c.MemoryMiB)
	case c.MaxMemoryMiB != 0 && c.MaxMemoryMiB < c.MemoryMiB:
		return fmt.Errorf("launch config: maxMemoryMiB %d below memoryMiB %d", c.MaxMemoryMiB, c.MemoryMiB)
	case c.Kernel == "" && c.Backend != BackendLibkrun:
		return errors.New("launch config: kernel is empty: install the guest image (install.sh) or set kernel in /etc/msb/config.toml")
	case c.Backend == BackendLibkrun && !filepath.IsAbs(c.GuestRoot):
		return fmt.Errorf("launch config: guestRoot %q must be an absolute path for backend libkrun: build the libkrun guest root (docs/backends.md) or use backend qemu", c.GuestRoot)
	}
	switch c.Backend {
	case BackendQEMU, BackendLibkrun, BackendAuto:
	default:
		return fmt.Errorf("launch config: backend %q unknown: use auto, qemu or libkrun", c.Backend)
	}
	switch c.Accel {
	case "", "kvm", "tcg":
	default:
		return fmt.Errorf("launch config: accel %q unknown: use kvm, tcg or leave empty", c.Accel)
	}
	if m := c.Container; m != nil && (m.ID == "" || m.Tokens[0] == "" || m.Tokens[1] == "" || m.Tokens[2] == "") {
		return errors.New("launch config: container needs an id and three stdio tokens")
	}
	if c.Modules != "" && !filepath.IsAbs(c.Modules) {
		return fmt.Errorf("launch config: modules %q must be an absolute path", c.Modules)
	}
	if c.Nice < 0 || c.Nice > 19 {
		return fmt.Errorf("launch config: nice %d out of range 0..19", c.Nice)
	}
	if (c.TemplateSave != "" && !filepath.IsAbs(c.TemplateSave)) || (c.Template != "" && !filepath.IsAbs(c.Template)) || (c.TemplateSave != "" && c.Template != "") {
		return fmt.Errorf("launch config: templateSave %q and template %q must be absolute paths, and not both set", c.TemplateSave, c.Template)
	}
	if (c.TemplateSave != "" || c.Template != "") && c.Modules != "" {
		return fmt.Errorf("launch config: a VM template cannot hold a mounted module share (%s): use a guest kernel with its drivers built in, or template = false", c.Modules)
	}
	if c.Lifeline != "" && (!filepath.IsAbs(c.Lifeline) || c.Container != nil) {
		return fmt.Errorf("launch config: lifeline %q must be an absolute path, and not set in container mode", c.Lifeline)
	}
	if c.RootDisk != "" && !filepath.IsAbs(c.RootDisk) {
		return fmt.Errorf("launch config: rootDisk %q must be an absolute path", c.RootDisk)
	}
	if c.NetNS != "" && !filepath.IsAbs(c.NetNS) {
		return fmt.Errorf("launch config: netns %q must be an absolute path", c.NetNS)
	}
	for i, n := range c.NICs {
		if !strings.HasPrefix(n.Tap, network.TapPrefix) || len(n.Tap) > 15 {
			return fmt.Errorf("launch config: nics[%d].tap %q must start with %q and fit in 15 bytes", i, n.Tap, network.TapPrefix)
		}
		if _, err := net.ParseMAC(n.MAC); err != nil {
			return fmt.Errorf("launch config: nics[%d].mac %q: %w", i, n.MAC, err)
		}
	}
	if err := c.Host.Validate(); err != nil {
		return err
	}
	if c.JailHostIDs && (c.JailHostRoot || c.JailIDBase != 0 || c.JailKeptIDs != nil) {
		return errors.New("launch config: jailHostIDs excludes jailHostRoot, jailIDBase and jailKeptIDs")
	}
	if err := c.JailKeptIDs.Check(); err != nil {
		return fmt.Errorf("launch config: jailKeptIDs: %w", err)
	}
	for i, d := range c.Disks {
		switch d.Format {
		case "raw", "qcow2", "vmdk":
		default:
			return fmt.Errorf("launch config: disks[%d].format %q unknown: use raw, qcow2 or vmdk", i, d.Format)
		}
	}
	return nil
}

// DecodeConfig parses and validates a launch config.
func DecodeConfig(b []byte) (*LaunchConfig, error) {
	var c LaunchConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("parse launch config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// maxUnixPath is sun_path's size minus the terminating NUL.
const maxUnixPath = 107

// Sockets. A VM's relay socket is <sock dir>/<hash>.sock (AgentSocketPath)
// and the VMM's other sockets sit beside it, named after it: the name has
// a fixed length, and the sock dir is one the operator chose (a state
// root's sock/; msb-runtime's under /run/msb/sock), never one named after
// a containerd namespace or a container id, so no user-chosen name decides
// a socket path's length (sun_path holds 108 bytes). State dirs keep
// their names (StateDirPath): they are no sockets.

// ChannelSocket is where the hypervisor connects the guest's agent channel.
func ChannelSocket(c *LaunchConfig) string { return siblingSocket(c.AgentSocket, "chan") }

// ConsoleSocket is where the VMM takes the guest console from qemu
// (caplog.ServeConsole).
func ConsoleSocket(c *LaunchConfig) string { return siblingSocket(c.AgentSocket, "cons") }

// MonitorSocket is where qemu connects its QMP monitor to the VMM
// (package qmp).
func MonitorSocket(c *LaunchConfig) string { return siblingSocket(c.AgentSocket, "qmp") }

// LifelineSocket is where a pool VM whose relay listens on agentSocket
// waits for its next creator (LaunchConfig.Lifeline).
func LifelineSocket(agentSocket string) string { return siblingSocket(agentSocket, "life") }

// RemoveSockets removes a VM's relay socket and the sockets beside it;
// the VMM does so when it ends, its creator when the VMM was killed.
func RemoveSockets(agentSocket string) {
	for _, p := range []string{agentSocket, siblingSocket(agentSocket, "chan"), siblingSocket(agentSocket, "cons"), siblingSocket(agentSocket, "qmp"), LifelineSocket(agentSocket)} {
		_ = os.Remove(p)
	}
}

func siblingSocket(agentSocket, kind string) string {
	return strings.TrimSuffix(agentSocket, ".sock") + "." + kind + ".sock"
}

// StateDirPath is VM name's state dir under stateRoot.
func StateDirPath(stateRoot, name string) string { return filepath.Join(stateRoot, "vms", name) }

// AgentSocketPath is where the relay of the VM keyed key listens in
// sockDir: <first 32 hex of sha256(key)>.sock. Hashing keeps the name short
// and free of characters from hostile names; the key names the VM uniquely
// among those sharing sockDir.
func AgentSocketPath(sockDir, key string) (string, error) {
	sum := sha256.Sum256([]byte(key))
	p := filepath.Join(sockDir, hex.EncodeToString(sum[:])[:32]+".sock")
	if longest := siblingSocket(p, "chan"); len(longest) > maxUnixPath {
		return "", fmt.Errorf("socket path %q is %d bytes, over the %d-byte Unix socket limit: put the state root on a shorter path", longest, len(longest), maxUnixPath)
	}
	return p, nil
}

// MemoryCeiling is the most the VM may grow to: MaxMemoryMiB, or its
// size when it has no headroom. A template's RAM file is of the ceiling,
// the balloon holding the headroom when it is saved (ADR 025).
func (c *LaunchConfig) MemoryCeiling() int {
	return max(c.MaxMemoryMiB, c.MemoryMiB)
}
