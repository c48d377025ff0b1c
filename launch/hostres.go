package launch

import (
	"errors"
	"fmt"
	"path"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/vmm"
)

// HostResources places the VMM process tree of spec's VM on the host
// (ADR 014): in the spec's linux.cgroupsPath, at the spec's oomScoreAdj
// (0 when it names none: not the shim's, which is containerd's + 1).
func HostResources(spec *specs.Spec, c config.Config) (*vmm.HostResources, error) {
	h := &vmm.HostResources{OverheadMiB: c.HostOverheadMiB}
	if spec.Process != nil && spec.Process.OOMScoreAdj != nil {
		h.OOMScoreAdj = *spec.Process.OOMScoreAdj
		if h.OOMScoreAdj < -1000 || h.OOMScoreAdj > 1000 {
			return nil, fmt.Errorf("process.oomScoreAdj %d: use -1000..1000", h.OOMScoreAdj)
		}
	}
	if spec.Linux == nil {
		return h, nil
	}
	p, err := CgroupfsPath(spec.Linux.CgroupsPath)
	if err != nil {
		return nil, fmt.Errorf("linux.cgroupsPath %q: %w", spec.Linux.CgroupsPath, err)
	}
	h.Cgroup = p
	if r := spec.Linux.Resources; r != nil && r.CPU != nil && r.CPU.Shares != nil {
		h.CPUShares = *r.CPU.Shares
	}
	return h, nil
}

// CgroupfsPath turns an OCI cgroupsPath into the cgroup's path below the
// root of each hierarchy; "" stays "" (no cgroup of its own).
//
//   - cgroupfs form: "/a/b"; a relative "a/b" is taken below the root too.
//   - systemd form "slice:prefix:name" (containerd's and Docker's systemd
//     cgroup driver; kubelet's "kubepods-burstable-pod<uid>.slice:
//     cri-containerd:<id>"): msb does not talk to systemd; it uses the
//     path systemd gives that unit, as runc's cgroupfs fallback does:
//     each dash-separated prefix of the slice is a parent slice, the unit
//     is "<prefix>-<name>.scope" (or name itself when it is a ".slice"),
//     and an empty slice is "system.slice". "a-b.slice:p:n" is
//     "/a.slice/a-b.slice/p-n.scope".
//
// ".." elements, the root itself and malformed systemd names are errors.
func CgroupfsPath(cgroupsPath string) (string, error) {
	if cgroupsPath == "" {
		return "", nil
	}
	if strings.ContainsRune(cgroupsPath, 0) {
		return "", errors.New("contains NUL")
	}
	p := cgroupsPath
	if strings.Contains(p, ":") {
		var err error
		if p, err = systemdPath(p); err != nil {
			return "", err
		}
	}
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return "", errors.New(`".." is not allowed: name a cgroup below the root`)
		}
	}
	p = path.Clean("/" + p)
	if p == "/" {
		return "", errors.New("names the root cgroup: name a cgroup of the container's own")
	}
	return p, nil
}

// systemdPath maps "slice:prefix:name" to the unit's cgroupfs path.
func systemdPath(s string) (string, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return "", errors.New(`has ":" but is not the systemd form "slice:prefix:name"`)
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice"
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return "", err
	}
	if name == "" || strings.Contains(name, "/") || strings.Contains(prefix, "/") {
		return "", fmt.Errorf("systemd unit prefix %q and name %q: name must be set, neither may contain /", prefix, name)
	}
	unit := name
	if !strings.HasSuffix(name, ".slice") {
		unit = name + ".scope"
		if prefix != "" {
			unit = prefix + "-" + unit
		}
	}
	return path.Join(dir, unit), nil
}

// expandSlice is the cgroup path of a systemd slice: "a-b-c.slice" lives
// in /a.slice/a-b.slice/a-b-c.slice; "-.slice" is the root.
func expandSlice(slice string) (string, error) {
	base, ok := strings.CutSuffix(slice, ".slice")
	if !ok || base == "" || strings.Contains(slice, "/") {
		return "", fmt.Errorf("systemd slice %q: must be a name ending in .slice, without /", slice)
	}
	if base == "-" {
		return "/", nil
	}
	dir, prefix := "/", ""
	for _, c := range strings.Split(base, "-") {
		if c == "" {
			return "", fmt.Errorf("systemd slice %q: empty component (a leading, trailing or double -)", slice)
		}
		prefix += c
		dir = path.Join(dir, prefix+".slice")
		prefix += "-"
	}
	return dir, nil
}
