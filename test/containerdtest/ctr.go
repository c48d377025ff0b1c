package containerdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/msb-dev/msb/hack/mkimage/ociimage"
)

// CtrCmd returns an unstarted ctr command against this containerd, for
// callers that need stdin, streaming output or a background process (ctr
// events, ctr run with a tty). The caller waits for or kills it.
func (c *Containerd) CtrCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.CtrBin, append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)...)
	cmd.Env = c.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Ctr runs ctr against this containerd in its namespace, with no stdin
// and Options.CtrTimeout. A non-nil error names the command and its stderr;
// errors.As to *exec.ExitError gives the exit code.
func (c *Containerd) Ctr(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.CtrTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := c.CtrCmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s: %w", c.opts.CtrTimeout, err)
	}
	if err != nil {
		err = fmt.Errorf("ctr %s: %w; stderr: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), err
}

// MustCtr is Ctr that fails the test on error and returns stdout.
func (c *Containerd) MustCtr(args ...string) string {
	c.t.Helper()
	out, _, err := c.Ctr(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// ImportBusybox imports the busybox image (hack/mkimage's, from the host's
// /bin/busybox) into the namespace once and returns its name.
func (c *Containerd) ImportBusybox() string {
	c.t.Helper()
	c.mu.Lock()
	name := c.image
	c.mu.Unlock()
	if name != "" {
		return name
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		if os.Getenv("MSB_E2E") == "1" {
			c.t.Fatal("MSB_E2E=1 but no /bin/busybox (apt-get install busybox-static)")
		}
		c.t.Skip("no /bin/busybox: apt-get install busybox-static")
	}
	tarPath := filepath.Join(c.Dir, "busybox.tar")
	if _, err := ociimage.WriteFile(tarPath, ociimage.Options{Name: ociimage.DefaultName}); err != nil {
		c.t.Fatal(err)
	}
	c.MustCtr("image", "import", tarPath)
	c.mu.Lock()
	c.image = ociimage.DefaultName
	c.mu.Unlock()
	return ociimage.DefaultName
}

// ctrQuick runs a cleanup ctr command in namespace ns with a short timeout.
func (c *Containerd) ctrQuick(ns string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, c.CtrBin, append([]string{"--address", c.Address, "--namespace", ns}, args...)...)
	cmd.Env = c.env
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), err
}
