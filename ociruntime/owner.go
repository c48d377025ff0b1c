package ociruntime

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/vmm"
)

// A container whose spec names a namespace of another msb container under
// the same --root joins that container's VM (ADR 024): Podman's pod
// members name their infra container's namespaces by the pid
// msb-runtime reported for it (its VMM), or by the network namespace's
// bind-mounted path.

// findOwner returns the running container under o.Root whose VM spec
// joins (launch.FindJoin), and the namespace types it joins there; nil
// when spec names no msb container's namespace. A member's pid process
// names its owner's VM. Only host-owned records (in the --root state
// dirs) and /proc are read; nothing the guest can write names the owner.
func findOwner(ctx context.Context, o Options, spec *specs.Spec) (*container, []specs.LinuxNamespaceType, error) {
	if !launch.NamesNamespaces(spec) {
		return nil, nil, nil
	}
	var cands []launch.JoinCandidate
	for _, c := range liveContainers(o) {
		vm := c.rec.ID
		if c.rec.Owner != "" {
			vm = c.rec.Owner
		}
		cands = append(cands, launch.JoinCandidate{ID: c.rec.ID, VM: vm, Pid: c.rec.Pid})
	}
	id, joined, err := launch.FindJoin(spec, cands)
	if id == "" || err != nil {
		return nil, nil, err
	}
	owner, err := load(o, id)
	if err != nil || !owner.vmmAlive() {
		return nil, nil, fmt.Errorf("linux.namespaces: the spec names a pod member of container %q, whose VM is gone", id)
	}
	if !owner.rec.Pod {
		return nil, nil, fmt.Errorf("linux.namespaces: container %q was created without a pod share (by an older msb-runtime): no other container can join its VM; recreate it", owner.rec.ID)
	}
	if st := owner.status(ctx); st != statusRunning && st != statusCreated && st != statusPaused {
		return nil, nil, fmt.Errorf("linux.namespaces: container %q, whose namespaces the spec joins, is %s: start it first", owner.rec.ID, st)
	}
	return owner, joined, nil
}

// liveContainers are the containers under o.Root whose pid process runs.
func liveContainers(o Options) []*container {
	recs, _ := filepath.Glob(filepath.Join(vmm.StateDirPath(o.Root, "*"), recordFile))
	var out []*container
	for _, r := range recs {
		c, err := load(o, filepath.Base(filepath.Dir(r)))
		if err == nil && c.vmmAlive() {
			out = append(out, c)
		}
	}
	return out
}

// liveMembers are the ids of the containers that joined owner's VM and
// whose pid process still runs.
func liveMembers(o Options, owner string) []string {
	var ids []string
	for _, c := range liveContainers(o) {
		if c.rec.Owner == owner {
			ids = append(ids, c.rec.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// errLiveMembers refuses the delete of a container whose VM members
// still run in.
func errLiveMembers(id string, members []string) error {
	return fmt.Errorf("container %q holds the VM of pod members that still run (%s): stop and delete them first (podman pod stop and pod rm do)", id, strings.Join(members, ", "))
}
