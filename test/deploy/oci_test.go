package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// unpackImage checks the OCI archive at tarPath as `ctr image import`
// reads it (index, the manifest named name, every blob's digest, the
// layer's diff ID) and unpacks the image's one layer into root.
func unpackImage(tarPath, name, root string) error {
	blobs, err := readTar(tarPath)
	if err != nil {
		return err
	}
	for p, b := range blobs {
		if d, ok := strings.CutPrefix(p, "blobs/sha256/"); ok && d != "" && sum(b) != d {
			return fmt.Errorf("%s: blob digest %s", p, sum(b))
		}
	}
	var index ocispec.Index
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil {
		return fmt.Errorf("index.json: %w", err)
	}
	if _, ok := blobs["oci-layout"]; !ok {
		return fmt.Errorf("no oci-layout in %s", tarPath)
	}
	var mdesc *ocispec.Descriptor
	for i, m := range index.Manifests {
		if m.Annotations["io.containerd.image.name"] == name {
			mdesc = &index.Manifests[i]
		}
	}
	if mdesc == nil || mdesc.MediaType != ocispec.MediaTypeImageManifest {
		return fmt.Errorf("index.json names no manifest for %s: %+v", name, index.Manifests)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(blob(blobs, *mdesc), &man); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(blobs, man.Config), &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if len(man.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
		return fmt.Errorf("want one layer: manifest %d, config %d", len(man.Layers), len(cfg.RootFS.DiffIDs))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(blobs, man.Layers[0])))
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	layer, err := io.ReadAll(zr)
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	if "sha256:"+sum(layer) != cfg.RootFS.DiffIDs[0].String() {
		return fmt.Errorf("layer diff ID %s, config says %s", sum(layer), cfg.RootFS.DiffIDs[0])
	}
	return extract(bytes.NewReader(layer), root)
}

func sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// blob is the blob a descriptor names, nil if absent or of another size.
func blob(blobs map[string][]byte, d ocispec.Descriptor) []byte {
	b := blobs["blobs/sha256/"+d.Digest.Encoded()]
	if int64(len(b)) != d.Size {
		return nil
	}
	return b
}

// readTar reads every regular file of an archive.
func readTar(p string) (map[string][]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if h.Typeflag == tar.TypeReg {
			if out[h.Name], err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
	}
}

// extract unpacks a layer's directories, files and symlinks below root.
func extract(r io.Reader, root string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(h.Name)
		if path.IsAbs(name) || strings.HasPrefix(name, "..") {
			return fmt.Errorf("layer entry %q outside the root", h.Name)
		}
		p := path.Join(root, name)
		mode := os.FileMode(h.Mode).Perm()
		if h.Mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(p, mode); err != nil {
				return err
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return err
			}
			if err := os.WriteFile(p, b, mode); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("layer entry %q: type %c not expected", h.Name, h.Typeflag)
		}
	}
}
