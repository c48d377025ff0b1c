package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/relayio"

	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/version"
)

// exitError carries a container's exit code out of a command, and err
// when there is something to say (the VM died under the container).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("exit status %d", e.code)
}

// App is the msb-runtime command line, runc-compatible where runc has the
// same command.
func App() *cli.App {
	return &cli.App{
		Name:    "msb-runtime",
		Usage:   "run OCI containers, each in its own microVM (runc-compatible)",
		Version: version.Version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "root", Value: "/run/msb", Usage: "state root: per-container state and agent sockets"},
			&cli.StringFlag{Name: "log", Usage: "log file (default stderr)"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
			&cli.BoolFlag{Name: "debug", Usage: "debug logging"},
			&cli.BoolFlag{Name: "systemd-cgroup", Usage: "accepted for runc compatibility; cgroups live in the guest"},
			&cli.StringFlag{Name: "config", Value: config.DefaultPath, Usage: "msb config file"},
		},
		Before:         setupLogging,
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: append([]*cli.Command{
			specCommand(),
			{
				Name:      "run",
				Usage:     "create and run a container in a new VM, wiring stdio through",
				ArgsUsage: "<container-id>",
				Flags: append(createFlags(),
					&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "create and start, then return (the container's pid exits with it); --pid-file and --console-socket apply then"}),
				Action: runCommand,
			},
			featuresCommand(),
		}, lifecycleCommands()...),
	}
}

// Main runs the CLI with more commands (msb-runtime's own, vmmcmd) and
// returns the process exit code.
func Main(args []string, more ...*cli.Command) int {
	app := App()
	app.Commands = append(app.Commands, more...)
	err := app.Run(args)
	var ee exitError
	var ec cli.ExitCoder
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ec) && ec.Error() == "":
		return ec.ExitCode()
	case errors.As(err, &ee):
		if ee.err != nil {
			fmt.Fprintf(os.Stderr, "msb-runtime: %v\n", err)
			logError(err)
		}
		return ee.code
	default:
		fmt.Fprintf(os.Stderr, "msb-runtime: %v\n", err)
		logError(err)
		return 1
	}
}

// logToFile is set when --log names a file: errors go there too, as runc
// writes them (conmon and containerd's runc shim read them from it).
var logToFile bool

func logError(err error) {
	if logToFile {
		logrus.Error(err)
	}
}

func setupLogging(c *cli.Context) error {
	l := logrus.StandardLogger()
	if c.Bool("debug") {
		l.SetLevel(logrus.DebugLevel)
	}
	if c.String("log-format") == "json" {
		l.SetFormatter(&logrus.JSONFormatter{})
	}
	if p := c.String("log"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("--log %s: %w", p, err)
		}
		l.SetOutput(f)
		logToFile = true
	} else if c.Args().First() == "exec-relay" {
		// Its stderr is the exec's: keep the relay's own words out of it.
		l.SetOutput(io.Discard)
	}
	return nil
}

func options(c *cli.Context) (Options, error) {
	cfg, err := config.Load(c.String("config"))
	if err != nil {
		return Options{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return Options{}, fmt.Errorf("find own binary: %w", err)
	}
	root, err := filepath.Abs(c.String("root"))
	if err != nil {
		return Options{}, err
	}
	return Options{Root: root, Config: cfg, Self: self, Log: c.String("log"), LogFormat: c.String("log-format")}, nil
}

func runCommand(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("run needs exactly one container id, got %d arguments", c.NArg())
	}
	o, err := options(c)
	if err != nil {
		return err
	}
	ctx := log.WithLogger(context.Background(), log.L)
	co := createOptions(c)
	if !c.Bool("detach") && (co.PidFile != "" || co.ConsoleSocket != "" || co.PreserveFDs > 0) {
		return errors.New("run: --pid-file, --console-socket and --preserve-fds apply with --detach only (in the foreground the container uses this terminal and process)")
	}
	if c.Bool("detach") {
		id := c.Args().First()
		if err := Create(ctx, o, id, co, relayio.Files()); err != nil {
			return err
		}
		if err := Start(ctx, o, id); err != nil {
			if derr := Delete(ctx, o, id, true); derr != nil {
				log.G(ctx).WithError(derr).Warn("delete after a failed start")
			}
			return err
		}
		return nil
	}
	var in io.Reader = os.Stdin
	code, err := Run(ctx, o, c.String("bundle"), c.Args().First(), relayio.Stdio{In: in, Out: os.Stdout, Err: os.Stderr})
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code: code}
	}
	return nil
}
