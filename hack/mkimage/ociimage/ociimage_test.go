package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func fakeBusybox(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(p, []byte("\x7fELF not really busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readTar(t *testing.T, r io.Reader) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	var order []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data, order
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = h, b
		order = append(order, h.Name)
	}
}

func blob(t *testing.T, files map[string][]byte, d ocispec.Descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+d.Digest.Encoded()]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	if digest.FromBytes(b) != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: digest or size mismatch", d.Digest)
	}
	return b
}

func TestLayoutAndDeterminism(t *testing.T) {
	opts := Options{
		Name:    "example.com/x/bb:v1",
		Busybox: fakeBusybox(t),
		Applets: []string{"bin/sh", "usr/bin/awk", "sbin/init", "linuxrc", "opt/x/y"},
		Arch:    "amd64",
	}
	var a, b bytes.Buffer
	desc, err := Write(&a, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Write(&b, opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two runs with the same input differ")
	}

	_, files, _ := readTar(t, bytes.NewReader(a.Bytes()))
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(files["oci-layout"], &layout); err != nil || layout.Version != "1.0.0" {
		t.Fatalf("oci-layout: %s (%v)", files["oci-layout"], err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Digest != desc.Digest {
		t.Fatalf("index: %+v", index)
	}
	ann := index.Manifests[0].Annotations
	if ann["io.containerd.image.name"] != "example.com/x/bb:v1" || ann[ocispec.AnnotationRefName] != "v1" {
		t.Fatalf("annotations: %v", ann)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(blob(t, files, index.Manifests[0]), &m); err != nil {
		t.Fatal(err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(t, files, m.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || strings.Join(cfg.Config.Cmd, " ") != "sh" {
		t.Fatalf("config: %+v", cfg)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != ocispec.MediaTypeImageLayerGzip {
		t.Fatalf("layers: %+v", m.Layers)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(t, files, m.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if digest.FromBytes(raw) != cfg.RootFS.DiffIDs[0] {
		t.Fatal("diff_id is not the digest of the uncompressed layer")
	}
	hdrs, data, order := readTar(t, bytes.NewReader(raw))
	for _, want := range []string{"bin/", "tmp/", "proc/", "sys/", "dev/", "etc/", "root/", "opt/", "opt/x/", "etc/passwd", "etc/group", "bin/busybox", "bin/sh", "usr/bin/awk", "sbin/init", "opt/x/y"} {
		if hdrs[want] == nil {
			t.Errorf("layer lacks %s (has %v)", want, order)
		}
	}
	if hdrs["linuxrc"] != nil {
		t.Error("linuxrc should be left out")
	}
	if h := hdrs["bin/sh"]; h != nil && (h.Typeflag != tar.TypeSymlink || h.Linkname != "/bin/busybox") {
		t.Errorf("bin/sh: %+v", h)
	}
	if h := hdrs["tmp/"]; h != nil && h.Mode != 0o1777 {
		t.Errorf("tmp mode %o", h.Mode)
	}
	if !strings.HasPrefix(string(data["etc/passwd"]), "root:x:0:0:") {
		t.Errorf("passwd: %q", data["etc/passwd"])
	}
	seen := map[string]bool{}
	for _, n := range order {
		if p := filepath.Dir(strings.TrimSuffix(n, "/")); p != "." && !seen[p+"/"] {
			t.Errorf("%s comes before its directory", n)
		}
		seen[n] = true
	}
}

func TestTagOf(t *testing.T) {
	for in, want := range map[string]string{
		"msb.local/busybox:latest":              "latest",
		"busybox":                               "latest",
		"localhost:5000/a/b":                    "latest",
		"localhost:5000/a/b:7":                  "7",
		"a/b@sha256:" + strings.Repeat("0", 64): "a/b@sha256:" + strings.Repeat("0", 64),
	} {
		got, err := tagOf(in)
		if err != nil || got != want {
			t.Errorf("tagOf(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a b", "x:"} {
		if _, err := tagOf(bad); err == nil {
			t.Errorf("tagOf(%q): no error", bad)
		}
	}
}

func TestRealBusybox(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	out := filepath.Join(t.TempDir(), "bb.tar")
	if _, err := WriteFile(out, Options{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, files, _ := readTar(t, f)
	if len(files) != 7 { // 2 dirs, 3 blobs, index.json, oci-layout
		t.Fatalf("%d entries", len(files))
	}
}
