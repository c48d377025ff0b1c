// Command critest-summary reads the JSON report of a critest run
// (--ginkgo.json-report), or the `go test -json` stream of a Go test suite
// (containerd's integration/client: test/ctrsuite), and checks its
// failures against a list of expected ones
// (test/critest/expected-failures.txt, test/ctrsuite/expected-*.txt).
//
//	critest-summary -report report.json [-expected expected-failures.txt] [-tsv specs.tsv]
//	critest-summary -gotest events.json -skips [-expected list] [-tsv tests.tsv]
//
// With -skips a skipped spec or test the list does not name is
// unexpected too: a suite whose skips are decisions, not platforms.
//
// It prints the failing specs, each marked expected (with the list's
// reason) or UNEXPECTED, then the listed entries whose specs all passed
// (remove them from the list), the specs that passed only when retried
// (ginkgo --flake-attempts), then as its last line
// "N passed, N failed, N skipped". It exits 1 when a spec failed that the
// list does not name, 2 on a bad report or list, else 0.
//
// The list has one entry a line: a spec's full name (the texts of its
// containers and its own, joined by spaces, as printed here) or a Go
// regular expression matched against full names, then "# reason". Blank
// lines and lines starting with # are ignored.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// specReport is the part of ginkgo's types.SpecReport read here.
type specReport struct {
	ContainerHierarchyTexts []string
	LeafNodeText            string
	LeafNodeType            string
	State                   string
	RunTime                 time.Duration
	NumAttempts             int
	Failure                 struct {
		Message  string
		Location struct {
			FileName   string
			LineNumber int
		}
	}
}

// suiteReport is the part of ginkgo's types.Report read here.
type suiteReport struct {
	SuiteDescription string
	SpecReports      []specReport
}

// spec is one spec's outcome.
type spec struct {
	Name    string // full name
	State   string // passed, failed, skipped, ...
	Message string // failure message on one line
	RunTime time.Duration
	Tries   int // how many times it ran (ginkgo --flake-attempts)
}

// entry is one line of the expected-failures list.
type entry struct {
	Line    int
	Pattern string
	Reason  string
	re      *regexp.Regexp // nil when Pattern is not a valid expression
}

func main() {
	report := flag.String("report", "", "critest's JSON report (--ginkgo.json-report)")
	gotest := flag.String("gotest", "", "a Go test binary's event stream (go tool test2json), instead of -report")
	skips := flag.Bool("skips", false, "a skip the list does not name is unexpected too")
	expected := flag.String("expected", "", "expected-failures list (none: every failure is unexpected)")
	tsv := flag.String("tsv", "", "also write one line per spec (state, seconds, name, message) to this file")
	flag.Parse()
	if (*report == "") == (*gotest == "") {
		fmt.Fprintln(os.Stderr, "usage: critest-summary -report report.json | -gotest events.json [-skips] [-expected list] [-tsv file]")
		os.Exit(2)
	}
	read, path := readReport, *report
	if *gotest != "" {
		read, path = readGoTest, *gotest
	}
	specs, err := read(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "critest-summary:", err)
		fmt.Println("0 passed, 0 failed, 0 skipped")
		os.Exit(2)
	}
	var entries []entry
	if *expected != "" {
		f, err := os.Open(*expected)
		if err == nil {
			entries, err = parseExpected(f)
			f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "critest-summary:", err)
			os.Exit(2)
		}
	}
	if *tsv != "" {
		if err := writeTSV(*tsv, specs); err != nil {
			fmt.Fprintln(os.Stderr, "critest-summary:", err)
			os.Exit(2)
		}
	}
	res := check(specs, entries, *skips)
	res.print(os.Stdout, *expected)
	if len(res.Unexpected) > 0 {
		os.Exit(1)
	}
}

func readReport(path string) ([]spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var reports []suiteReport
	if err := json.Unmarshal(b, &reports); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var specs []spec
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.LeafNodeType != "It" && !failed(s.State) {
				continue // suite setup nodes count only when they fail
			}
			name := strings.Join(append(append([]string{}, s.ContainerHierarchyTexts...), s.LeafNodeText), " ")
			if s.LeafNodeType != "It" {
				name = strings.TrimSpace("[" + s.LeafNodeType + "] " + name)
			}
			msg := oneLine(s.Failure.Message)
			specs = append(specs, spec{Name: name, State: s.State, Message: msg, RunTime: s.RunTime, Tries: s.NumAttempts})
		}
	}
	return specs, nil
}

// oneLine joins a failure message's lines, up to gomega's dump of the
// error value (a line holding only "{"), which repeats what came before.
func oneLine(msg string) string {
	var keep []string
	for _, l := range strings.Split(msg, "\n") {
		if strings.TrimSpace(l) == "{" {
			break
		}
		keep = append(keep, l)
	}
	return strings.Join(strings.Fields(strings.Join(keep, " ")), " ")
}

func failed(state string) bool {
	switch state {
	case "failed", "panicked", "timedout", "interrupted", "aborted":
		return true
	}
	return false
}

func parseExpected(r io.Reader) ([]entry, error) {
	var entries []entry
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.Index(line, " #")
		if i < 0 {
			return nil, fmt.Errorf("expected-failures line %d: no '# reason': %s", n, line)
		}
		e := entry{Line: n, Pattern: strings.TrimSpace(line[:i]), Reason: strings.TrimSpace(line[i+2:])}
		if e.Reason == "" {
			return nil, fmt.Errorf("expected-failures line %d: empty reason", n)
		}
		e.re, _ = regexp.Compile(e.Pattern)
		entries = append(entries, e)
	}
	return entries, sc.Err()
}

// result is the outcome of checking a run against the list.
type result struct {
	Passed, Failed, Skipped int
	Expected                []match // failures the list names
	Unexpected              []spec
	Flaky                   []spec  // passed, but not at the first try
	NowPassing              []entry // entries whose specs ran and all passed
}

type match struct {
	Spec  spec
	Entry entry
}

// matches reports whether e names the spec called name. A pattern that is
// some spec's exact name matches only that spec (names hold regexp
// metacharacters such as "[Conformance]").
func (e entry) matches(name string, exact map[string]bool) bool {
	if e.Pattern == name {
		return true
	}
	if exact[e.Pattern] || e.re == nil {
		return false
	}
	return e.re.MatchString(name)
}

// counts says whether a spec in state is checked against the list: a
// failure always, a skip with strictSkips.
func counts(state string, strictSkips bool) bool {
	return failed(state) || strictSkips && state == "skipped"
}

func check(specs []spec, entries []entry, strictSkips bool) result {
	var res result
	exact := map[string]bool{}
	for _, s := range specs {
		exact[s.Name] = true
	}
	ranPass := make([]bool, len(entries))
	ranFail := make([]bool, len(entries))
	for _, s := range specs {
		switch {
		case s.State == "passed":
			res.Passed++
			if s.Tries > 1 {
				res.Flaky = append(res.Flaky, s)
			}
		case failed(s.State):
			res.Failed++
		default:
			res.Skipped++
		}
		found := -1
		for i, e := range entries {
			if !e.matches(s.Name, exact) {
				continue
			}
			if s.State == "passed" {
				ranPass[i] = true
			} else if counts(s.State, strictSkips) {
				ranFail[i] = true
			}
			if found < 0 {
				found = i
			}
		}
		if counts(s.State, strictSkips) {
			if found >= 0 {
				res.Expected = append(res.Expected, match{s, entries[found]})
			} else {
				res.Unexpected = append(res.Unexpected, s)
			}
		}
	}
	for i, e := range entries {
		if ranPass[i] && !ranFail[i] {
			res.NowPassing = append(res.NowPassing, e)
		}
	}
	return res
}

func (r result) print(w io.Writer, list string) {
	if len(r.Expected) > 0 {
		fmt.Fprintf(w, "--- %d expected failures or skips (%s):\n", len(r.Expected), list)
		for _, m := range r.Expected {
			fmt.Fprintf(w, "expected  %s\n          reason: %s\n          got: %s\n", m.Spec.Name, m.Entry.Reason, clip(m.Spec.Message, 300))
		}
	}
	if len(r.Unexpected) > 0 {
		fmt.Fprintf(w, "--- %d UNEXPECTED failures or skips (not in %s):\n", len(r.Unexpected), orNone(list))
		for _, s := range r.Unexpected {
			fmt.Fprintf(w, "UNEXPECTED  %s\n            %s: %s\n", s.Name, s.State, clip(s.Message, 400))
		}
	}
	if len(r.Flaky) > 0 {
		fmt.Fprintf(w, "--- %d specs passed only when retried (flaky: a bug to chase, see critest.log):\n", len(r.Flaky))
		for _, s := range r.Flaky {
			fmt.Fprintf(w, "FLAKY  %s (passed at try %d)\n", s.Name, s.Tries)
		}
	}
	if len(r.NowPassing) > 0 {
		fmt.Fprintf(w, "--- %d listed entries whose specs now pass (remove them from %s):\n", len(r.NowPassing), list)
		for _, e := range r.NowPassing {
			fmt.Fprintf(w, "now passes  line %d: %s\n", e.Line, e.Pattern)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", r.Passed, r.Failed, r.Skipped)
}

func writeTSV(path string, specs []spec) error {
	sorted := append([]spec{}, specs...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].State < sorted[j].State })
	var b strings.Builder
	for _, s := range sorted {
		fmt.Fprintf(&b, "%s\t%.1f\t%s\t%s\n", s.State, s.RunTime.Seconds(), s.Name, clip(s.Message, 400))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func orNone(list string) string {
	if list == "" {
		return "any list"
	}
	return list
}
