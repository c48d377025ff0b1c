package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/relayio"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// runc's lifecycle commands, as Podman (conmon), CRI-O, Docker 20.10 and
// containerd's runc shim call them.

func lifecycleCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:      "create",
			Usage:     "create a container in a new VM; its pid (the VMM process) exits with the container",
			ArgsUsage: "<container-id>",
			Flags: append(createFlags(),
				&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Hidden: true, Usage: "accepted: create always detaches"}),
			Action: func(c *cli.Context) error {
				o, id, err := withID(c)
				if err != nil {
					return err
				}
				return Create(ctxOf(c), o, id, createOptions(c), relayio.Files())
			},
		},
		{
			Name: "start", Usage: "start a created container", ArgsUsage: "<container-id>",
			Action: func(c *cli.Context) error {
				o, id, err := withID(c)
				if err != nil {
					return err
				}
				return Start(ctxOf(c), o, id)
			},
		},
		{
			Name: "state", Usage: "print a container's state as JSON", ArgsUsage: "<container-id>",
			Action: func(c *cli.Context) error {
				o, id, err := withID(c)
				if err != nil {
					return err
				}
				st, err := State(ctxOf(c), o, id)
				if err != nil {
					return err
				}
				return printJSON(c.App.Writer, st)
			},
		},
		{
			Name: "kill", Usage: "signal a container's init (default SIGTERM)", ArgsUsage: "<container-id> [signal]",
			Flags: []cli.Flag{&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "signal all of the container's processes"}},
			Action: func(c *cli.Context) error {
				o, err := options(c)
				if err != nil {
					return err
				}
				if c.NArg() < 1 || c.NArg() > 2 {
					return fmt.Errorf("kill needs a container id and at most a signal, got %d arguments", c.NArg())
				}
				sig := syscall.SIGTERM
				if c.NArg() == 2 {
					if sig, err = parseSignal(c.Args().Get(1)); err != nil {
						return err
					}
				}
				return Kill(ctxOf(c), o, c.Args().First(), sig, c.Bool("all"))
			},
		},
		{
			Name: "delete", Usage: "delete a stopped or created container (--force: any)", ArgsUsage: "<container-id>",
			Flags: []cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "stop a running container's VM first"}},
			Action: func(c *cli.Context) error {
				o, id, err := withID(c)
				if err != nil {
					return err
				}
				return Delete(ctxOf(c), o, id, c.Bool("force"))
			},
		},
		execCommand(),
		{
			Name: "exec-relay", Hidden: true, Usage: "an exec's host process (started by msb-runtime exec --detach)",
			Action: func(c *cli.Context) error {
				if code := ExecRelay(ctxOf(c)); code != 0 {
					return exitError{code: code}
				}
				return nil
			},
		},
		{
			Name: "member-relay", Hidden: true, Usage: "a pod member's pid (started by msb-runtime create, ADR 024)",
			Action: func(c *cli.Context) error {
				if code := MemberRelay(ctxOf(c)); code != 0 {
					return exitError{code: code}
				}
				return nil
			},
		},
		{
			Name: "ps", Usage: "the container's host processes", ArgsUsage: "<container-id> [ps options]",
			Flags: []cli.Flag{&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "table", Usage: "table or json"}},
			Action: func(c *cli.Context) error {
				o, err := options(c)
				if err != nil {
					return err
				}
				if c.NArg() < 1 {
					return errors.New("ps needs a container id")
				}
				pids, err := Pids(ctxOf(c), o, c.Args().First())
				if err != nil {
					return err
				}
				switch c.String("format") {
				case "json":
					return json.NewEncoder(c.App.Writer).Encode(pids)
				case "table":
					return PsTable(c.App.Writer, pids, c.Args().Slice()[1:])
				}
				return fmt.Errorf("--format %q: use table or json", c.String("format"))
			},
		},
		{
			Name: "list", Aliases: []string{"ls"}, Usage: "list the containers under --root",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "table", Usage: "table or json"},
				&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "ids only"},
			},
			Action: func(c *cli.Context) error {
				o, err := options(c)
				if err != nil {
					return err
				}
				states, err := List(ctxOf(c), o)
				if err != nil {
					return err
				}
				return PrintList(c.App.Writer, states, c.String("format"), c.Bool("quiet"))
			},
		},
		idCommand("pause", "freeze a container's processes", Pause),
		idCommand("resume", "thaw a paused container's processes", Resume),
		updateCommand(),
		{
			Name: "events", Usage: "a container's stats as JSON events", ArgsUsage: "<container-id>",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "stats", Usage: "print the stats once and exit"},
				&cli.DurationFlag{Name: "interval", Value: 5 * time.Second, Usage: "time between stats events"},
			},
			Action: func(c *cli.Context) error {
				o, id, err := withID(c)
				if err != nil {
					return err
				}
				return Events(ctxOf(c), o, id, c.Bool("stats"), c.Duration("interval"), c.App.Writer)
			},
		},
	}
}

func execCommand() *cli.Command {
	return &cli.Command{
		Name:      "exec",
		Usage:     "run a process in a running container's VM",
		ArgsUsage: "<container-id> [command args...]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "process", Aliases: []string{"p"}, Usage: "JSON file with the process (else the command and the flags)"},
			&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "return once it runs; its pid (a relay process) exits with it"},
			&cli.StringFlag{Name: "pid-file", Usage: "write the process's pid here"},
			&cli.StringFlag{Name: "console-socket", Usage: "Unix socket that receives the pty master"},
			&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "give the process a terminal"},
			&cli.StringFlag{Name: "cwd", Usage: "working directory in the container"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "KEY=VALUE added to the environment"},
			&cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "uid[:gid]"},
			&cli.BoolFlag{Name: "no-new-privs", Usage: "accepted"},
			&cli.StringSliceFlag{Name: "cap", Aliases: []string{"c"}, Usage: "not supported: use --process"},
		},
		Action: func(c *cli.Context) error {
			o, err := options(c)
			if err != nil {
				return err
			}
			if c.NArg() < 1 {
				return errors.New("exec needs a container id")
			}
			if len(c.StringSlice("cap")) > 0 {
				return errors.New("--cap: give the capabilities in --process instead")
			}
			eo := ExecOptions{
				Process: c.String("process"), Args: c.Args().Slice()[1:], Env: c.StringSlice("env"),
				Cwd: c.String("cwd"), User: c.String("user"), Tty: c.Bool("tty"), Detach: c.Bool("detach"),
				PidFile: c.String("pid-file"), ConsoleSocket: c.String("console-socket"),
			}
			code, err := Exec(ctxOf(c), o, c.Args().First(), eo, relayio.Files())
			if err != nil {
				return exitError{code: max(code, 1), err: err}
			}
			if code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
}

func updateCommand() *cli.Command {
	return &cli.Command{
		Name:      "update",
		Usage:     "update a container's resource limits in its VM",
		ArgsUsage: "<container-id>",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "resources", Aliases: []string{"r"}, Usage: "JSON LinuxResources file, - for stdin"},
			&cli.StringFlag{Name: "memory", Usage: "memory limit (bytes, or with k/m/g)"},
			&cli.StringFlag{Name: "memory-reservation", Usage: "memory soft limit"},
			&cli.StringFlag{Name: "memory-swap", Usage: "memory plus swap limit"},
			&cli.StringFlag{Name: "cpu-period", Usage: "CPU CFS period (µs)"},
			&cli.StringFlag{Name: "cpu-quota", Usage: "CPU CFS quota (µs)"},
			&cli.StringFlag{Name: "cpu-share", Usage: "CPU shares"},
			&cli.StringFlag{Name: "cpuset-cpus", Usage: "CPUs to use"},
			&cli.StringFlag{Name: "cpuset-mems", Usage: "memory nodes to use"},
			&cli.StringFlag{Name: "pids-limit", Usage: "maximum number of pids"},
			&cli.StringFlag{Name: "blkio-weight", Usage: "block IO weight"},
		},
		Action: func(c *cli.Context) error {
			o, id, err := withID(c)
			if err != nil {
				return err
			}
			r, err := updateResources(c)
			if err != nil {
				return err
			}
			return Update(ctxOf(c), o, id, r)
		},
	}
}

// updateResources reads --resources, then applies the flags over it.
func updateResources(c *cli.Context) (*specs.LinuxResources, error) {
	r := &specs.LinuxResources{}
	if p := c.String("resources"); p != "" {
		var in io.Reader = os.Stdin
		if p != "-" {
			f, err := os.Open(p)
			if err != nil {
				return nil, fmt.Errorf("--resources: %w", err)
			}
			defer f.Close()
			in = f
		}
		if err := json.NewDecoder(in).Decode(r); err != nil {
			return nil, fmt.Errorf("--resources: %w", err)
		}
	}
	num := func(name string, set func(int64)) error {
		v := c.String(name)
		if v == "" {
			return nil
		}
		n, err := parseSize(v)
		if err != nil {
			return fmt.Errorf("--%s %q: %w", name, v, err)
		}
		set(n)
		return nil
	}
	mem := func() *specs.LinuxMemory {
		if r.Memory == nil {
			r.Memory = &specs.LinuxMemory{}
		}
		return r.Memory
	}
	cpu := func() *specs.LinuxCPU {
		if r.CPU == nil {
			r.CPU = &specs.LinuxCPU{}
		}
		return r.CPU
	}
	err := errors.Join(
		num("memory", func(n int64) { mem().Limit = &n }),
		num("memory-reservation", func(n int64) { mem().Reservation = &n }),
		num("memory-swap", func(n int64) { mem().Swap = &n }),
		num("cpu-period", func(n int64) { u := uint64(n); cpu().Period = &u }),
		num("cpu-quota", func(n int64) { cpu().Quota = &n }),
		num("cpu-share", func(n int64) { u := uint64(n); cpu().Shares = &u }),
		num("pids-limit", func(n int64) { r.Pids = &specs.LinuxPids{Limit: &n} }),
		num("blkio-weight", func(n int64) { w := uint16(n); r.BlockIO = &specs.LinuxBlockIO{Weight: &w} }),
	)
	if v := c.String("cpuset-cpus"); v != "" {
		cpu().Cpus = v
	}
	if v := c.String("cpuset-mems"); v != "" {
		cpu().Mems = v
	}
	return r, err
}

// parseSize reads a number with an optional k, m or g suffix (powers of 1024).
func parseSize(s string) (int64, error) {
	s = strings.TrimSuffix(strings.ToLower(s), "b")
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		}
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errors.New("want a number, optionally with k, m or g")
	}
	return n * mult, nil
}

// parseSignal reads a signal as runc does: a number, or a name with or
// without SIG.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

func idCommand(name, usage string, fn func(context.Context, Options, string) error) *cli.Command {
	return &cli.Command{Name: name, Usage: usage, ArgsUsage: "<container-id>",
		Action: func(c *cli.Context) error {
			o, id, err := withID(c)
			if err != nil {
				return err
			}
			return fn(ctxOf(c), o, id)
		}}
}

// createFlags are runc create's, which run takes too.
func createFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "bundle", Aliases: []string{"b"}, Value: ".", Usage: "bundle directory"},
		&cli.StringFlag{Name: "pid-file", Usage: "write the container's pid here"},
		&cli.StringFlag{Name: "console-socket", Usage: "Unix socket that receives the pty master (process.terminal)"},
		&cli.BoolFlag{Name: "no-pivot", Usage: "accepted: the guest sets up its own root"},
		&cli.BoolFlag{Name: "no-new-keyring", Usage: "accepted: keyrings are the guest kernel's"},
		&cli.IntFlag{Name: "preserve-fds", Usage: "must be 0: host fds cannot enter a VM"},
	}
}

func createOptions(c *cli.Context) CreateOptions {
	return CreateOptions{Bundle: c.String("bundle"), PidFile: c.String("pid-file"),
		ConsoleSocket: c.String("console-socket"), PreserveFDs: c.Int("preserve-fds")}
}

// withID is the options and the one container id of a command.
func withID(c *cli.Context) (Options, string, error) {
	if c.NArg() != 1 {
		return Options{}, "", fmt.Errorf("%s needs exactly one container id, got %d arguments", c.Command.Name, c.NArg())
	}
	o, err := options(c)
	return o, c.Args().First(), err
}

func ctxOf(c *cli.Context) context.Context {
	return log.WithLogger(c.Context, log.L)
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
