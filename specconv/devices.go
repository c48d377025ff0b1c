package specconv

import (
	"fmt"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// standardDevices are the nodes every container gets; runc creates them in
// the guest from the guest kernel, so listing them passes nothing of the host.
var standardDevices = map[string]bool{
	"/dev/null": true, "/dev/zero": true, "/dev/full": true, "/dev/random": true,
	"/dev/urandom": true, "/dev/tty": true, "/dev/console": true, "/dev/ptmx": true,
}

// refuseHostDevices refuses host device nodes in linux.devices: `--device`
// (one or a few) and `--privileged`, for which containerd lists every
// device of the host. The guest has its own kernel and devices; a host
// node means nothing there.
func refuseHostDevices(spec *specs.Spec) error {
	var host []string
	first := -1
	for i, d := range spec.Linux.Devices {
		if !standardDevices[filepath.Clean(d.Path)] {
			if first < 0 {
				first = i
			}
			host = append(host, d.Path)
		}
	}
	const why = "a VM cannot use the host's device nodes (the guest kernel has its own devices)"
	switch {
	case len(host) == 0:
		return nil
	case len(host) <= 3:
		return fmt.Errorf("linux.devices[%d] %q: %s; remove it (docker/nerdctl: drop --device %s; only /dev/null, zero, full, random, urandom, tty, console and ptmx may be listed)",
			first, host[0], why, host[0])
	}
	return fmt.Errorf("linux.devices: %d host device nodes (%s, ...), as --privileged passes every host device; %s. "+
		"Run without --privileged (for its capabilities and no seccomp: --cap-add ALL --security-opt seccomp=unconfined); "+
		"for Kubernetes, set privileged_without_host_devices = true in the msb runtime's CRI config, so privileged pods get no host devices",
		len(host), strings.Join(host[:3], ", "), why)
}
