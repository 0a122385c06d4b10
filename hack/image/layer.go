package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// entry is one file, directory or symlink of a layer. Exactly one of src, data, link and dir
// says what it is.
type entry struct {
	path     string // in the image, without the leading slash
	mode     int64  // permission bits (and sticky)
	uid, gid int
	dir      bool
	link     string // symlink target
	src      string // host file whose content is copied
	data     []byte // content given inline
}

// layerTar writes a reproducible tar of entries to out: entries sorted by path, each missing
// parent directory added (root, 0755), every timestamp mtime, no user or group names, no host
// attributes. The same entries and host file contents give the same bytes.
func layerTar(out io.Writer, entries []entry, mtime time.Time) error {
	byPath := map[string]entry{}
	for _, e := range entries {
		e.path = strings.Trim(path.Clean("/"+e.path), "/")
		if e.path == "" {
			return fmt.Errorf("layer entry with an empty path")
		}
		if _, dup := byPath[e.path]; dup {
			return fmt.Errorf("layer entry %s given twice", e.path)
		}
		byPath[e.path] = e
	}
	for p := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = entry{path: d, mode: 0o755, dir: true}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths) // a parent sorts before what is inside it
	tw := tar.NewWriter(out)
	for _, p := range paths {
		if err := writeEntry(tw, byPath[p], mtime); err != nil {
			return fmt.Errorf("layer entry /%s: %w", p, err)
		}
	}
	return tw.Close()
}

func writeEntry(tw *tar.Writer, e entry, mtime time.Time) error {
	h := &tar.Header{Name: e.path, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: mtime, Format: tar.FormatPAX}
	switch {
	case e.dir:
		h.Typeflag, h.Name = tar.TypeDir, e.path+"/"
		return tw.WriteHeader(h)
	case e.link != "":
		h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		return tw.WriteHeader(h)
	case e.src == "":
		h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(e.data)
		return err
	}
	// os.Open follows symlinks on purpose: a library's soname link is stored as the file itself.
	f, err := os.Open(e.src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", e.src)
	}
	h.Typeflag, h.Size = tar.TypeReg, fi.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("copying %s: %w", e.src, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("copying %s: %d of %d bytes (it changed while read)", e.src, n, fi.Size())
	}
	return nil
}

// newLayer writes entries' tar to a file in dir and returns it as an OCI layer (gzip, compressed
// by go-containerregistry, deterministically).
func newLayer(dir, name string, entries []entry, mtime time.Time) (v1.Layer, error) {
	p := path.Join(dir, name+".tar")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", name, err)
	}
	werr := layerTar(f, entries, mtime)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("layer %s: %w", name, werr)
	}
	l, err := tarball.LayerFromFile(p, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", name, err)
	}
	return l, nil
}
