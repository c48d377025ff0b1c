package taskio

import (
	"net/url"
	"os/exec"
)

// newBinaryCmd returns the command of a binary:// logger: the URI's path,
// its query as "key value" arguments, and CONTAINER_ID and
// CONTAINER_NAMESPACE as its whole environment.
//
// Copied from NewBinaryCmd in containerd v2.4.2,
// cmd/containerd-shim-runc-v2/process/io_util.go (a cmd/ package, with no
// API promise), so that a binary logger starts exactly as under runc's shim.
// Copyright The containerd Authors; Apache License 2.0,
// http://www.apache.org/licenses/LICENSE-2.0.
func newBinaryCmd(binaryURI *url.URL, id, ns string) *exec.Cmd {
	var args []string
	for k, vs := range binaryURI.Query() {
		args = append(args, k)
		if len(vs) > 0 {
			args = append(args, vs[0])
		}
	}

	cmd := exec.Command(binaryURI.Path, args...)

	cmd.Env = append(cmd.Env,
		"CONTAINER_ID="+id,
		"CONTAINER_NAMESPACE="+ns,
	)

	return cmd
}
