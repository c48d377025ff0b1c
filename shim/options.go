package shim

import (
	"fmt"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/msb-dev/msb/config"
)

// loadConfig picks the msb config for one container. containerd passes a
// runtime's `options` table as runtimeoptions.v1.Options: config_path names
// a config.toml of that runtime (e.g. a second runtime entry for bigger
// VMs), config_body carries one inline. Without them, /etc/msb/config.toml.
func loadConfig(opts *anypb.Any) (config.Config, error) {
	if opts == nil || opts.TypeUrl == "" {
		return config.Load(config.DefaultPath)
	}
	if opts.MessageIs(&runcoptions.Options{}) {
		// CRI's task options for a container with a user namespace: the
		// host owner of its stdio (IoUid, IoGid), which runc's shim gives
		// its pipes. msb's pipes are the guest's, owned by the process's
		// user mapped by the spec (agent), and the shim opens the fifos
		// itself: nothing to apply; the config is the default one.
		return config.Load(config.DefaultPath)
	}
	var ro runtimeoptions.Options
	if err := opts.UnmarshalTo(&ro); err != nil {
		return config.Config{}, fmt.Errorf("runtime options of type %s: msb reads runtimeoptions.v1.Options (options.ConfigPath / ConfigBody in the containerd runtime entry): %w", opts.TypeUrl, errdefs.ErrInvalidArgument)
	}
	switch {
	case ro.ConfigPath != "":
		return config.LoadRequired(ro.ConfigPath)
	case len(ro.ConfigBody) > 0:
		return config.Parse("runtime options ConfigBody", ro.ConfigBody)
	default:
		return config.Load(config.DefaultPath)
	}
}
