package vmm

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/msb-dev/msb/protocol"
)

// fakeRelay serves one agent connection on a relay socket: Status never
// answers, OOMEvents answers after a long poll of wait.
func fakeRelay(t *testing.T, wait time.Duration) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "relay.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterService(protocol.AgentServiceName, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Status": func(ctx context.Context, un func(any) error) (any, error) {
			_ = un(&emptypb.Empty{})
			select { // a guest that stopped answering
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
			}
			return nil, ctx.Err()
		},
		"OOMEvents": func(ctx context.Context, un func(any) error) (any, error) {
			_ = un(&wrapperspb.BytesValue{})
			time.Sleep(wait)
			return wrapperspb.Bytes([]byte("[]")), nil
		},
	}})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if _, _, err := protocol.ReadHeader(c); err != nil {
			c.Close()
			return
		}
		one := &oneConn{c: c, done: make(chan struct{})}
		_ = srv.Serve(context.Background(), one)
	}()
	t.Cleanup(func() {
		ln.Close()
		_ = srv.Close()
	})
	return sock
}

// oneConn is a listener that hands out one connection.
type oneConn struct {
	c    net.Conn
	done chan struct{}
	once sync.Once
	sent bool
}

func (o *oneConn) Accept() (net.Conn, error) {
	if !o.sent {
		o.sent = true
		return o.c, nil
	}
	<-o.done
	return nil, net.ErrClosed
}
func (o *oneConn) Close() error   { o.once.Do(func() { close(o.done) }); return nil }
func (o *oneConn) Addr() net.Addr { return o.c.LocalAddr() }

// TestAgentCallBounded: a call the guest never answers fails after
// AgentCallTimeout with an error that says so; a long poll (OOM events)
// is not cut short by it.
func TestAgentCallBounded(t *testing.T) {
	old := AgentCallTimeout
	AgentCallTimeout = 300 * time.Millisecond
	t.Cleanup(func() { AgentCallTimeout = old })
	sock := fakeRelay(t, 3*AgentCallTimeout)
	c, err := DialTTRPC(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := protocol.NewAgentClient(c)

	start := time.Now()
	_, err = a.Status(context.Background())
	if took := time.Since(start); err == nil || took > 5*time.Second {
		t.Fatalf("a call the guest never answers: %v after %s", err, took)
	}
	if !strings.Contains(err.Error(), "did not answer /"+protocol.AgentServiceName+"/Status within 300ms") {
		t.Errorf("error does not say the guest was silent: %v", err)
	}
	if _, err := a.OOMEvents(context.Background(), 0, true); err != nil {
		t.Errorf("a long poll longer than AgentCallTimeout was cut: %v", err)
	}
}
