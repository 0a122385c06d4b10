package redfishdc

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/installspec"
	"stargate.io/stargate/pkg/qemu"
)

// rawImage is an OS image converted to the raw disk image the installer streams to a disk.
type rawImage struct {
	Path string
	// Digest is the image's installspec.ImageDigest (chunked sha256), lowercase hex.
	Digest string
	Size   int64
}

// rawImages converts cached OS images to raw once, keyed by the source image's digest, so that
// every repave of one image shares one file. A raw file is complete only once its digest file
// (digestSuffix) is written; anything else in the directory is debris of an interrupted conversion.
type rawImages struct {
	dir     string
	qemuImg string

	mu   sync.Mutex
	busy map[string]*sync.Mutex // per source digest: one conversion at a time
}

func newRawImages(dir, qemuImg string) *rawImages {
	if qemuImg == "" {
		qemuImg = "qemu-img"
	}
	return &rawImages{dir: dir, qemuImg: qemuImg, busy: map[string]*sync.Mutex{}}
}

// get returns the raw form of a cached image, converting it first if needed.
func (r *rawImages) get(ctx context.Context, src imagecache.Image) (rawImage, error) {
	key, ok := strings.CutPrefix(src.Digest, "sha256:")
	if !ok || len(key) != 64 || strings.Trim(key, "0123456789abcdef") != "" {
		return rawImage{}, fmt.Errorf("cached image %s has digest %q, not sha256", src.Path, src.Digest)
	}
	r.mu.Lock()
	lock, ok := r.busy[key]
	if !ok {
		lock = &sync.Mutex{}
		r.busy[key] = lock
	}
	r.mu.Unlock()
	lock.Lock()
	defer lock.Unlock()

	path := filepath.Join(r.dir, key+".raw")
	if img, ok := r.lookup(path); ok {
		return img, nil
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return rawImage{}, fmt.Errorf("raw image directory: %w", err)
	}
	base, err := qemu.InspectBaseImage(ctx, src.Path)
	if err != nil {
		return rawImage{}, fmt.Errorf("inspecting %s: %w", src.Path, err)
	}
	tmp := path + ".converting"
	_ = os.Remove(tmp)
	defer os.Remove(tmp)
	// Told the format, qemu-img never probes the untrusted file; no shell is involved.
	cmd := exec.CommandContext(ctx, r.qemuImg, "convert", "-q", "-f", base.Format, "-O", "raw", src.Path, tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		return rawImage{}, fmt.Errorf("converting %s to raw: %w: %s", src.Path, err, strings.TrimSpace(string(out)))
	}
	sum, size, err := hashFile(ctx, tmp)
	if err != nil {
		return rawImage{}, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return rawImage{}, fmt.Errorf("keeping the raw image: %w", err)
	}
	if err := os.WriteFile(path+digestSuffix, []byte(sum+"\n"), 0o600); err != nil {
		return rawImage{}, fmt.Errorf("recording the raw image's digest: %w", err)
	}
	return rawImage{Path: path, Digest: sum, Size: size}, nil
}

// lookup returns a finished conversion.
func (r *rawImages) lookup(path string) (rawImage, bool) {
	digest, err := os.ReadFile(path + digestSuffix)
	if err != nil {
		return rawImage{}, false
	}
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return rawImage{}, false
	}
	return rawImage{Path: path, Digest: strings.TrimSpace(string(digest)), Size: fi.Size()}, true
}

// digestSuffix names a raw image's digest file. It names the digest's kind: a raw image of an
// older version, with a plain sha256 beside it, is converted again rather than misread.
const digestSuffix = ".chunked-sha256"

// hashFile returns a file's installspec.ImageDigest (hex) and size; ctx stops a long hash.
func hashFile(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("hashing the raw image: %w", err)
	}
	defer f.Close()
	h := installspec.NewImageDigest()
	// Whole chunks per write: a chunk of zeros is compared, not hashed.
	n, err := io.CopyBuffer(h, ctxReader{ctx, f}, make([]byte, installspec.DigestChunkBytes))
	if err != nil {
		return "", 0, fmt.Errorf("hashing the raw image: %w", err)
	}
	return h.Finish(), n, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
