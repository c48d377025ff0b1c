// Package bootstrap starts the shim binary for any containerd version:
// containerd 2.3 and later speak pkg/shim's bootstrap protocol, older ones
// the one pkg/shim v2.4 no longer speaks (ADR 005). It knows nothing of
// msb's task service; the command passes it the shim's manager.
package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Run is pkg/shim's RunShim, which speaks the bootstrap protocol of
// containerd 2.3 and later (protobuf BootstrapParams on stdin, a
// BootstrapResult on stdout), plus a translation for `start` from
// containerd 2.2 and older: those pass the runtime options on stdin, the
// addresses in flags and $TTRPC_ADDRESS, and read JSON back.
func Run(ctx context.Context, m cshim.Shim, opts ...cshim.BinaryOpts) {
	finish, err := translateStart(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s", m.Name(), err)
		os.Exit(1)
	}
	cshim.RunShim(ctx, m, opts...)
	if finish != nil {
		if err := finish(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s", m.Name(), err)
			os.Exit(1)
		}
	}
}

// legacyResult is the JSON an old containerd reads from `start`.
type legacyResult struct {
	Version  int32  `json:"version"`
	Address  string `json:"address"`
	Protocol string `json:"protocol"`
}

// translateStart looks at a `start` invocation: from a new containerd it
// puts stdin back as it was; from an old one it puts BootstrapParams made
// from the old inputs on stdin and returns finish, which turns what
// RunShim wrote to stdout into the JSON the old containerd expects.
func translateStart(args []string) (finish func() error, err error) {
	fs := flag.NewFlagSet("shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ns := fs.String("namespace", "", "")
	id := fs.String("id", "", "")
	address := fs.String("address", "", "")
	publish := fs.String("publish-binary", "", "")
	debug := fs.Bool("debug", false, "")
	// The rest of pkg/shim's flags, so parsing gets past them.
	for _, b := range []string{"v", "version", "info"} {
		fs.Bool(b, false, "")
	}
	for _, s := range []string{"socket", "debug-socket", "bundle"} {
		fs.String(s, "", "")
	}
	if err := fs.Parse(args); err != nil || fs.Arg(0) != "start" {
		return nil, nil // not a start: pkg/shim handles it (and its errors)
	}
	input, err := io.ReadAll(io.LimitReader(os.Stdin, 10<<20))
	if err != nil {
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	var params bootapi.BootstrapParams
	if len(input) > 0 && proto.Unmarshal(input, &params) == nil && params.InstanceID == *id && params.Namespace == *ns {
		return nil, setStdin(input) // containerd 2.3+
	}

	params = bootapi.BootstrapParams{
		InstanceID:             *id,
		Namespace:              *ns,
		LogLevel:               bootapi.LogLevel_LOG_LEVEL_INFO,
		ContainerdGrpcAddress:  *address,
		ContainerdTtrpcAddress: os.Getenv("TTRPC_ADDRESS"),
		ContainerdBinary:       *publish,
	}
	if *debug {
		params.LogLevel = bootapi.LogLevel_LOG_LEVEL_DEBUG
	}
	if len(input) > 0 {
		var opts anypb.Any
		if err := proto.Unmarshal(input, &opts); err != nil {
			return nil, fmt.Errorf("runtime options on stdin: %w", err)
		}
		if err := params.AddExtension(&opts); err != nil {
			return nil, err
		}
	}
	data, err := proto.Marshal(&params)
	if err != nil {
		return nil, err
	}
	if err := setStdin(data); err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	stdout := os.Stdout
	os.Stdout = w
	return func() error {
		w.Close()
		os.Stdout = stdout
		out, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			return err
		}
		var res bootapi.BootstrapResult
		if err := proto.Unmarshal(out, &res); err != nil || res.Address == "" {
			return errors.Join(errors.New("start: no bootstrap result to translate for containerd"), err)
		}
		b, err := json.Marshal(legacyResult{Version: res.Version, Address: res.Address, Protocol: res.Protocol})
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}, nil
}

// setStdin makes os.Stdin read data.
func setStdin(data []byte) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	go func() {
		_, _ = w.Write(data)
		w.Close()
	}()
	os.Stdin = r
	return nil
}
