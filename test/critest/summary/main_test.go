package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sampleReport = `[{"SuiteDescription":"CRI validation","SpecReports":[
 {"ContainerHierarchyTexts":["[k8s.io] Networking","runtime should support networking"],"LeafNodeText":"runtime should support port mapping with only container port [Conformance]","LeafNodeType":"It","State":"failed","RunTime":2000000000,"Failure":{"Message":"boom\nmore\n  {\n  s: dump\n}"}},
 {"ContainerHierarchyTexts":["[k8s.io] Networking"],"LeafNodeText":"runtime should support DNS config [Conformance]","LeafNodeType":"It","State":"passed","NumAttempts":2},
 {"ContainerHierarchyTexts":["[k8s.io] Image Manager"],"LeafNodeText":"listImage should get exactly 3 image in the result list [Conformance]","LeafNodeType":"It","State":"passed"},
 {"ContainerHierarchyTexts":["[k8s.io] Security Context"],"LeafNodeText":"runtime should support HostIpc is true","LeafNodeType":"It","State":"failed","Failure":{"Message":"refused"}},
 {"ContainerHierarchyTexts":["[k8s.io] Security Context"],"LeafNodeText":"runtime should support something new","LeafNodeType":"It","State":"failed","Failure":{"Message":"new bug"}},
 {"ContainerHierarchyTexts":["[k8s.io] Windows"],"LeafNodeText":"only on windows","LeafNodeType":"It","State":"skipped"},
 {"LeafNodeType":"SynchronizedBeforeSuite","State":"passed"}
]}]`

const sampleList = `# comment

[k8s.io] Networking runtime should support networking runtime should support port mapping with only container port [Conformance]  # port-forward
HostIpc is true$  # refused on purpose
DNS config  # was broken
image in the result list  # fixed too
Security Context runtime should support something new  # matches the new failure as well
`

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	rp := filepath.Join(dir, "report.json")
	if err := os.WriteFile(rp, []byte(sampleReport), 0o644); err != nil {
		t.Fatal(err)
	}
	specs, err := readReport(rp)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 6 {
		t.Fatalf("got %d specs, want 6 (suite nodes that passed are left out)", len(specs))
	}
	entries, err := parseExpected(strings.NewReader(sampleList))
	if err != nil {
		t.Fatal(err)
	}
	// Drop the last entry: the "something new" failure is unexpected then.
	res := check(specs, entries[:4], false)
	if res.Passed != 2 || res.Failed != 3 || res.Skipped != 1 {
		t.Errorf("counts %d/%d/%d, want 2/3/1", res.Passed, res.Failed, res.Skipped)
	}
	if len(res.Expected) != 2 || len(res.Unexpected) != 1 || !strings.Contains(res.Unexpected[0].Name, "something new") {
		t.Errorf("expected %v, unexpected %v", res.Expected, res.Unexpected)
	}
	if res.Expected[0].Spec.Message != "boom more" {
		t.Errorf("message %q, want its lines joined", res.Expected[0].Spec.Message)
	}
	var names []string
	for _, e := range res.NowPassing {
		names = append(names, e.Pattern)
	}
	if strings.Join(names, "|") != "DNS config|image in the result list" {
		t.Errorf("now passing: %q", names)
	}
	if len(res.Flaky) != 1 || !strings.Contains(res.Flaky[0].Name, "DNS config") {
		t.Errorf("flaky: %v", res.Flaky)
	}
	var out bytes.Buffer
	res.print(&out, "list")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if last := lines[len(lines)-1]; last != "2 passed, 3 failed, 1 skipped" {
		t.Errorf("last line %q", last)
	}
	if res := check(specs, entries, false); len(res.Unexpected) != 0 {
		t.Errorf("unexpected with the full list: %v", res.Unexpected)
	}
}

func TestParseExpectedNeedsReason(t *testing.T) {
	if _, err := parseExpected(strings.NewReader("some spec\n")); err == nil {
		t.Error("a line without '# reason' was accepted")
	}
}

const sampleGoTest = `{"Action":"start","Package":"client"}
{"Action":"run","Test":"TestA"}
{"Action":"output","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Test":"TestA","Output":"    a_test.go:10: boom\n"}
{"Action":"output","Test":"TestA","Output":"--- FAIL: TestA (1.50s)\n"}
{"Action":"fail","Test":"TestA","Elapsed":1.5}
{"Action":"run","Test":"TestB"}
{"Action":"output","Test":"TestB","Output":"    b_test.go:3: no criu\n"}
{"Action":"skip","Test":"TestB","Elapsed":0}
{"Action":"run","Test":"TestC"}
{"Action":"pass","Test":"TestC","Elapsed":0.2}
{"Action":"run","Test":"TestD"}
{"Action":"skip","Test":"TestD","Elapsed":0}
{"Action":"run","Test":"TestE"}
{"Action":"output","Output":"panic: test timed out after 1s\n"}
{"Action":"fail","Elapsed":3}
`

// A Go suite's skips count with -skips: a listed skip is expected, an
// unlisted one is not; a test cut off by a panic failed.
func TestGoTestSkips(t *testing.T) {
	p := filepath.Join(t.TempDir(), "events.json")
	if err := os.WriteFile(p, []byte(sampleGoTest), 0o644); err != nil {
		t.Fatal(err)
	}
	specs, err := readGoTest(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 5 || specs[0].Message != "a_test.go:10: boom" || specs[4].Name != "TestE" || specs[4].State != "failed" {
		t.Fatalf("specs: %+v", specs)
	}
	entries, err := parseExpected(strings.NewReader("^TestA$  # a VM cannot\n^TestB$  # no criu\n"))
	if err != nil {
		t.Fatal(err)
	}
	res := check(specs, entries, true)
	if res.Passed != 1 || res.Failed != 2 || res.Skipped != 2 || len(res.Expected) != 2 || len(res.Unexpected) != 2 {
		t.Fatalf("result: %+v", res)
	}
	if res.Unexpected[0].Name != "TestD" || res.Unexpected[1].Name != "TestE" {
		t.Fatalf("unexpected: %+v", res.Unexpected)
	}
	if res := check(specs, entries, false); len(res.Unexpected) != 1 {
		t.Fatalf("without -skips: %+v", res.Unexpected)
	}
}
