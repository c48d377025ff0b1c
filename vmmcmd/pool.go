package vmmcmd

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/containerd/log"
	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/pool"
	"github.com/msb-dev/msb/template"
)

// poolCommand manages the shim's pool of booted VMs (ADR 020). The shim
// runs `pool fill` itself after each Create; an operator runs it to warm
// the pool up ahead of the first container, and `pool drain` to stop the
// idle VMs (before an uninstall, or after lowering pool_size).
func poolCommand() *cli.Command {
	rootFlag := &cli.StringFlag{Name: "pool-root", Value: config.PoolRoot(), Usage: "the pool's directory (the shim's state root + /pool: $MSB_SHIM_STATE_ROOT/pool or /run/msb/shim/pool)"}
	return &cli.Command{
		Name:  "pool",
		Usage: "the containerd shim's pool of booted VMs (warm start; pool_size in the config)",
		Subcommands: []*cli.Command{
			{
				Name:  "fill",
				Usage: "boot VMs until pool_size are parked (--config - reads the config from stdin)",
				Flags: []cli.Flag{rootFlag},
				Action: func(c *cli.Context) error {
					cfg, err := poolConfig(c.String("config"))
					if err != nil {
						return err
					}
					if !cfg.WarmStart() {
						return fmt.Errorf("pool fill: pool_size is 0 and template is false in %s: set pool_size (1..%d) to keep VMs booted, or template = true to keep a saved VM", c.String("config"), config.MaxPoolSize)
					}
					self, err := os.Executable()
					if err != nil {
						return err
					}
					p := pool.Pool{Root: c.String("pool-root"), Binary: self, Logf: log.L.Infof}
					return p.Fill(context.Background(), cfg)
				},
			},
			{
				Name:      "hold",
				Usage:     "hold a saved VM template (started by the VMM that saved it, with its files on fds 3 and 4)",
				ArgsUsage: "<template dir>",
				Hidden:    true,
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("pool hold: want one template dir, got %d arguments", c.NArg())
					}
					ram, state := os.NewFile(3, "template-ram"), os.NewFile(4, "template-state")
					if ram == nil || state == nil {
						return fmt.Errorf("pool hold: no template files on fds 3 and 4: this command is started by msb, not by hand")
					}
					return template.Hold(c.Args().First(), ram, state)
				},
			},
			{
				Name:  "drain",
				Usage: "stop every parked VM",
				Flags: []cli.Flag{rootFlag},
				Action: func(c *cli.Context) error {
					p := pool.Pool{Root: c.String("pool-root"), Logf: log.L.Infof}
					return p.Drain()
				},
			},
		},
	}
}

// poolConfig loads the config from path, or from stdin for "-" (the
// shim passes its own, which may come from containerd's runtime options).
func poolConfig(path string) (config.Config, error) {
	if path != "-" {
		return config.Load(path)
	}
	b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	if err != nil {
		return config.Config{}, fmt.Errorf("config from stdin: %w", err)
	}
	return config.Parse("stdin", b)
}
