package main

import (
	"debug/elf"
	"fmt"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// build writes the image and returns its manifest digest and compressed size.
func build(o options) (string, int64, error) {
	tag, err := name.NewTag(o.Tag, name.StrictValidation)
	if err != nil {
		return "", 0, fmt.Errorf("--tag %q: %w", o.Tag, err)
	}
	if _, err := os.Stat(o.Layout); err == nil {
		return "", 0, fmt.Errorf("--layout %s exists: remove it first (an old layout would keep old blobs)", o.Layout)
	}
	tmp, err := os.MkdirTemp("", "stargate-image-")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(tmp)
	img, err := assemble(o, tmp)
	if err != nil {
		return "", 0, err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", 0, fmt.Errorf("image digest: %w", err)
	}
	lp, err := layout.Write(o.Layout, empty.Index)
	if err != nil {
		return "", 0, fmt.Errorf("writing the layout: %w", err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag.TagStr()})); err != nil {
		return "", 0, fmt.Errorf("writing the layout: %w", err)
	}
	if o.Tarball != "" {
		if err := tarball.WriteToFile(o.Tarball, tag, img); err != nil {
			return "", 0, fmt.Errorf("writing --tarball: %w", err)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		return "", 0, err
	}
	var size int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return "", 0, err
		}
		size += n
	}
	return digest.String(), size, nil
}

// assemble makes the image from o's files, its layers written under tmp. Layers go from what
// changes least to what changes most, so a new build shares the first ones with the last.
func assemble(o options, tmp string) (v1.Image, error) {
	mtime := time.Unix(o.Epoch, 0).UTC()
	qemu, err := sharedClosure(o.QemuImg, libDirs)
	if err != nil {
		return nil, fmt.Errorf("--qemu-img: %w", err)
	}
	if err := checkStatic(o.Binary); err != nil {
		return nil, fmt.Errorf("--binary: %w", err)
	}
	layers := []struct {
		name, why string
		entries   []entry
	}{
		{"base", "users, CA certificates, work directory", baseEntries(o.CACerts)},
		{"qemu-img", "qemu-img and the host libraries it loads", qemu.entries(o.QemuImg)},
		{"installer-iso", "the base installer ISO", []entry{{path: imageInstallerISO, mode: 0o644, src: o.InstallerISO}}},
		{"simulator", "the controller", []entry{{path: imageBinary, mode: 0o755, src: o.Binary}}},
	}
	base, err := mutate.ConfigFile(mutate.MediaType(empty.Image, types.OCIManifestSchema1), &v1.ConfigFile{
		Architecture: "amd64", OS: "linux", RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{
			User:       fmt.Sprintf("%d:%d", nonrootID, nonrootID),
			Entrypoint: []string{imageBinary, "--provider=redfish", "--installer-iso=" + imageInstallerISO, "--work-dir=" + imageWorkDir},
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			WorkingDir: "/",
			Labels:     labels(o),
		},
	})
	if err != nil {
		return nil, err
	}
	img := mutate.ConfigMediaType(base, types.OCIConfigJSON)
	for _, l := range layers {
		layer, err := newLayer(tmp, l.name, l.entries, mtime)
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: mtime}, CreatedBy: "hack/image: " + l.why}})
		if err != nil {
			return nil, fmt.Errorf("adding layer %s: %w", l.name, err)
		}
	}
	return mutate.CreatedAt(img, v1.Time{Time: mtime})
}

func labels(o options) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "stargate-redfish-dc",
		"org.opencontainers.image.description": "Stargate's Redfish datacenter controller (simulator --provider redfish)",
	}
	for k, v := range map[string]string{"source": o.Source, "version": o.Version, "revision": o.Revision} {
		if v != "" {
			l["org.opencontainers.image."+k] = v
		}
	}
	return l
}

func baseEntries(caCerts string) []entry {
	const (
		passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
		group  = "root:x:0:\nnonroot:x:65532:\n"
	)
	return []entry{
		{path: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{path: "etc/group", mode: 0o644, data: []byte(group)},
		{path: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, src: caCerts},
		{path: "root", mode: 0o700, dir: true},
		{path: "home/nonroot", mode: 0o700, dir: true, uid: nonrootID, gid: nonrootID},
		{path: imageWorkDir[1:], mode: 0o700, dir: true, uid: nonrootID, gid: nonrootID},
		{path: "tmp", mode: 0o1777, dir: true},
	}
}

// checkStatic refuses a dynamically linked binary: the image has no C library for it.
func checkStatic(path string) error {
	f, err := openELF(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}
