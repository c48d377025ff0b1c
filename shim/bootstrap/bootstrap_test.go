package bootstrap

import (
	"encoding/json"
	"io"
	"os"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// withStdio runs f with stdin reading in and returns what went to stdout.
func withStdio(t *testing.T, in []byte, f func()) []byte {
	t.Helper()
	oldIn, oldOut := os.Stdin, os.Stdout
	defer func() { os.Stdin, os.Stdout = oldIn, oldOut }()
	if err := setStdin(in); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout = w
	f()
	w.Close()
	out, _ := io.ReadAll(r)
	return out
}

var startArgs = []string{"-namespace", "ns1", "-address", "/run/c.sock", "-publish-binary", "/bin/containerd", "-id", "c1", "-debug", "start"}

// TestStartFromOldContainerd: runtime options on stdin and addresses in
// flags and env become BootstrapParams for pkg/shim; its protobuf result
// goes back as the JSON containerd 2.2 reads.
func TestStartFromOldContainerd(t *testing.T) {
	t.Setenv("TTRPC_ADDRESS", "/run/c.sock.ttrpc")
	opt, err := anypb.New(&options.Options{BinaryName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := proto.Marshal(opt)
	var params bootapi.BootstrapParams
	out := withStdio(t, in, func() {
		finish, err := translateStart(startArgs)
		if err != nil || finish == nil {
			t.Fatalf("translateStart: %v (finish %v)", err, finish != nil)
		}
		b, _ := io.ReadAll(os.Stdin)
		if err := proto.Unmarshal(b, &params); err != nil {
			t.Fatal(err)
		}
		res, _ := proto.Marshal(&bootapi.BootstrapResult{Version: 3, Address: "unix:///run/s/x", Protocol: "ttrpc"})
		_, _ = os.Stdout.Write(res) // what pkg/shim writes
		if err := finish(); err != nil {
			t.Fatal(err)
		}
	})
	var ro options.Options
	if ok, err := params.FindExtension(&ro); !ok || err != nil || ro.BinaryName != "x" {
		t.Fatalf("runtime options not passed on: %v %v %+v", ok, err, &ro)
	}
	if params.InstanceID != "c1" || params.Namespace != "ns1" || params.ContainerdGrpcAddress != "/run/c.sock" ||
		params.ContainerdTtrpcAddress != "/run/c.sock.ttrpc" || params.LogLevel != bootapi.LogLevel_LOG_LEVEL_DEBUG {
		t.Fatalf("params %+v", &params)
	}
	var res legacyResult
	if err := json.Unmarshal(out, &res); err != nil || res.Address != "unix:///run/s/x" || res.Version != 3 || res.Protocol != "ttrpc" {
		t.Fatalf("stdout %q: %v", out, err)
	}
}

// TestStartFromNewContainerd: containerd 2.3+'s params pass untouched.
func TestStartFromNewContainerd(t *testing.T) {
	in, _ := proto.Marshal(&bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns1", ContainerdVersion: "2.4.2"})
	withStdio(t, in, func() {
		finish, err := translateStart(startArgs)
		if err != nil || finish != nil {
			t.Fatalf("translateStart: %v, finish %v", err, finish != nil)
		}
		b, _ := io.ReadAll(os.Stdin)
		var p bootapi.BootstrapParams
		if err := proto.Unmarshal(b, &p); err != nil || p.ContainerdVersion != "2.4.2" {
			t.Fatalf("stdin not passed through: %v %+v", err, &p)
		}
	})
	// Not a start: nothing touched.
	if finish, err := translateStart([]string{"-namespace", "ns1", "-id", "c1", "delete"}); finish != nil || err != nil {
		t.Fatal("delete must not be translated")
	}
}
