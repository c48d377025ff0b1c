package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Images the pods use, served by test/critest's loopback registry (its
// images.sh builds them; its certs.d mirrors registry.k8s.io there).
const (
	sleepImage = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
	pauseImage = "registry.k8s.io/pause:3.10.1"
)

// node is the private containerd with the CRI plugin that
// test/critest/setup.sh starts in a network namespace of its own (runtime
// handlers msb and runc), and a CRI client for it.
type node struct {
	critestDir string
	env        []string // CRITEST_NAME, CRITEST_WORK, MSB_BIN_DIR for the scripts
	sock       string   // containerd's socket
	stateMsb   string   // the msb shim's state root (under containerd's state)
	conn       *grpc.ClientConn
	rt         runtimeapi.RuntimeServiceClient
	img        runtimeapi.ImageServiceClient
	setUp      bool
}

// newNode runs setup.sh with this bench's own name (so it does not collide
// with a critest run) and connects to containerd's CRI. Call close even
// when it fails: setup.sh may have left half a setup.
func newNode(ctx context.Context, critestDir, name, bin, msbConfig string) (*node, error) {
	n := &node{critestDir: critestDir,
		env:      []string{"CRITEST_NAME=" + name, "CRITEST_WORK=/tmp/" + name},
		sock:     "/run/" + name + "/containerd.sock",
		stateMsb: "/run/" + name + "/msb",
	}
	if msbConfig != "" {
		n.env = append(n.env, "MSB_CONFIG="+msbConfig) // the shims' (setup.sh)
	}
	if bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return n, fmt.Errorf("-bin %s: %w", bin, err)
		}
		n.env = append(n.env, "MSB_BIN_DIR="+abs)
	}
	if _, err := os.Stat(filepath.Join(critestDir, "setup.sh")); err != nil {
		return n, fmt.Errorf("-critest-dir %s: no setup.sh there (run from the repository root or name test/critest): %w", critestDir, err)
	}
	n.setUp = true
	if err := n.script(ctx, "build-tools.sh"); err != nil {
		return n, err
	}
	if err := n.script(ctx, "setup.sh"); err != nil {
		return n, err
	}
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return n, fmt.Errorf("CRI client for %s: %w", n.sock, err)
	}
	n.conn, n.rt, n.img = conn, runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	for _, im := range []string{pauseImage, sleepImage} {
		c, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := n.img.PullImage(c, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: im}})
		cancel()
		if err != nil {
			return n, fmt.Errorf("pulling %s through the loopback registry: %w", im, err)
		}
	}
	return n, nil
}

// script runs one of test/critest's scripts with this node's settings; its
// log lines go to stderr.
func (n *node) script(ctx context.Context, name string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(n.critestDir, name))
	cmd.Env = append(os.Environ(), n.env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// close removes every pod, stops containerd, its shims and VMs, and undoes
// the namespace and mounts (cleanup.sh); it runs even after ctx was
// cancelled.
func (n *node) close() error {
	if n.conn != nil {
		_ = n.conn.Close()
	}
	if !n.setUp {
		return nil
	}
	return n.script(context.Background(), "cleanup.sh")
}

// pod is one started pod and how long its start took.
type pod struct {
	name, sandbox, container string
	start                    time.Duration // RunPodSandbox to StartContainer's return
	err                      error
}

// startPod starts a sandbox with handler and one `sleep` container in it.
func (n *node) startPod(ctx context.Context, handler, name string, timeout time.Duration) pod {
	p := pod{name: name}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: name, Namespace: "density"},
		Hostname:     name,
		LogDirectory: "",
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
	rs, err := n.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		p.err = fmt.Errorf("pod %s: RunPodSandbox: %w", name, err)
		return p
	}
	p.sandbox = rs.PodSandboxId
	cc, err := n.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.sandbox, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleep"},
			Image:    &runtimeapi.ImageSpec{Image: sleepImage},
			Command:  []string{"sleep", "3600"},
			Linux:    &runtimeapi.LinuxContainerConfig{},
		},
	})
	if err != nil {
		p.err = fmt.Errorf("pod %s: CreateContainer: %w", name, err)
		return p
	}
	p.container = cc.ContainerId
	if _, err := n.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.container}); err != nil {
		p.err = fmt.Errorf("pod %s: StartContainer: %w", name, err)
		return p
	}
	p.start = time.Since(t0)
	return p
}

// execOK runs `true` in the pod's container: the pod answers.
func (n *node) execOK(ctx context.Context, p pod, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r, err := n.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: p.container, Cmd: []string{"true"}, Timeout: int64(timeout / time.Second)})
	if err != nil {
		return fmt.Errorf("pod %s: exec: %w", p.name, err)
	}
	if r.ExitCode != 0 {
		return fmt.Errorf("pod %s: exec `true` exited %d: %s", p.name, r.ExitCode, r.Stderr)
	}
	return nil
}

// removeAll stops and removes every pod containerd knows (also those of a
// start that failed half-way), a few at a time.
func (n *node) removeAll(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	l, err := n.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 4)
	)
	for _, s := range l.Items {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := n.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id})
			if err == nil {
				_, err = n.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("removing pod %.12s: %w", id, err))
				mu.Unlock()
			}
		}(s.Id)
	}
	wg.Wait()
	return errors.Join(errs...)
}
