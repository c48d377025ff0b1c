package protocol

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestHeaderRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHeader(&b, KindStdio, "abc"); err != nil {
		t.Fatal(err)
	}
	b.WriteString("payload")
	kind, arg, err := ReadHeader(&b)
	if err != nil || kind != KindStdio || arg != "abc" {
		t.Fatalf("%q %q %v", kind, arg, err)
	}
	if rest, _ := io.ReadAll(&b); string(rest) != "payload" {
		t.Fatalf("header read consumed payload: %q", rest)
	}
}

func TestHeaderLimits(t *testing.T) {
	if err := WriteHeader(io.Discard, "a\nb", ""); err == nil {
		t.Fatal("newline in header accepted")
	}
	if err := WriteHeader(io.Discard, KindStdio, strings.Repeat("x", 300)); err == nil {
		t.Fatal("oversized header accepted")
	}
	if _, _, err := ReadHeader(strings.NewReader(strings.Repeat("x", 300) + "\n")); err == nil {
		t.Fatal("oversized header read")
	}
	if _, _, err := ReadHeader(strings.NewReader("ttrpc")); err == nil {
		t.Fatal("header without newline read")
	}
}

func TestStreamURI(t *testing.T) {
	if tok, ok := ParseStreamURI(StreamURI("t1")); !ok || tok != "t1" {
		t.Fatal(tok, ok)
	}
	for _, s := range []string{"", "msb-stream:", "/dev/null", "fifo:x"} {
		if _, ok := ParseStreamURI(s); ok {
			t.Errorf("%q parsed as a stream", s)
		}
	}
}

type fakeAgent struct {
	env  []string
	code chan int32
}

func (f *fakeAgent) Boot(_ context.Context, env []string) error {
	if len(env) == 0 {
		return errors.New("empty env")
	}
	f.env = env
	return nil
}
func (f *fakeAgent) Status(context.Context) (string, error) { return "booted test", nil }
func (f *fakeAgent) Shutdown(_ context.Context, c int32) error {
	f.code <- c
	return nil
}
func (f *fakeAgent) WaitShutdown(ctx context.Context) (int32, error) { return <-f.code, nil }

func TestAgentServiceOverTTRPC(t *testing.T) {
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{code: make(chan int32, 1)}
	RegisterAgent(srv, fa)
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := NewAgentClient(ttrpc.NewClient(conn))
	ctx := context.Background()
	if err := c.Boot(ctx, []string{"MSB_HOSTNAME=h"}); err != nil || fa.env[0] != "MSB_HOSTNAME=h" {
		t.Fatalf("boot: %v %v", err, fa.env)
	}
	if err := c.Boot(ctx, nil); err == nil || !strings.Contains(err.Error(), "empty env") {
		t.Fatalf("boot error not carried: %v", err)
	}
	if s, err := c.Status(ctx); err != nil || s != "booted test" {
		t.Fatal(s, err)
	}
	if err := c.Shutdown(ctx, 42); err != nil {
		t.Fatal(err)
	}
	if code, err := c.WaitShutdown(ctx); err != nil || code != 42 {
		t.Fatal(code, err)
	}
}

type oomAgent struct {
	fakeAgent
	gotAfter uint64
	gotWait  bool
}

func (o *oomAgent) OOMEvents(_ context.Context, after uint64, wait bool) ([]OOMEvent, error) {
	o.gotAfter, o.gotWait = after, wait
	return []OOMEvent{{Seq: after + 1, ContainerID: "c1"}}, nil
}

// OOMEvents round-trips where the agent has it and is Unimplemented where
// it does not.
func TestOOMEventsOverTTRPC(t *testing.T) {
	for _, withOOM := range []bool{true, false} {
		srv, err := ttrpc.NewServer()
		if err != nil {
			t.Fatal(err)
		}
		oa := &oomAgent{fakeAgent: fakeAgent{code: make(chan int32, 1)}}
		if withOOM {
			RegisterAgent(srv, oa)
		} else {
			RegisterAgent(srv, &oa.fakeAgent)
		}
		l, err := net.Listen("unix", t.TempDir()+"/s")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(context.Background(), l)
		conn, err := net.Dial("unix", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := NewAgentClient(ttrpc.NewClient(conn))
		evs, err := c.OOMEvents(context.Background(), 7, true)
		if withOOM {
			if err != nil || len(evs) != 1 || evs[0] != (OOMEvent{Seq: 8, ContainerID: "c1"}) || oa.gotAfter != 7 || !oa.gotWait {
				t.Errorf("OOMEvents = %v, %v (agent got after=%d wait=%v)", evs, err, oa.gotAfter, oa.gotWait)
			}
		} else if status.Code(err) != codes.Unimplemented {
			t.Errorf("OOMEvents without support: %v, want Unimplemented", err)
		}
		srv.Close()
	}
}
