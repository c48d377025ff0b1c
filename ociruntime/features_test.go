package ociruntime

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/vmmproc"
)

// stubLibkrun builds vmmproc's libkrun stub, so the probe finds a libkrun.
func stubLibkrun(t *testing.T) string {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: the libkrun stub cannot be built")
	}
	out := filepath.Join(t.TempDir(), vmmproc.LibkrunSoname)
	src := filepath.Join("..", "vmmproc", "testdata", "krunstub", "krunstub.c")
	if b, err := exec.Command(gcc, "-shared", "-fPIC", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("build krunstub: %v\n%s", err, b)
	}
	return out
}

func TestFeaturesReportBackends(t *testing.T) {
	lib := stubLibkrun(t)
	t.Setenv(vmmproc.LibkrunEnv, lib)
	cfg := config.Default()
	cfg.QEMU = "true" // any binary on PATH stands for qemu
	cfg.Kernel = ""   // no KVM probe (and no cached verdict for "true")
	var buf bytes.Buffer
	if err := writeFeatures(&buf, cfg); err != nil {
		t.Fatal(err)
	}
	var f features.Features
	if err := json.Unmarshal(buf.Bytes(), &f); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	a := f.Annotations
	if f.OCIVersionMin != "1.0.0" || f.OCIVersionMax == "" {
		t.Errorf("oci versions %q..%q", f.OCIVersionMin, f.OCIVersionMax)
	}
	if strings.Contains(a[FeatureBackendPrefix+"libkrun"], "CGO_ENABLED=0") {
		t.Skip("built with CGO_ENABLED=0: libkrun cannot be loaded")
	}
	if !strings.Contains(a[FeatureBackendPrefix+"libkrun"], lib+", API >= 1.18") {
		t.Errorf("libkrun detail %q", a[FeatureBackendPrefix+"libkrun"])
	}
	if !strings.Contains(","+a[FeatureBackends]+",", ",qemu,") || a[FeatureDefaultBackend] != "auto" {
		t.Errorf("annotations %v", a)
	}

	t.Setenv(vmmproc.LibkrunEnv, filepath.Join(t.TempDir(), "missing.so"))
	buf.Reset()
	if err := writeFeatures(&buf, cfg); err != nil {
		t.Fatal(err)
	}
	f = features.Features{}
	_ = json.Unmarshal(buf.Bytes(), &f)
	if d := f.Annotations[FeatureBackendPrefix+"libkrun"]; !strings.Contains(d, "install libkrun and libkrunfw") {
		t.Errorf("missing libkrun detail %q", d)
	}
	if strings.Contains(f.Annotations[FeatureBackends], "libkrun") {
		t.Errorf("backends %q lists a missing libkrun", f.Annotations[FeatureBackends])
	}
}

func TestVersionReportsBackends(t *testing.T) {
	t.Setenv(vmmproc.LibkrunEnv, stubLibkrun(t))
	t.Setenv("MSB_CONFIG", filepath.Join(t.TempDir(), "none.toml"))
	app := App()
	var buf bytes.Buffer
	app.Writer = &buf
	if err := app.Run([]string{"msb-runtime", "--version"}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"msb-runtime version ", "\nspec: ", "\nbackend libkrun: ", "\nbackend qemu: "} {
		if !strings.Contains(out, want) {
			t.Errorf("--version lacks %q:\n%s", want, out)
		}
	}
}
