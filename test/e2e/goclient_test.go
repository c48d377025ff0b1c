package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// goClient is a containerd Go client on the test containerd, in its
// namespace.
func (e *shimEnv) goClient(t *testing.T) (*client.Client, context.Context) {
	t.Helper()
	c, err := client.New(e.Address, client.WithDefaultNamespace(e.Namespace))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, context.Background()
}

// newContainer creates container id of the busybox image on msb's
// runtime, as nerdctl and dockerd do; it is removed (task and all) when
// the test ends.
func (e *shimEnv) newContainer(t *testing.T, c *client.Client, id string, opts ...oci.SpecOpts) client.Container {
	t.Helper()
	ctx := context.Background()
	img, err := c.GetImage(ctx, e.image)
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]oci.SpecOpts{oci.WithImageConfig(img)}, opts...)
	ctr, err := c.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithNewSnapshot(id+"-snap", img),
		client.WithRuntime(msbRuntimeType, nil),
		client.WithNewSpec(opts...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.remove(t, id) })
	return ctr
}

// waitExit waits at most d for an exit status from ch.
func waitExit(t *testing.T, ch <-chan client.ExitStatus, d time.Duration, what string) client.ExitStatus {
	t.Helper()
	select {
	case st := <-ch:
		return st
	case <-time.After(d):
		t.Fatalf("%s: Wait did not return within %s", what, d)
	}
	return client.ExitStatus{}
}
