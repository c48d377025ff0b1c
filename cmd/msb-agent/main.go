// Command msb-agent is the msb guest agent: /init of the guest image. As PID
// 1 it is the init supervisor, which starts itself again as the agent
// proper. Started as "modprobe" (/sbin/modprobe links to /init) it is the
// kernel's module helper; with MSB_OOM_EXEC set it launches the OCI
// runtime with a container's OOM score (task.OOMExec). Run by hand (not
// PID 1) it serves the agent protocol on a Unix socket, one channel per
// connection, for development.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/agent"
	"github.com/msb-dev/msb/agent/modprobe"
	"github.com/msb-dev/msb/agent/task"
)

func main() {
	switch {
	case filepath.Base(os.Args[0]) == modprobe.Name:
		// /sbin/modprobe → /init: the kernel's request_module helper.
		os.Exit(modprobe.Main(os.Args[1:], os.Stderr))
	case os.Getenv(task.OOMExecEnv) != "":
		// The agent runs its OCI runtime through itself (crun exec).
		os.Exit(task.OOMExec(os.Args[1:]))
	case os.Getpid() == 1:
		agent.RunInit()
	case os.Getenv(agent.RoleEnv) == agent.RoleGuest:
		os.Exit(agent.RunGuest())
	}
	os.Exit(dev())
}

func dev() int {
	var opts agent.Options
	listen := flag.String("listen", "", "serve the agent protocol on this Unix socket (one yamux channel per connection)")
	flag.StringVar(&opts.RuntimePath, "runc", task.DefaultRuntimePath, "the OCI runtime binary, runc or crun (the image's runtime file names it)")
	flag.StringVar(&opts.RuntimeRoot, "runc-root", task.DefaultRuntimeRoot, "the OCI runtime's --root")
	flag.StringVar(&opts.BundleRoot, "bundle-root", task.DefaultBundleRoot, "directory of the container bundles")
	flag.Parse()
	if *listen == "" {
		fmt.Fprintln(os.Stderr, "msb-agent is the msb guest init; outside a VM run it with -listen SOCKET")
		flag.Usage()
		return 2
	}
	agent.SetupLogging()
	a, err := agent.New(opts)
	if err != nil {
		log.L.WithError(err).Error("agent")
		return 1
	}
	defer a.Close()
	defer a.KillAll()
	_ = os.Remove(*listen)
	l, err := net.Listen("unix", *listen)
	if err != nil {
		log.L.WithError(err).Error("listen")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); l.Close() }()
	log.L.Infof("serving on %s", *listen)
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return 0
			}
			log.L.WithError(err).Error("accept")
			return 1
		}
		go func() {
			defer c.Close()
			if err := a.Serve(ctx, c); err != nil {
				log.L.WithError(err).Warn("channel")
			}
		}()
	}
}
