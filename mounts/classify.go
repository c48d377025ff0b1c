// Package mounts does the host-side mount work for a sandbox: it classifies
// the OCI spec's mounts by how they can cross the VM boundary (shared
// directory, staged single file, virtio-blk disk, guest tmpfs, or a special
// filesystem runc creates inside the guest), stages single-file binds, and
// locks disk images. It touches the host filesystem but knows nothing about
// containerd; the guest boot env it feeds is encoded by mounts/bootenv.
package mounts

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts/bootenv"
)

// Kind says how a mount reaches the guest.
type Kind int

const (
	// KindBindDir is a host directory exported as a 9p / virtio-fs share.
	KindBindDir Kind = iota + 1
	// KindBindFile is a host file staged into a per-sandbox directory that
	// is exported as a share (shares cannot export a lone file).
	KindBindFile
	// KindTmpfs is a tmpfs created by the guest agent in guest memory.
	KindTmpfs
	// KindBlock is a disk image or block device attached with virtio-blk.
	KindBlock
	// KindSpecial is a kernel filesystem (proc, sysfs, the /dev tmpfs, ...)
	// that runc creates inside the guest exactly as it would on a host.
	KindSpecial
	// KindPodTmpfs is a kubelet emptyDir of medium Memory in a pod VM
	// (ADR 032): a tmpfs of the guest that every container of the pod
	// mounting the volume shares, in place of kubelet's tmpfs on the
	// host. Only MarkMemoryVolumes makes it.
	KindPodTmpfs
)

func (k Kind) String() string {
	switch k {
	case KindBindDir:
		return "bind-dir"
	case KindBindFile:
		return "bind-file"
	case KindTmpfs:
		return "tmpfs"
	case KindBlock:
		return "block"
	case KindSpecial:
		return "special"
	case KindPodTmpfs:
		return "pod-tmpfs"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Mount is one classified OCI mount.
type Mount struct {
	// Index is the position in spec.Mounts, for errors ("mounts[3]").
	Index int
	Kind  Kind
	// Destination is the container path, cleaned and absolute.
	Destination string
	// Source is the host path, absolute with symlinks resolved (bind and
	// block, and a pod tmpfs's emptyDir); "" for tmpfs and special mounts.
	Source string
	// Type is the OCI type as given.
	Type     string
	ReadOnly bool
	// Options are the OCI options left after the msb.* ones are consumed.
	// For tmpfs, size=, mode= and the flags are consumed too.
	Options []string

	// SizeBytes, Mode and Flags describe a tmpfs; Flags holds the effective
	// ones of ro, noexec, nosuid, nodev. A pod tmpfs has SizeBytes and
	// Mode (its bind's flags stay in Options).
	SizeBytes int64
	Mode      uint32
	Flags     []string

	// Format is the image format of a block mount: raw, qcow2 or vmdk.
	Format string
	// FSType is the filesystem inside the disk; "" for type msb.block,
	// which asks the guest to detect it.
	FSType string

	// IDMap is a bind's uidMappings/gidMappings; nil for none.
	IDMap *IDMap
}

// BlockType is the pseudo OCI mount type for a disk whose filesystem the
// guest detects.
const BlockType = "msb.block"

// FormatOption selects a block mount's image format ("msb.format=qcow2").
const FormatOption = "msb.format"

// specialTypes are created by runc in the guest: they describe the guest
// kernel, so nothing of the host is passed.
var specialTypes = map[string]bool{
	"proc": true, "sysfs": true, "devpts": true, "mqueue": true, "cgroup": true, "cgroup2": true,
}

// blockFSTypes are filesystems that live on a disk and can therefore be
// handed to the guest as a virtio-blk device.
var blockFSTypes = map[string]bool{
	"ext2": true, "ext3": true, "ext4": true, "xfs": true, "btrfs": true, "vfat": true, "msdos": true,
	"exfat": true, "ntfs3": true, "f2fs": true, "erofs": true, "squashfs": true, "iso9660": true, "udf": true,
}

var imageFormats = map[string]bool{"raw": true, "qcow2": true, "vmdk": true}

// Classify sorts the spec's mounts into kinds and resolves host sources.
// Relative sources are resolved against bundleDir, like runc does. The
// result has one Mount per input, in order.
func Classify(ms []specs.Mount, bundleDir string) ([]Mount, error) {
	out := make([]Mount, 0, len(ms))
	for i, sm := range ms {
		m, err := classify(i, sm, bundleDir)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func classify(i int, sm specs.Mount, bundleDir string) (Mount, error) {
	field := func(f string) string { return fmt.Sprintf("mounts[%d].%s", i, f) }
	dest, err := cleanDestination(sm.Destination)
	if err != nil {
		return Mount{}, fmt.Errorf("%s %q: %w", field("destination"), sm.Destination, err)
	}
	m := Mount{Index: i, Destination: dest, Type: sm.Type}
	if len(sm.UIDMappings) > 0 || len(sm.GIDMappings) > 0 {
		if len(sm.UIDMappings) == 0 || len(sm.GIDMappings) == 0 {
			return Mount{}, fmt.Errorf("%s: an id-mapped mount needs both uidMappings and gidMappings", field("uidMappings"))
		}
		m.IDMap = &IDMap{UIDs: sm.UIDMappings, GIDs: sm.GIDMappings}
	}
	format := ""
	for _, o := range sm.Options {
		switch {
		case strings.HasPrefix(o, FormatOption+"="):
			format = strings.TrimPrefix(o, FormatOption+"=")
			if !imageFormats[format] {
				return Mount{}, fmt.Errorf("%s %q: unknown image format; use raw, qcow2 or vmdk", field("options"), o)
			}
		case strings.HasPrefix(o, "msb."):
			return Mount{}, fmt.Errorf("%s %q: unknown msb option; the only one is %s=raw|qcow2|vmdk", field("options"), o, FormatOption)
		default:
			m.Options = append(m.Options, o)
		}
		switch o {
		case "ro", "rro": // a share has no submounts in the guest: ro is recursive
			m.ReadOnly = true
		case "rw", "rrw":
			m.ReadOnly = false
		}
	}
	isBind := sm.Type == "bind" || sm.Type == "rbind" || hasOption(sm.Options, "bind") || hasOption(sm.Options, "rbind")
	if format != "" && (isBind || sm.Type != BlockType && !blockFSTypes[sm.Type]) {
		return Mount{}, fmt.Errorf("%s: %s applies only to block mounts (type %s or a disk filesystem type with an image source)", field("options"), FormatOption, BlockType)
	}
	switch {
	case m.IDMap != nil && !isBind:
		return Mount{}, fmt.Errorf("%s: only a bind mount can be id-mapped here; drop uidMappings/gidMappings", field("uidMappings"))
	case isBind:
		return classifyBind(m, sm.Source, bundleDir, field)
	case specialTypes[sm.Type] || sm.Type == "tmpfs" && dest == "/dev":
		m.Kind = KindSpecial
		return m, nil
	case sm.Type == "tmpfs":
		return classifyTmpfs(m, field)
	case sm.Type == BlockType || blockFSTypes[sm.Type]:
		return classifyBlock(m, sm.Source, bundleDir, format, field)
	case sm.Type == "":
		return Mount{}, fmt.Errorf("%s is empty and options have no bind; use bind, tmpfs, %s or a disk filesystem type", field("type"), BlockType)
	default:
		return Mount{}, fmt.Errorf("%s %q: cannot be mounted inside a VM (network, FUSE and virtual filesystems do not cross the VM boundary); mount it on the host and bind-mount the directory instead", field("type"), sm.Type)
	}
}

// cleanDestination makes dest absolute and clean, refusing ".." that climbs
// above the container root: runc would resolve it inside the rootfs, but a
// spec that tries is either wrong or hostile.
func cleanDestination(dest string) (string, error) {
	if dest == "" {
		return "", errors.New("must not be empty")
	}
	if !path.IsAbs(dest) {
		return "", errors.New("must be an absolute container path")
	}
	if strings.ContainsAny(dest, "\x00") {
		return "", errors.New("contains NUL")
	}
	depth := 0
	for _, c := range strings.Split(dest, "/") {
		switch c {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return "", errors.New(`".." climbs above the container root`)
			}
		default:
			depth++
		}
	}
	clean := path.Clean(dest)
	if clean == "/" {
		return "", errors.New("cannot mount over the container root; set root.path instead")
	}
	return clean, nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// resolveSource makes src absolute (against bundleDir) and resolves
// symlinks, so the share, staging and disk locking act on the real object.
func resolveSource(src, bundleDir string) (string, fs.FileInfo, error) {
	if src == "" {
		return "", nil, errors.New("is empty; give the host path to mount")
	}
	if !filepath.IsAbs(src) {
		if !filepath.IsAbs(bundleDir) {
			return "", nil, fmt.Errorf("is relative and the bundle dir %q is not absolute; use an absolute source", bundleDir)
		}
		src = filepath.Join(bundleDir, src)
	}
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil, fmt.Errorf("%s does not exist: %w", src, err)
		}
		return "", nil, fmt.Errorf("cannot resolve %s: %w", src, err)
	}
	fi, err := os.Lstat(real)
	if err != nil {
		return "", nil, fmt.Errorf("cannot stat %s: %w", real, err)
	}
	return real, fi, nil
}

func classifyBind(m Mount, src, bundleDir string, field func(string) string) (Mount, error) {
	real, fi, err := resolveSource(src, bundleDir)
	if err != nil {
		return Mount{}, fmt.Errorf("%s %q: %w", field("source"), src, err)
	}
	m.Source = real
	switch mode := fi.Mode(); {
	case mode.IsDir():
		m.Kind = KindBindDir
	case mode.IsRegular():
		if err := bootenv.CheckFileName(filepath.Base(real)); err != nil {
			return Mount{}, fmt.Errorf("%s %q: file name %q cannot be staged into the VM: %w; rename the file or bind its directory", field("source"), src, filepath.Base(real), err)
		}
		m.Kind = KindBindFile
	default:
		return Mount{}, fmt.Errorf("%s %q: %s is a %s and cannot be passed into a VM: %s", field("source"), src, real, fileKind(mode), whyNot(mode))
	}
	return m, nil
}

func fileKind(mode fs.FileMode) string {
	switch {
	case mode&fs.ModeCharDevice != 0:
		return "character device"
	case mode&fs.ModeDevice != 0:
		return "block device"
	case mode&fs.ModeSocket != 0:
		return "unix socket"
	case mode&fs.ModeNamedPipe != 0:
		return "fifo"
	}
	return "special file (" + mode.Type().String() + ")"
}

func whyNot(mode fs.FileMode) string {
	switch {
	case mode&fs.ModeDevice != 0:
		return "host device nodes stay on the host; to give a disk to the container use a mount of type " + BlockType + " or a filesystem type"
	case mode&(fs.ModeSocket|fs.ModeNamedPipe) != 0:
		return "sockets and fifos connect host processes and do not work across the VM boundary"
	}
	return "only directories and regular files can be shared"
}

// tmpfsFlags maps each accepted tmpfs flag option to the flag it sets or
// clears; the last one given wins, as with mount(8).
var tmpfsFlags = map[string]struct {
	flag string
	set  bool
}{
	"ro": {"ro", true}, "rw": {"ro", false},
	"noexec": {"noexec", true}, "exec": {"noexec", false},
	"nosuid": {"nosuid", true}, "suid": {"nosuid", false},
	"nodev": {"nodev", true}, "dev": {"nodev", false},
}

// ignoredTmpfsOptions change nothing for a tmpfs private to one VM: the
// guest's propagation is runc's business and atime has no cost in memory.
var ignoredTmpfsOptions = map[string]bool{
	"private": true, "rprivate": true, "slave": true, "rslave": true, "shared": true, "rshared": true,
	"unbindable": true, "runbindable": true, "atime": true, "noatime": true, "relatime": true,
	"norelatime": true, "strictatime": true, "nostrictatime": true, "diratime": true, "nodiratime": true,
	"defaults": true,
}

func classifyTmpfs(m Mount, field func(string) string) (Mount, error) {
	state := map[string]bool{}
	var rest []string
	for _, o := range m.Options {
		switch {
		case strings.HasPrefix(o, "size="):
			n, err := parseSize(strings.TrimPrefix(o, "size="))
			if err != nil {
				return Mount{}, fmt.Errorf("%s %q: %w", field("options"), o, err)
			}
			m.SizeBytes = n
		case strings.HasPrefix(o, "mode="):
			v, err := strconv.ParseUint(strings.TrimPrefix(o, "mode="), 8, 32)
			if err != nil || v > 0o7777 {
				return Mount{}, fmt.Errorf("%s %q: mode must be octal 0..7777 (e.g. mode=1777)", field("options"), o)
			}
			m.Mode = uint32(v)
		case tmpfsFlags[o].flag != "":
			f := tmpfsFlags[o]
			state[f.flag] = f.set
		case ignoredTmpfsOptions[o]:
			rest = append(rest, o)
		default:
			return Mount{}, fmt.Errorf("%s %q: tmpfs option not supported in a VM; use size=, mode=, ro/rw, noexec/exec, nosuid/suid, nodev/dev", field("options"), o)
		}
	}
	for _, f := range bootenv.TmpfsFlags {
		if state[f] {
			m.Flags = append(m.Flags, f)
		}
	}
	m.ReadOnly = state["ro"]
	m.Options = rest
	m.Kind = KindTmpfs
	return m, nil
}

// parseSize reads a tmpfs size: bytes with an optional k, m, g, t suffix
// (either case, powers of 1024, as the kernel's memparse). Percentages are
// refused: the guest's memory differs from the host's, so "50%" would not
// mean what the author expected.
func parseSize(s string) (int64, error) {
	if strings.HasSuffix(s, "%") {
		return 0, errors.New("percentage sizes are not supported (guest memory is not host memory); give an absolute size such as 64m")
	}
	shift := 0
	if s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			shift = 10
		case 'm', 'M':
			shift = 20
		case 'g', 'G':
			shift = 30
		case 't', 'T':
			shift = 40
		}
		if shift > 0 {
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("size must be a number of bytes with an optional k, m, g or t suffix")
	}
	if n == 0 {
		return 0, errors.New("size=0 (unlimited) is not supported; omit size for the default (half of guest memory) or give a size")
	}
	if n > (1<<63-1)>>shift {
		return 0, errors.New("size overflows 64 bits")
	}
	return n << shift, nil
}

func classifyBlock(m Mount, src, bundleDir, format string, field func(string) string) (Mount, error) {
	real, fi, err := resolveSource(src, bundleDir)
	if err != nil {
		return Mount{}, fmt.Errorf("%s %q: %w", field("source"), src, err)
	}
	mode := fi.Mode()
	if !mode.IsRegular() && !(mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0) {
		what := fileKind(mode)
		if mode.IsDir() {
			what = "directory"
		}
		return Mount{}, fmt.Errorf("%s %q: type %q needs a disk image file or a block device, but %s is a %s; for a directory use a bind mount", field("source"), src, m.Type, real, what)
	}
	if format == "" {
		format = formatFromName(src)
		if format == "" {
			format = formatFromName(real)
		}
		if format == "" {
			format = "raw"
		}
	}
	m.Source = real
	m.Format = format
	if m.Type != BlockType {
		m.FSType = m.Type
	}
	m.Kind = KindBlock
	return m, nil
}

// formatFromName guesses the image format from the extension; "" when the
// name says nothing. The name as given is tried before the resolved one, so
// a "disk.qcow2" symlink to a content-addressed blob still reads as qcow2.
func formatFromName(name string) string {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".qcow2":
		return "qcow2"
	case ".vmdk":
		return "vmdk"
	}
	return ""
}

// runcBindOptions are the options runc knows for a bind mount (mount
// flags, their recursive r* forms, propagation, idmap); anything else it
// passes to mount(2) as data, which a bind ignores.
var runcBindOptions = map[string]bool{}

func init() {
	for _, o := range strings.Fields(`async atime bind defaults dev diratime dirsync exec iversion lazytime loud mand
		noatime nodev nodiratime noexec noiversion nolazytime nomand norelatime nostrictatime nosuid nosymfollow
		rbind relatime remount ro rw silent strictatime suid sync symfollow
		private rprivate shared rshared slave rslave unbindable runbindable idmap ridmap tmpcopyup`) {
		runcBindOptions[o] = true
	}
	for _, o := range strings.Fields(`ro rw nosuid suid nodev dev noexec exec noatime atime nodiratime diratime
		relatime norelatime strictatime nostrictatime nosymfollow symfollow`) {
		runcBindOptions["r"+o] = true
	}
}

// UnknownBindOptions lists the options of a bind mount that neither runc
// nor msb knows. Like runc, msb accepts them (they change nothing); its
// callers log them, so a typo does not pass unseen.
func UnknownBindOptions(opts []string) []string {
	var out []string
	for _, o := range opts {
		if !runcBindOptions[o] {
			out = append(out, o)
		}
	}
	return out
}
