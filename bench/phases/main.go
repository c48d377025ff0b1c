// Command phases benchmarks msb-runtime run against runc on one busybox
// bundle, in the same run: the median of each start phase over N runs
// (spawn → startup line → agent ready → first output → exit), the host RSS
// of the VMM process and of qemu, and the ratio of total time to runc's.
// bench/ctrrun prints the same after its ctr runs.
//
//	go run ./bench/phases [-n 10] [-msb-runtime PATH] [-runc PATH]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/msb-dev/msb/bench/internal/phases"
)

func main() {
	n := flag.Int("n", 10, "runs per runtime")
	msb := flag.String("msb-runtime", "msb-runtime", "msb-runtime binary")
	runc := flag.String("runc", "/var/cache/msb/runc", "runc binary for the baseline")
	flag.Parse()
	if err := phases.Run(*n, *msb, *runc); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
