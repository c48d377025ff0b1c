// Package ociimage writes a small busybox OCI image as an OCI image-layout
// tar archive, the format `ctr image import` (and `docker load`-less tools
// such as skopeo's oci-archive:) accept. No registry is needed: the image is
// made from the host's static busybox.
//
// The output is deterministic: the same busybox binary and options give the
// same bytes (fixed timestamps and owners, sorted entries, gzip without a
// name or time).
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // registers sha256 for go-digest
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultName is the name install.sh and the tests give the image.
const DefaultName = "msb.local/busybox:latest"

// Options say what goes into the image.
type Options struct {
	// Name is the full image reference, e.g. msb.local/busybox:latest.
	Name string
	// Busybox is the path of a statically linked busybox (default /bin/busybox).
	Busybox string
	// Applets are the applet paths relative to / (e.g. "bin/sh"); empty
	// means ask the binary (`busybox --list-full`).
	Applets []string
	// Arch is the image's GOARCH-style architecture (default runtime.GOARCH).
	Arch string
	// Cmd is the image's default command (default ["sh"]).
	Cmd []string
}

// epoch is the time stamp of every file and of the image.
var epoch = time.Unix(0, 0).UTC()

// Write writes the image archive to w and returns the manifest's descriptor.
func Write(w io.Writer, opts Options) (ocispec.Descriptor, error) {
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if opts.Busybox == "" {
		opts.Busybox = "/bin/busybox"
	}
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	if len(opts.Cmd) == 0 {
		opts.Cmd = []string{"sh"}
	}
	tag, err := tagOf(opts.Name)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	bb, err := os.ReadFile(opts.Busybox)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	applets := opts.Applets
	if len(applets) == 0 {
		if applets, err = listApplets(opts.Busybox); err != nil {
			return ocispec.Descriptor{}, err
		}
	}

	layerTar, err := rootfsTar(bb, applets)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	diffID := digest.FromBytes(layerTar)
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if _, err := zw.Write(layerTar); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := zw.Close(); err != nil {
		return ocispec.Descriptor{}, err
	}
	layer := gz.Bytes()

	created := epoch
	config := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{OS: "linux", Architecture: opts.Arch},
		Config: ocispec.ImageConfig{
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd:        opts.Cmd,
			WorkingDir: "/",
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
		History: []ocispec.History{{
			Created:   &created,
			CreatedBy: "msb hack/mkimage: static busybox and its applets",
		}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    descriptor(ocispec.MediaTypeImageConfig, configJSON),
		Layers:    []ocispec.Descriptor{descriptor(ocispec.MediaTypeImageLayerGzip, layer)},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	mdesc := descriptor(ocispec.MediaTypeImageManifest, manifestJSON)
	mdesc.Platform = &ocispec.Platform{OS: "linux", Architecture: opts.Arch}
	mdesc.Annotations = map[string]string{
		// containerd's own name annotation (full reference) and the OCI one
		// (the tag only), as `ctr image export` writes them.
		"io.containerd.image.name": opts.Name,
		ocispec.AnnotationRefName:  tag,
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{mdesc},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	layoutJSON, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return ocispec.Descriptor{}, err
	}

	tw := tar.NewWriter(w)
	if err := addDir(tw, ocispec.ImageBlobsDir+"/", 0o755); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := addDir(tw, ocispec.ImageBlobsDir+"/sha256/", 0o755); err != nil {
		return ocispec.Descriptor{}, err
	}
	blobs := [][]byte{configJSON, layer, manifestJSON}
	sort.Slice(blobs, func(i, j int) bool { return digest.FromBytes(blobs[i]) < digest.FromBytes(blobs[j]) })
	for _, b := range blobs {
		if err := addFile(tw, ocispec.ImageBlobsDir+"/sha256/"+digest.FromBytes(b).Encoded(), 0o644, b); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if err := addFile(tw, ocispec.ImageIndexFile, 0o644, indexJSON); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := addFile(tw, ocispec.ImageLayoutFile, 0o644, layoutJSON); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := tw.Close(); err != nil {
		return ocispec.Descriptor{}, err
	}
	return mdesc, nil
}

// WriteFile writes the image archive to path (atomically: a temp file renamed).
func WriteFile(path string, opts Options) (ocispec.Descriptor, error) {
	f, err := os.CreateTemp(dirOf(path), ".mkimage-*.tar")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.Remove(f.Name())
	desc, err := Write(f, opts)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	return desc, err
}

func dirOf(p string) string {
	if d := path.Dir(p); d != "" {
		return d
	}
	return "."
}

// tagOf returns the tag of a reference ("latest" when it has none). A
// digest reference is returned whole, as containerd does.
func tagOf(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, " \t\n") {
		return "", fmt.Errorf("bad image name %q", name)
	}
	if strings.Contains(name, "@") {
		return name, nil
	}
	last := name[strings.LastIndex(name, "/")+1:]
	if i := strings.LastIndex(last, ":"); i >= 0 {
		if i == len(last)-1 {
			return "", fmt.Errorf("bad image name %q: empty tag", name)
		}
		return last[i+1:], nil
	}
	return "latest", nil
}

func descriptor(mediaType string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

// listApplets asks busybox where its applets live ("bin/sh", "usr/bin/awk", ...).
func listApplets(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	applets := strings.Fields(string(out))
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list-full listed no applets", busybox)
	}
	return applets, nil
}

// rootfsTar returns the uncompressed layer: the directory skeleton, /etc
// files, /bin/busybox and a symlink to it for every applet.
func rootfsTar(busybox []byte, applets []string) ([]byte, error) {
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	entries := map[string]entry{}
	dir := func(name string, mode int64) {
		entries[name+"/"] = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
	}
	file := func(name string, mode int64, data []byte) {
		entries[name] = entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: data}
	}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "var", "home"} {
		dir(d, 0o755)
	}
	dir("tmp", 0o1777)
	dir("var/tmp", 0o1777)
	dir("root", 0o700)
	file("bin/busybox", 0o755, busybox)
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	for _, a := range applets {
		a = strings.TrimPrefix(path.Clean("/"+a), "/")
		d := path.Dir(a)
		if d == "." || a == "bin/busybox" {
			continue // e.g. /linuxrc: not wanted in a container image
		}
		if _, ok := entries[d+"/"]; !ok {
			// an applet in a directory not in the skeleton: add its parents
			for p := d; p != "."; p = path.Dir(p) {
				if _, ok := entries[p+"/"]; !ok {
					dir(p, 0o755)
				}
			}
		}
		entries[a] = entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: a, Linkname: "/bin/busybox", Mode: 0o777}}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names) // parents sort before their children ("bin/" < "bin/sh")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.ModTime = epoch
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func addDir(tw *tar.Writer, name string, mode int64) error {
	return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: epoch})
}

func addFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
