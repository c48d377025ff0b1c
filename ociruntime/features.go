package ociruntime

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/version"
	"github.com/msb-dev/msb/vmmproc"
)

// Annotations of `msb-runtime features`.
const (
	// FeatureBackends lists the backends this host can run, comma
	// separated, e.g. "libkrun,qemu"; empty when none.
	FeatureBackends = "io.msb.backends"
	// FeatureBackendPrefix + name: what was found for that backend (the
	// library or binary and the libkrun API level, or why it is missing).
	FeatureBackendPrefix = "io.msb.backend."
	// FeatureDefaultBackend is the configured backend (auto, qemu, libkrun).
	FeatureDefaultBackend = "io.msb.default-backend"
	// FeatureVersion is msb's version.
	FeatureVersion = "io.msb.version"
)

func init() {
	// urfave/cli has one version printer per program; msb-runtime is the
	// only App in its binary.
	cli.VersionPrinter = printVersion
}

// featuresCommand is runc's `features`: the runtime's capabilities as JSON
// (opencontainers/runtime-spec features schema), with the backends found.
func featuresCommand() *cli.Command {
	return &cli.Command{
		Name:  "features",
		Usage: "show the runtime's features and the VM backends found on this host, as JSON",
		Action: func(c *cli.Context) error {
			return writeFeatures(c.App.Writer, loadConfigOrDefault(c))
		},
	}
}

// loadConfigOrDefault reads --config; features and --version still answer
// with the defaults when the file is broken.
func loadConfigOrDefault(c *cli.Context) config.Config {
	cfg, err := config.Load(c.String("config"))
	if err != nil {
		return config.Default()
	}
	return cfg
}

var idmapEnabled = true

func writeFeatures(w io.Writer, cfg config.Config) error {
	backends := vmmproc.ProbeBackends(cfg.QEMU, "", cfg.Kernel)
	ann := map[string]string{
		FeatureVersion:        version.Version,
		FeatureDefaultBackend: cfg.Backend,
		FeatureBackends:       strings.Join(availableBackends(backends), ","),
	}
	for _, b := range backends {
		ann[FeatureBackendPrefix+b.Name] = b.Detail
	}
	f := features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		// containerd's CRI reads rro here for recursive read-only mounts.
		MountOptions: specconv.BindOptions(),
		// and "user" with idmap for pods with a user namespace: runc makes
		// it in the guest; id-mapped binds are made on the host (ADR 019).
		Linux: &features.Linux{
			Namespaces:      []string{"cgroup", "ipc", "mount", "network", "pid", "user", "uts"},
			MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &idmapEnabled}},
		},
		Annotations: ann,
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	return enc.Encode(f)
}

func availableBackends(bs []vmmproc.BackendStatus) []string {
	var out []string
	for _, b := range bs {
		if b.Available {
			out = append(out, b.Name)
		}
	}
	return out
}

// printVersion is `msb-runtime --version`, in runc's layout plus one line
// per backend.
func printVersion(c *cli.Context) {
	w := c.App.Writer
	fmt.Fprintf(w, "%s version %s\n", c.App.Name, c.App.Version)
	fmt.Fprintf(w, "spec: %s\n", specs.Version)
	fmt.Fprintf(w, "go: %s\n", runtime.Version())
	cfg := loadConfigOrDefault(c)
	for _, b := range vmmproc.ProbeBackends(cfg.QEMU, "", cfg.Kernel) {
		state := "available"
		if !b.Available {
			state = "not available"
		}
		fmt.Fprintf(w, "backend %s: %s: %s\n", b.Name, state, b.Detail)
	}
}
