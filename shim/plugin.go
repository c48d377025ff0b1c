package shim

import (
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
)

// RegisterPlugins registers the task service as the shim's ttrpc plugin,
// as runc's shim does; pkg/shim's RunShim then serves it.
func RegisterPlugins() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return newService(ic.Context, pp.(cshim.Publisher), ss.(shutdown.Service))
		},
	})
}

// BinaryOpts are the pkg/shim options the msb shim runs with. The shim's
// children are VMM processes and binary:// loggers, each waited for by
// the code that started it, so pkg/shim must not reap children behind
// their backs; orphans are not adopted either (a VMM's hypervisor dies
// with it).
func BinaryOpts() []cshim.BinaryOpts {
	return []cshim.BinaryOpts{func(c *cshim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	}}
}
