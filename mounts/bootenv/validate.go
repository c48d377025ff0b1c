package bootenv

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"
)

// namer turns a location (list, entry index, field) into the words an error
// uses: Go field names for Encode, keys and entry numbers for Parse, so each
// caller sees the names it wrote.
type namer func(list string, i int, field string) string

// listKeys maps the Go field of a list to its key.
var listKeys = map[string]string{
	"DirMounts": KeyDirMounts, "FileMounts": KeyFileMounts, "DiskMounts": KeyDiskMounts,
	"Tmpfs": KeyTmpfs, "PodTmpfs": KeyPodTmpfs, "Rlimits": KeyRlimits, "Hostname": KeyHostname, "User": KeyUser,
	"HandoffInit": KeyHandoffInit, "HandoffInitArgs": KeyHandoffInitArgs, "HandoffInitEnv": KeyHandoffInitEnv,
}

func goNames(list string, i int, field string) string {
	s := list
	if i >= 0 {
		s += "[" + strconv.Itoa(i) + "]"
	}
	if field != "" {
		s += "." + field
	}
	return s
}

func keyNames(list string, i int, field string) string {
	s := listKeys[list]
	if i >= 0 {
		s += " entry " + strconv.Itoa(i)
	}
	if field != "" {
		s += " field " + strings.ToLower(field)
	}
	return s
}

// validate checks every field of e; Encode and Parse share it so that Parse
// accepts exactly what Encode can produce.
func (e Env) validate(n namer) error {
	guestPaths := map[string]string{}
	usePath := func(p, where string) error {
		if prev, ok := guestPaths[p]; ok {
			return fmt.Errorf("%s %q: guest path already used by %s; give each mount its own guest path", where, p, prev)
		}
		guestPaths[p] = where
		return nil
	}
	for i, d := range e.DirMounts {
		if err := checkTag(d.Tag); err != nil {
			return fmt.Errorf("%s %q: %w", n("DirMounts", i, "Tag"), d.Tag, err)
		}
		if err := checkGuestPath(d.GuestPath); err != nil {
			return fmt.Errorf("%s %q: %w", n("DirMounts", i, "GuestPath"), d.GuestPath, err)
		}
		if err := usePath(d.GuestPath, n("DirMounts", i, "GuestPath")); err != nil {
			return err
		}
	}
	for i, f := range e.FileMounts {
		if err := checkTag(f.Tag); err != nil {
			return fmt.Errorf("%s %q: %w", n("FileMounts", i, "Tag"), f.Tag, err)
		}
		if err := checkName(f.Name); err != nil {
			return fmt.Errorf("%s %q: %w", n("FileMounts", i, "Name"), f.Name, err)
		}
		if err := checkGuestPath(f.GuestPath); err != nil {
			return fmt.Errorf("%s %q: %w", n("FileMounts", i, "GuestPath"), f.GuestPath, err)
		}
		if err := usePath(f.GuestPath, n("FileMounts", i, "GuestPath")); err != nil {
			return err
		}
	}
	diskTags := map[string]int{}
	for i, d := range e.DiskMounts {
		if err := checkTag(d.Tag); err != nil {
			return fmt.Errorf("%s %q: %w", n("DiskMounts", i, "Tag"), d.Tag, err)
		}
		if j, ok := diskTags[d.Tag]; ok {
			return fmt.Errorf("%s %q: already used by %s; a disk is attached once", n("DiskMounts", i, "Tag"), d.Tag, n("DiskMounts", j, ""))
		}
		diskTags[d.Tag] = i
		if err := checkGuestPath(d.GuestPath); err != nil {
			return fmt.Errorf("%s %q: %w", n("DiskMounts", i, "GuestPath"), d.GuestPath, err)
		}
		if err := checkFSType(d.FSType); err != nil {
			return fmt.Errorf("%s %q: %w", n("DiskMounts", i, "FSType"), d.FSType, err)
		}
		for j, o := range d.Options {
			if err := checkDiskOption(o); err != nil {
				return fmt.Errorf("%s[%d] %q: %w", n("DiskMounts", i, "Options"), j, o, err)
			}
		}
		if err := usePath(d.GuestPath, n("DiskMounts", i, "GuestPath")); err != nil {
			return err
		}
	}
	for _, l := range []struct {
		name string
		v    []Tmpfs
	}{{"Tmpfs", e.Tmpfs}, {"PodTmpfs", e.PodTmpfs}} {
		for i, t := range l.v {
			if err := checkTmpfs(t, l.name, i, n); err != nil {
				return err
			}
			if l.name == "PodTmpfs" && len(t.Options) > 0 {
				return fmt.Errorf("%s %q: a pod tmpfs has no flags; they go on each container's bind", n(l.name, i, "Options"), t.Options)
			}
			if err := usePath(t.GuestPath, n(l.name, i, "GuestPath")); err != nil {
				return err
			}
		}
	}
	resources := map[int]int{}
	for i, r := range e.Rlimits {
		if r.Resource < 0 || r.Resource >= NumRlimits {
			return fmt.Errorf("%s %d: not a Linux resource id; use 0..%d", n("Rlimits", i, "Resource"), r.Resource, NumRlimits-1)
		}
		if j, ok := resources[r.Resource]; ok {
			return fmt.Errorf("%s %d: already set by %s", n("Rlimits", i, "Resource"), r.Resource, n("Rlimits", j, ""))
		}
		resources[r.Resource] = i
		if r.Soft > r.Hard {
			return fmt.Errorf("%s: soft limit %d exceeds hard limit %d; the kernel refuses that", n("Rlimits", i, ""), r.Soft, r.Hard)
		}
	}
	if e.Hostname != "" {
		if err := checkHostname(e.Hostname); err != nil {
			return fmt.Errorf("%s %q: %w", n("Hostname", -1, ""), e.Hostname, err)
		}
	}
	if e.User != "" {
		if _, _, err := ParseUser(e.User); err != nil {
			return fmt.Errorf("%s %q: %w", n("User", -1, ""), e.User, err)
		}
	}
	if e.HandoffInit != "" {
		if !strings.HasPrefix(e.HandoffInit, "/") {
			return fmt.Errorf("%s %q: must be an absolute path in the container rootfs", n("HandoffInit", -1, ""), e.HandoffInit)
		}
		if err := noControl(e.HandoffInit); err != nil {
			return fmt.Errorf("%s %q: %w", n("HandoffInit", -1, ""), e.HandoffInit, err)
		}
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{"HandoffInitArgs", e.HandoffInitArgs}, {"HandoffInitEnv", e.HandoffInitEnv}} {
		if len(l.v) > 0 && e.HandoffInit == "" {
			return fmt.Errorf("%s: set without %s; set the init program too or drop the list", n(l.name, -1, ""), n("HandoffInit", -1, ""))
		}
		for j, s := range l.v {
			if !utf8.ValidString(s) {
				return fmt.Errorf("%s %q: not valid UTF-8", n(l.name, j, ""), s)
			}
			if strings.IndexByte(s, 0) >= 0 {
				return fmt.Errorf("%s %q: contains NUL, which execve cannot pass", n(l.name, j, ""), s)
			}
		}
	}
	return nil
}

// checkTmpfs checks the fields of t, entry i of the list name.
func checkTmpfs(t Tmpfs, name string, i int, n namer) error {
	if err := checkGuestPath(t.GuestPath); err != nil {
		return fmt.Errorf("%s %q: %w", n(name, i, "GuestPath"), t.GuestPath, err)
	}
	if t.SizeBytes < 0 {
		return fmt.Errorf("%s %d: must not be negative (0 = kernel default)", n(name, i, "SizeBytes"), t.SizeBytes)
	}
	if t.Mode > 0o7777 {
		return fmt.Errorf("%s %#o: must be at most 07777 (permission and sticky/setid bits only)", n(name, i, "Mode"), t.Mode)
	}
	seen := map[string]bool{}
	for j, o := range t.Options {
		if !isTmpfsFlag(o) {
			return fmt.Errorf("%s[%d] %q: not a tmpfs flag; use one of %s", n(name, i, "Options"), j, o, strings.Join(TmpfsFlags, ","))
		}
		if seen[o] {
			return fmt.Errorf("%s[%d] %q: given twice", n(name, i, "Options"), j, o)
		}
		seen[o] = true
	}
	return nil
}

// ParseUser splits "uid:gid" into numbers. It accepts only canonical decimal
// so that the text round-trips.
func ParseUser(s string) (uid, gid uint32, err error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, errors.New(`must be "uid:gid"`)
	}
	uid, err = parseUint32(u)
	if err != nil {
		return 0, 0, fmt.Errorf("uid: %w", err)
	}
	gid, err = parseUint32(g)
	if err != nil {
		return 0, 0, fmt.Errorf("gid: %w", err)
	}
	return uid, gid, nil
}

func parseUint32(s string) (uint32, error) {
	v, err := parseCanonicalUint(s, 32)
	return uint32(v), err
}

// parseCanonicalUint parses a decimal without sign or leading zeros.
func parseCanonicalUint(s string, bits int) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return 0, fmt.Errorf("%q out of range for %d bits", s, bits)
		}
		return 0, fmt.Errorf("%q is not a decimal number", s)
	}
	if strconv.FormatUint(v, 10) != s {
		return 0, fmt.Errorf("%q: write it without leading zeros", s)
	}
	return v, nil
}

func checkTag(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > MaxTagLen {
		return fmt.Errorf("longer than %d bytes (virtio-blk serial limit); use mounts.Tag", MaxTagLen)
	}
	for i := 0; i < len(s); i++ {
		if !isTagByte(s[i]) {
			return fmt.Errorf("byte %q not allowed; tags use [A-Za-z0-9._-]", s[i])
		}
	}
	return nil
}

func isTagByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

func checkGuestPath(p string) error {
	if p == "" {
		return errors.New("must not be empty")
	}
	if !strings.HasPrefix(p, "/") {
		return errors.New("must be absolute")
	}
	if path.Clean(p) != p {
		return fmt.Errorf("must be clean (%q)", path.Clean(p))
	}
	if i := strings.IndexAny(p, ":;,="); i >= 0 {
		return fmt.Errorf("contains %q, a separator of the boot env grammar", p[i])
	}
	return noControl(p)
}

// CheckFileName reports whether name can be the Name of a FileMount: not
// empty, not "." or "..", and without '/', ':', ';' or control bytes. The
// host checks it when it classifies and stages a single-file bind, so a bad
// name fails early with the user's mount in the message.
func CheckFileName(name string) error { return checkName(name) }

func checkName(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if s == "." || s == ".." {
		return errors.New(`must not be "." or ".."`)
	}
	if i := strings.IndexAny(s, "/:;"); i >= 0 {
		return fmt.Errorf("contains %q; a staged file name cannot contain '/', ':' or ';'", s[i])
	}
	return noControl(s)
}

func checkFSType(s string) error {
	for i := 0; i < len(s); i++ {
		if !isTagByte(s[i]) {
			return fmt.Errorf("byte %q not allowed; filesystem types use [A-Za-z0-9._-]", s[i])
		}
	}
	return nil
}

func checkDiskOption(o string) error {
	if o == "" {
		return errors.New("must not be empty")
	}
	if o == "ro" || o == "rw" {
		return errors.New("set ReadOnly instead of passing ro/rw as an option")
	}
	if i := strings.IndexAny(o, ",:;"); i >= 0 {
		return fmt.Errorf("contains %q, a separator of the boot env grammar", o[i])
	}
	return noControl(o)
}

func checkHostname(s string) error {
	if len(s) > MaxHostnameLen {
		return fmt.Errorf("longer than %d bytes (HOST_NAME_MAX)", MaxHostnameLen)
	}
	return noControl(s)
}

// noControl refuses NUL, newlines and other control bytes: they break the
// environment block, the kernel command line or log lines.
func noControl(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return fmt.Errorf("contains control byte %q", s[i])
		}
	}
	return nil
}

func isTmpfsFlag(s string) bool {
	for _, f := range TmpfsFlags {
		if s == f {
			return true
		}
	}
	return false
}

// encodeStrings is the text of HandoffInitArgs/Env: compact JSON without
// HTML escaping, in unpadded base64url so it needs no quoting anywhere.
func encodeStrings(v []string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // []string always encodes
	return base64.RawURLEncoding.EncodeToString(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

func decodeStrings(s string) ([]string, error) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not unpadded base64url: %w", err)
	}
	var v []string
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("not a JSON array of strings: %w", err)
	}
	if len(v) == 0 {
		return nil, errors.New("empty list; omit the key instead")
	}
	return v, nil
}
