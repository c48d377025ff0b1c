// Package vmmcmd holds msb-runtime's commands that are not runc's: the
// VMM process (`vmm`), the hypervisor's jail (`jail`), a claimed pool VM's
// task pid (`anchor`), all hidden and started by msb itself, and the
// operator's `pool` (ADR 020). cmd/msb-runtime adds them to the runc CLI
// (package ociruntime), which does not import them.
package vmmcmd

import (
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/view"
	"github.com/msb-dev/msb/vmmproc"
)

// Commands are msb-runtime's VMM-side commands and the pool's.
func Commands() []*cli.Command {
	return []*cli.Command{
		poolCommand(),
		{
			Name:      "vmm",
			ArgsUsage: "[runtime-dir (informational)]",
			Usage:     "the VMM process (started by msb, reads its config from fd 3)",
			Hidden:    true,
			Action: func(*cli.Context) error {
				return exit(vmmproc.Main(vmmproc.MainOptions{Container: superviseContainer}))
			},
		},
		{
			Name:      "anchor",
			ArgsUsage: "<rootfs>",
			Usage:     "holds a claimed pool VM's container's network namespace and view of its rootfs until its stdin closes (started by the shim)",
			Hidden:    true,
			Action: func(c *cli.Context) error {
				return exit(view.Run(c.Args().First(), func() int {
					_, _ = io.Copy(io.Discard, os.Stdin)
					return 0
				}))
			},
		},
		{
			Name:      "jail",
			ArgsUsage: "<plan-fd>",
			Usage:     "jails and execs the hypervisor (started by the VMM process, reads its plan from the fd)",
			Hidden:    true,
			Action: func(c *cli.Context) error {
				return exit(jail.Main(c.Args().First()))
			},
		},
	}
}

// exit makes a command's exit code msb-runtime's, with nothing printed:
// the command logged its own error.
func exit(code int) error {
	if code == 0 {
		return nil
	}
	return cli.Exit("", code)
}
