package bootenv

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Parse decodes the boot env from "KEY=VALUE" strings. Strings whose key does
// not start with Prefix are ignored (the guest's environment carries other
// variables too); an unknown MSB_ key, a key given twice, an empty value or
// any non-canonical text is an error naming the key, the entry index and the
// field, because a typo here would otherwise silently drop a mount.
func Parse(env []string) (Env, error) {
	var e Env
	seen := map[string]bool{}
	for _, kv := range env {
		if !strings.HasPrefix(kv, Prefix) {
			continue
		}
		key, val, ok := strings.Cut(kv, "=")
		if !ok {
			return Env{}, fmt.Errorf("%q: missing '='; boot env entries are KEY=VALUE", kv)
		}
		if seen[key] {
			return Env{}, fmt.Errorf("%s: given twice", key)
		}
		seen[key] = true
		if val == "" {
			return Env{}, fmt.Errorf("%s: empty value; omit the key instead", key)
		}
		if err := e.parseKey(key, val); err != nil {
			return Env{}, err
		}
	}
	if err := e.validate(keyNames); err != nil {
		return Env{}, err
	}
	// Everything accepted must re-encode to the same text: this catches any
	// non-canonical spelling the field parsers let through.
	canon := e.encodeValues()
	for _, kv := range env {
		if !strings.HasPrefix(kv, Prefix) {
			continue
		}
		key, val, _ := strings.Cut(kv, "=")
		if canon[key] != val {
			return Env{}, fmt.Errorf("%s: not in canonical form; expected %q", key, canon[key])
		}
	}
	return e, nil
}

func (e *Env) parseKey(key, val string) error {
	switch key {
	case KeyDirMounts:
		return eachEntry(key, val, func(i int, fs []string) error {
			if len(fs) < 2 || len(fs) > 3 {
				return fmt.Errorf("has %d fields; want tag:/guest/path[:ro]", len(fs))
			}
			d := DirMount{Tag: fs[0], GuestPath: fs[1]}
			if len(fs) == 3 {
				if err := roField(fs[2]); err != nil {
					return fieldErr(2, "ro", fs[2], err)
				}
				d.ReadOnly = true
			}
			e.DirMounts = append(e.DirMounts, d)
			return nil
		})
	case KeyFileMounts:
		return eachEntry(key, val, func(i int, fs []string) error {
			if len(fs) < 3 || len(fs) > 4 {
				return fmt.Errorf("has %d fields; want tag:name:/guest/path[:ro]", len(fs))
			}
			f := FileMount{Tag: fs[0], Name: fs[1], GuestPath: fs[2]}
			if len(fs) == 4 {
				if err := roField(fs[3]); err != nil {
					return fieldErr(3, "ro", fs[3], err)
				}
				f.ReadOnly = true
			}
			e.FileMounts = append(e.FileMounts, f)
			return nil
		})
	case KeyDiskMounts:
		return eachEntry(key, val, func(i int, fs []string) error {
			if len(fs) < 3 || len(fs) > 5 {
				return fmt.Errorf("has %d fields; want tag:/guest/path:fstype[:ro][:opt,opt]", len(fs))
			}
			d := DiskMount{Tag: fs[0], GuestPath: fs[1], FSType: fs[2]}
			rest := fs[3:]
			if len(rest) > 0 && (rest[0] == "ro" || len(rest) == 2) {
				if err := roField(rest[0]); err != nil {
					return fieldErr(3, "ro", rest[0], err)
				}
				d.ReadOnly = true
				rest = rest[1:]
			}
			if len(rest) == 1 {
				if rest[0] == "" {
					return fieldErr(len(fs)-1, "options", "", errors.New("empty; omit the field instead"))
				}
				d.Options = strings.Split(rest[0], ",")
			}
			e.DiskMounts = append(e.DiskMounts, d)
			return nil
		})
	case KeyTmpfs, KeyPodTmpfs:
		return eachEntry(key, val, func(i int, fs []string) error {
			if len(fs) > 2 {
				return fmt.Errorf("has %d fields; want /guest/path[:size=N,mode=0NNN,flag,...]", len(fs))
			}
			t := Tmpfs{GuestPath: fs[0]}
			if len(fs) == 2 {
				if err := parseTmpfsOptions(&t, fs[1]); err != nil {
					return fieldErr(1, "options", fs[1], err)
				}
			}
			if key == KeyPodTmpfs {
				e.PodTmpfs = append(e.PodTmpfs, t)
			} else {
				e.Tmpfs = append(e.Tmpfs, t)
			}
			return nil
		})
	case KeyRlimits:
		for i, ent := range strings.Split(val, ";") {
			r, err := parseRlimit(ent)
			if err != nil {
				return fmt.Errorf("%s entry %d %q: %w", key, i, ent, err)
			}
			e.Rlimits = append(e.Rlimits, r)
		}
		return nil
	case KeyHostname:
		e.Hostname = val
	case KeyUser:
		e.User = val
	case KeyHandoffInit:
		e.HandoffInit = val
	case KeyHandoffInitArgs, KeyHandoffInitEnv:
		v, err := decodeStrings(val)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if key == KeyHandoffInitArgs {
			e.HandoffInitArgs = v
		} else {
			e.HandoffInitEnv = v
		}
	default:
		return fmt.Errorf("%s: unknown boot env key (known: %s)", key, strings.Join(Keys(), ", "))
	}
	return nil
}

// Keys lists every key this package understands, sorted.
func Keys() []string {
	return []string{KeyDirMounts, KeyDiskMounts, KeyFileMounts, KeyHandoffInit, KeyHandoffInitArgs,
		KeyHandoffInitEnv, KeyHostname, KeyPodTmpfs, KeyRlimits, KeyTmpfs, KeyUser}
}

// eachEntry splits a list value into entries and fields, and names the key
// and entry index in any error the callback returns.
func eachEntry(key, val string, fn func(i int, fields []string) error) error {
	for i, ent := range strings.Split(val, ";") {
		if ent == "" {
			return fmt.Errorf("%s entry %d: empty entry (stray ';')", key, i)
		}
		if err := fn(i, strings.Split(ent, ":")); err != nil {
			return fmt.Errorf("%s entry %d %q: %w", key, i, ent, err)
		}
	}
	return nil
}

func fieldErr(i int, name, val string, err error) error {
	return fmt.Errorf("field %d (%s) %q: %w", i, name, val, err)
}

func roField(s string) error {
	if s != "ro" {
		return errors.New(`must be "ro" (omit the field for read-write)`)
	}
	return nil
}

// parseTmpfsOptions reads size=, mode= and flags, in that order, the order
// Encode writes them.
func parseTmpfsOptions(t *Tmpfs, s string) error {
	const (
		wantSize = iota
		wantMode
		wantFlags
	)
	state := wantSize
	for j, o := range strings.Split(s, ",") {
		switch {
		case strings.HasPrefix(o, "size="):
			if state > wantSize {
				return fmt.Errorf("option %d %q: size= must come first", j, o)
			}
			v, err := parseCanonicalUint(strings.TrimPrefix(o, "size="), 63)
			if err != nil {
				return fmt.Errorf("option %d: size in bytes: %w", j, err)
			}
			if v == 0 {
				return fmt.Errorf("option %d: size=0; omit it for the kernel default", j)
			}
			t.SizeBytes = int64(v)
			state = wantMode
		case strings.HasPrefix(o, "mode="):
			if state > wantMode {
				return fmt.Errorf("option %d %q: mode= must come before the flags", j, o)
			}
			m, err := parseMode(strings.TrimPrefix(o, "mode="))
			if err != nil {
				return fmt.Errorf("option %d: %w", j, err)
			}
			t.Mode = m
			state = wantFlags
		default:
			if !isTmpfsFlag(o) {
				return fmt.Errorf("option %d %q: unknown; use size=, mode= or one of %s", j, o, strings.Join(TmpfsFlags, ","))
			}
			t.Options = append(t.Options, o)
			state = wantFlags
		}
	}
	return nil
}

func parseMode(s string) (uint32, error) {
	if len(s) < 2 || s[0] != '0' {
		return 0, fmt.Errorf("mode %q: write it in octal with one leading 0 (e.g. 0755)", s)
	}
	v, err := strconv.ParseUint(s[1:], 8, 32)
	if err != nil || v == 0 || v > 0o7777 || formatMode(uint32(v)) != s {
		return 0, fmt.Errorf("mode %q: want an octal mode 01..07777 with one leading 0 (e.g. 0755); omit it for the default", s)
	}
	return uint32(v), nil
}

func parseRlimit(s string) (Rlimit, error) {
	res, limits, ok := strings.Cut(s, "=")
	if !ok {
		return Rlimit{}, errors.New("want resource=soft:hard")
	}
	soft, hard, ok := strings.Cut(limits, ":")
	if !ok {
		return Rlimit{}, errors.New("want resource=soft:hard")
	}
	r, err := parseCanonicalUint(res, 8)
	if err != nil {
		return Rlimit{}, fmt.Errorf("resource: %w", err)
	}
	sv, err := parseCanonicalUint(soft, 64)
	if err != nil {
		return Rlimit{}, fmt.Errorf("soft: %w", err)
	}
	hv, err := parseCanonicalUint(hard, 64)
	if err != nil {
		return Rlimit{}, fmt.Errorf("hard: %w", err)
	}
	return Rlimit{Resource: int(r), Soft: sv, Hard: hv}, nil
}
