// Package bootenv encodes and parses the guest boot environment: the list of
// KEY=VALUE strings the host hands to the msb guest agent (through libkrun's
// krun_set_env, or over the agent channel for QEMU). The same package runs on
// both sides, so the host can never produce something the guest reads
// differently. It imports only the standard library because the guest agent
// is a static binary that must not pull in host-only code.
//
// # Grammar
//
// The grammar is the one of the seed design: a key holds a list of entries
// separated by ';', each entry has fields separated by ':', and option blocks
// are comma separated. Entries keep the order of the Go slices (the agent
// mounts in that order).
//
//	MSB_DIR_MOUNTS         tag:/guest/path[:ro]                    ; ...
//	MSB_FILE_MOUNTS        tag:name:/guest/path[:ro]               ; ...
//	MSB_DISK_MOUNTS        tag:/guest/path:fstype[:ro][:opt,opt]   ; ...   (fstype may be empty = detect)
//	MSB_TMPFS              /guest/path[:size=N,mode=0NNN,flag,...] ; ...   (size in bytes, mode octal with leading 0,
//	                                                                        flags from ro,noexec,nosuid,nodev;
//	                                                                        size, then mode, then flags)
//	MSB_POD_TMPFS          /guest/path[:size=N,mode=0NNN]          ; ...   (as MSB_TMPFS, without flags: a pod VM's
//	                                                                        tmpfs, mounted by the first member that
//	                                                                        names it and kept until the VM ends)
//	MSB_RLIMITS            resource=soft:hard                      ; ...   (numeric Linux ids, decimal values;
//	                                                                        RLIM_INFINITY is 18446744073709551615)
//	MSB_HOSTNAME           the hostname, verbatim
//	MSB_USER               uid:gid (decimal)
//	MSB_HANDOFF_INIT       /absolute/path/of/init, verbatim
//	MSB_HANDOFF_INIT_ARGS  base64url without padding (RFC 4648 §5) of a JSON array of strings
//	MSB_HANDOFF_INIT_ENV   base64url without padding (RFC 4648 §5) of a JSON array of strings
//
// Empty fields are omitted, never encoded as an empty value. Only canonical
// text is accepted by Parse (no empty entries, no leading zeros, options in
// the documented order, compact JSON, ...), so Encode(Parse(x)) reproduces x
// byte for byte and Parse(Encode(e)) reproduces e.
//
// # Characters
//
// Tags match [A-Za-z0-9._-] and are at most MaxTagLen bytes, because a tag is
// also a virtio-blk serial (20 bytes) and a 9p mount tag. Guest paths are
// absolute, clean, and contain none of ': ; , =' nor control characters; they
// are chosen by msb (/run/msb/...), so this costs users nothing. A file
// mount's name comes from the user's file, so it is allowed everything except
// '/', ':', ';' and control characters (',' and '=' are not separators in
// that position). Disk options may contain '=' (data=ordered) but not ',', ':'
// or ';'; read-only is expressed by the ro field, never as an option.
package bootenv

import (
	"sort"
	"strconv"
	"strings"
)

// Keys of the boot environment. Every key starts with Prefix.
const (
	KeyDirMounts       = "MSB_DIR_MOUNTS"
	KeyFileMounts      = "MSB_FILE_MOUNTS"
	KeyDiskMounts      = "MSB_DISK_MOUNTS"
	KeyTmpfs           = "MSB_TMPFS"
	KeyPodTmpfs        = "MSB_POD_TMPFS"
	KeyRlimits         = "MSB_RLIMITS"
	KeyHostname        = "MSB_HOSTNAME"
	KeyUser            = "MSB_USER"
	KeyHandoffInit     = "MSB_HANDOFF_INIT"
	KeyHandoffInitArgs = "MSB_HANDOFF_INIT_ARGS"
	KeyHandoffInitEnv  = "MSB_HANDOFF_INIT_ENV"
)

// Prefix marks the variables this package owns; Parse ignores all others so
// the guest can receive ordinary environment variables beside the boot env.
const Prefix = "MSB_"

// MaxTagLen is the longest accepted tag: a virtio-blk serial holds 20 bytes,
// and one limit for every kind of tag keeps mounts.Tag simple.
const MaxTagLen = 20

// MaxHostnameLen is Linux's HOST_NAME_MAX; sethostname refuses longer names.
const MaxHostnameLen = 64

// NumRlimits is Linux's RLIM_NLIMITS: valid resource ids are 0..NumRlimits-1.
const NumRlimits = 16

// RlimInfinity is RLIM_INFINITY on Linux.
const RlimInfinity = ^uint64(0)

// TmpfsFlags are the only flags a Tmpfs may carry.
var TmpfsFlags = []string{"ro", "noexec", "nosuid", "nodev"}

// DirMount is a 9p / virtio-fs share that the agent mounts at GuestPath.
type DirMount struct {
	Tag       string
	GuestPath string
	ReadOnly  bool
}

// FileMount is a share holding one staged file Name. The agent mounts the
// share's directory at GuestPath; the file is then GuestPath/Name. Files are
// shared through a directory because 9p and virtio-fs cannot export a file.
type FileMount struct {
	Tag       string
	Name      string
	GuestPath string
	ReadOnly  bool
}

// DiskMount is a virtio-blk disk, found in the guest by its serial (Tag),
// mounted at GuestPath. FSType "" asks the guest to detect the filesystem.
type DiskMount struct {
	Tag       string
	GuestPath string
	FSType    string
	ReadOnly  bool
	Options   []string
}

// Tmpfs is a tmpfs the agent mounts at GuestPath. Options is a subset of
// TmpfsFlags; SizeBytes 0 and Mode 0 mean the kernel defaults.
type Tmpfs struct {
	GuestPath string
	SizeBytes int64
	Mode      uint32
	Options   []string
}

// Rlimit is a resource limit applied by the agent, with the numeric Linux
// resource id (RLIMIT_NOFILE = 7, ...) so the guest needs no name table.
type Rlimit struct {
	Resource   int
	Soft, Hard uint64
}

// Env is the decoded boot environment.
type Env struct {
	DirMounts  []DirMount
	FileMounts []FileMount
	DiskMounts []DiskMount
	Tmpfs      []Tmpfs
	// PodTmpfs are tmpfs of a pod VM that several containers share (a
	// kubelet emptyDir of medium Memory, ADR 032): Prepare mounts one
	// the first time a container names it and keeps it until the VM
	// ends. They carry no flags: each container's bind has its own.
	PodTmpfs []Tmpfs
	Rlimits  []Rlimit
	Hostname string
	// User is "uid:gid" or "".
	User string
	// HandoffInit, when set, is the program the agent hands PID 1 to.
	HandoffInit     string
	HandoffInitArgs []string
	HandoffInitEnv  []string
}

// Encode validates e and returns its "KEY=VALUE" strings sorted by key, with
// empty fields omitted. Errors name the Go field, e.g. DiskMounts[2].Tag.
func (e Env) Encode() ([]string, error) {
	if err := e.validate(goNames); err != nil {
		return nil, err
	}
	m := e.encodeValues()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+m[k])
	}
	return out, nil
}

// encodeValues renders every non-empty field. It assumes e is valid.
func (e Env) encodeValues() map[string]string {
	m := map[string]string{}
	put := func(key string, entries []string) {
		if len(entries) > 0 {
			m[key] = strings.Join(entries, ";")
		}
	}
	var s []string
	for _, d := range e.DirMounts {
		s = append(s, d.Tag+":"+d.GuestPath+roSuffix(d.ReadOnly))
	}
	put(KeyDirMounts, s)
	s = nil
	for _, f := range e.FileMounts {
		s = append(s, f.Tag+":"+f.Name+":"+f.GuestPath+roSuffix(f.ReadOnly))
	}
	put(KeyFileMounts, s)
	s = nil
	for _, d := range e.DiskMounts {
		v := d.Tag + ":" + d.GuestPath + ":" + d.FSType + roSuffix(d.ReadOnly)
		if len(d.Options) > 0 {
			v += ":" + strings.Join(d.Options, ",")
		}
		s = append(s, v)
	}
	put(KeyDiskMounts, s)
	s = nil
	for _, t := range e.Tmpfs {
		s = append(s, encodeTmpfs(t))
	}
	put(KeyTmpfs, s)
	s = nil
	for _, t := range e.PodTmpfs {
		s = append(s, encodeTmpfs(t))
	}
	put(KeyPodTmpfs, s)
	s = nil
	for _, r := range e.Rlimits {
		s = append(s, strconv.Itoa(r.Resource)+"="+strconv.FormatUint(r.Soft, 10)+":"+strconv.FormatUint(r.Hard, 10))
	}
	put(KeyRlimits, s)
	if e.Hostname != "" {
		m[KeyHostname] = e.Hostname
	}
	if e.User != "" {
		m[KeyUser] = e.User
	}
	if e.HandoffInit != "" {
		m[KeyHandoffInit] = e.HandoffInit
	}
	if len(e.HandoffInitArgs) > 0 {
		m[KeyHandoffInitArgs] = encodeStrings(e.HandoffInitArgs)
	}
	if len(e.HandoffInitEnv) > 0 {
		m[KeyHandoffInitEnv] = encodeStrings(e.HandoffInitEnv)
	}
	return m
}

func roSuffix(ro bool) string {
	if ro {
		return ":ro"
	}
	return ""
}

func encodeTmpfs(t Tmpfs) string {
	var opts []string
	if t.SizeBytes != 0 {
		opts = append(opts, "size="+strconv.FormatInt(t.SizeBytes, 10))
	}
	if t.Mode != 0 {
		opts = append(opts, "mode="+formatMode(t.Mode))
	}
	opts = append(opts, t.Options...)
	if len(opts) == 0 {
		return t.GuestPath
	}
	return t.GuestPath + ":" + strings.Join(opts, ",")
}

// formatMode writes an octal mode with one leading zero (0755, 01777) so it
// reads as octal to humans and to strtol alike.
func formatMode(m uint32) string {
	return "0" + strconv.FormatUint(uint64(m), 8)
}
