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
	res := check(specs, entries[:4])
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
	if res := check(specs, entries); len(res.Unexpected) != 0 {
		t.Errorf("unexpected with the full list: %v", res.Unexpected)
	}
}

func TestParseExpectedNeedsReason(t *testing.T) {
	if _, err := parseExpected(strings.NewReader("some spec\n")); err == nil {
		t.Error("a line without '# reason' was accepted")
	}
}
