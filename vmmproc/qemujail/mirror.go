package qemujail

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/vmm"
)

// A VM's own propagated shares ("rslave", "rshared", …) see what the host
// mounts below their sources while the VM runs. With qemu in a user
// namespace of its own (ADR 022) a mount that propagated into an
// id-mapped bind would not be id-mapped, so the jail binds such a share's
// own mount alone, private (jail.Bind.Mirrored), and the VMM process keeps
// its submounts in step (mounts.MirrorBound): the one process that lives
// exactly as long as the VM on both paths, the shim's and msb-runtime's
// (whose CLI exits at once).

// jailBuiltTimeout bounds the wait for the jail helper to build the jail.
const jailBuiltTimeout = 30 * time.Second

// MirroredShares lists the shares of c whose submounts the VMM mirrors
// into the jail: propagated, id-mapped ones (none without a user
// namespace, userns nil, or in one that maps the host's ids, hostIDs).
func MirroredShares(c *vmm.LaunchConfig, userns *os.File, hostIDs bool) []vmm.Share {
	if userns == nil || hostIDs { // plain binds: mounts propagate
		return nil
	}
	var out []vmm.Share
	for _, s := range c.Shares {
		if s.Propagated && !s.Shifted {
			out = append(out, s)
		}
	}
	return out
}

// StartMirrors waits (bounded) until the jail helper pid says on built
// that the jail is built, then mirrors every share of shares into it,
// id-mapped for userns. On error it leaves no mirror running.
func StartMirrors(pid int, built *os.File, shares []vmm.Share, userns *os.File, logf io.Writer) ([]*mounts.Mirror, error) {
	if err := built.SetReadDeadline(time.Now().Add(jailBuiltTimeout)); err != nil {
		return nil, fmt.Errorf("jail: wait for it to be built: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(built, b[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errors.New("jail: the helper ended before the jail was built (vmm.log says why)")
		}
		return nil, fmt.Errorf("jail: wait for it to be built: %w", err)
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return nil, fmt.Errorf("jail: its mount namespace: %w", err)
	}
	defer ns.Close()
	warnf := func(format string, args ...any) { fmt.Fprintf(logf, "msb-vmm: "+format+"\n", args...) }
	var ms []*mounts.Mirror
	for _, s := range shares {
		access := mounts.Writable
		if s.ReadOnly {
			access = mounts.ReadOnlyRecursive
		}
		// The jail binds a share at its real path.
		real, err := filepath.EvalSymlinks(s.Path)
		var m *mounts.Mirror
		if err == nil {
			m, err = mounts.MirrorBound(ns, "/", strings.TrimPrefix(real, "/"), s.Path, access, &mounts.IDMap{NS: userns}, warnf)
		}
		if err != nil {
			StopMirrors(ms)
			return nil, fmt.Errorf("jail: share %s (propagated): %w", s.Path, err)
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// StopMirrors stops every mirror of ms.
func StopMirrors(ms []*mounts.Mirror) {
	for _, m := range ms {
		m.Stop()
	}
}
