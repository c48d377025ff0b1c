package mounts

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A jailed qemu runs as root of a user namespace of its own (ADR 022): its
// ids 0-65535 are the VM's range of host ids, base..base+65535. A VM whose
// containers have a user namespace holds files owned by that namespace's
// host ids H… (a remapped snapshot, an id-mapped bind), and its guest uses
// those same ids: qemu's namespace then also maps each such range of host
// ids to itself, and its own range fills what is left of 0-65535. The
// kernel takes the map because both columns stay disjoint: kept ranges lie
// below JailIDBase (2^31) and the VM's range above it.

// IDRange is a range of host ids.
type IDRange struct {
	Start uint32 `json:"start"`
	Size  uint32 `json:"size"`
}

// KeptIDs are the host ids a jailed qemu's user namespace maps to
// themselves: the host ranges of a container user namespace's mappings.
type KeptIDs struct {
	UIDs []IDRange `json:"uids"`
	GIDs []IDRange `json:"gids"`
}

// jailIDLimit is where the jail's own ranges start (jail.IDBase): kept
// ranges end below it.
const jailIDLimit = 1 << 31

// KeptIDsOf returns the host ranges of uids and gids (a spec's
// linux.uidMappings and gidMappings) as ids a jailed qemu's namespace can
// map to themselves, or an error saying why it cannot: a range that holds
// host root or reaches msb's own ranges (from 2^31). nil, nil for none.
func KeptIDsOf(uids, gids []specs.LinuxIDMapping) (*KeptIDs, error) {
	if len(uids) == 0 && len(gids) == 0 {
		return nil, nil
	}
	conv := func(ms []specs.LinuxIDMapping) []IDRange {
		var rs []IDRange
		for _, m := range ms {
			rs = append(rs, IDRange{Start: m.HostID, Size: m.Size})
		}
		slices.SortFunc(rs, func(a, b IDRange) int { return cmp.Compare(a.Start, b.Start) })
		return rs
	}
	k := &KeptIDs{UIDs: conv(uids), GIDs: conv(gids)}
	if err := k.Check(); err != nil {
		return nil, err
	}
	return k, nil
}

// Check refuses kept ids a jailed qemu's namespace must not or cannot map
// to themselves: host root, msb's own ranges (from 2^31), empty, unsorted
// or overlapping ranges.
func (k *KeptIDs) Check() error {
	check := func(what string, rs []IDRange) error {
		for i, r := range rs {
			end := uint64(r.Start) + uint64(r.Size)
			switch {
			case r.Size == 0 || r.Start == 0 || end > jailIDLimit:
				return fmt.Errorf("%s host ids %d+%d: empty, holds host root or reaches msb's jail ids (from %d)", what, r.Start, r.Size, uint32(jailIDLimit))
			case i > 0 && uint64(rs[i-1].Start)+uint64(rs[i-1].Size) > uint64(r.Start):
				return fmt.Errorf("%s host ids %d+%d: overlaps or precedes %d+%d", what, r.Start, r.Size, rs[i-1].Start, rs[i-1].Size)
			}
		}
		return nil
	}
	if k == nil {
		return nil
	}
	if err := check("linux.uidMappings", k.UIDs); err != nil {
		return err
	}
	return check("linux.gidMappings", k.GIDs)
}

// Covers says whether k keeps every host id of uids and gids.
func (k *KeptIDs) Covers(uids, gids []specs.LinuxIDMapping) bool {
	in := func(rs []IDRange, ms []specs.LinuxIDMapping) bool {
		for _, m := range ms {
			if !slices.ContainsFunc(rs, func(r IDRange) bool {
				return r.Start <= m.HostID && uint64(m.HostID)+uint64(m.Size) <= uint64(r.Start)+uint64(r.Size)
			}) {
				return false
			}
		}
		return true
	}
	if k == nil {
		return len(uids) == 0 && len(gids) == 0
	}
	return in(k.UIDs, uids) && in(k.GIDs, gids)
}

// JailMap is the uid (or gid) map of a jailed qemu's user namespace whose
// range starts at base, with the host ranges kept (sorted, disjoint, below
// 2^31, no host root: KeptIDsOf): each kept range to itself, and the
// namespace's ids 0-65535 that no kept range covers to base plus the id.
// Entries are sorted by their namespace id; the first maps id 0.
func JailMap(base uint32, kept []IDRange) []specs.LinuxIDMapping {
	const size = 1 << 16
	var out []specs.LinuxIDMapping
	next := uint32(0) // the first namespace id below size not yet mapped
	for _, r := range kept {
		if r.Start > next && next < size {
			out = append(out, specs.LinuxIDMapping{ContainerID: next, HostID: base + next, Size: min(r.Start, size) - next})
		}
		out = append(out, specs.LinuxIDMapping{ContainerID: r.Start, HostID: r.Start, Size: r.Size})
		next = max(next, r.Start+r.Size)
	}
	if next < size {
		out = append(out, specs.LinuxIDMapping{ContainerID: next, HostID: base + next, Size: size - next})
	}
	return out
}

// jailMapList is JailMap in the "inner:host:size,…" form of GetUsernsFD,
// with hypervisorID for host root (the overlay's mounter, shifted.go).
func jailMapList(base uint32, kept []IDRange) string {
	var s []string
	for _, m := range JailMap(base, kept) {
		s = append(s, fmt.Sprintf("%d:%d:%d", m.ContainerID, m.HostID, m.Size))
	}
	return strings.Join(append(s, fmt.Sprintf("%d:0:1", uint32(hypervisorID))), ",")
}
