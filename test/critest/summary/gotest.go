package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// testEvent is one event of `go tool test2json` (cmd/test2json).
type testEvent struct {
	Action  string
	Test    string
	Elapsed float64
	Output  string
}

// readGoTest reads a Go test binary's event stream: a spec a test (or
// subtest, "TestX/sub"), its message the test's own log lines
// ("file_test.go:NN: ..."). A test that started and has no result (the
// binary panicked or timed out) failed; so did the package when the
// binary failed outside any test (TestMain).
func readGoTest(path string) ([]spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		specs   []spec
		order   []string
		logs    = map[string][]string{}
		done    = map[string]bool{}
		pkgFail bool
		tail    []string // the binary's last lines outside tests
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var ev testEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		switch ev.Action {
		case "run":
			if _, ok := logs[ev.Test]; !ok {
				order = append(order, ev.Test)
				logs[ev.Test] = nil
			}
		case "output":
			out := strings.TrimRight(ev.Output, "\n")
			if ev.Test == "" {
				tail = append(tail, out)
				if len(tail) > 20 {
					tail = tail[1:]
				}
			} else if t := strings.TrimSpace(out); isTestLog(t) {
				logs[ev.Test] = append(logs[ev.Test], t)
			}
		case "pass", "fail", "skip":
			if ev.Test == "" {
				pkgFail = pkgFail || ev.Action == "fail"
				continue
			}
			state := map[string]string{"pass": "passed", "fail": "failed", "skip": "skipped"}[ev.Action]
			done[ev.Test] = true
			specs = append(specs, spec{Name: ev.Test, State: state, Message: strings.Join(logs[ev.Test], " | "),
				RunTime: time.Duration(ev.Elapsed * float64(time.Second)), Tries: 1})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, t := range order {
		if !done[t] {
			specs = append(specs, spec{Name: t, State: "failed", Tries: 1,
				Message: "no result: the test binary ended while it ran (panic or -test.timeout): " + strings.Join(tail, " | ")})
		}
	}
	if pkgFail && !anyFailed(specs) {
		specs = append(specs, spec{Name: "[package]", State: "failed", Tries: 1, Message: strings.Join(tail, " | ")})
	}
	return specs, nil
}

// isTestLog says whether a line of a test's output is its own log line
// (t.Log, t.Error, t.Skip: "name_test.go:NN: ..."), not one of a helper
// that logs through the test (a log hook).
func isTestLog(l string) bool {
	i := strings.Index(l, "_test.go:")
	return i > 0 && !strings.ContainsAny(l[:i], " \t")
}

func anyFailed(specs []spec) bool {
	for _, s := range specs {
		if failed(s.State) {
			return true
		}
	}
	return false
}
