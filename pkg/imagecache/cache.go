// Package imagecache downloads OS images once per URL and hands out the cached file. Each entry
// is a directory named by the SHA-256 of the URL; downloads are hashed while they stream, verified
// against the requested checksum and renamed into place from a temp file under a per-entry file
// lock, so a cached image is complete, verified and never written again. Failures wrap
// ErrNotFound or ErrChecksumMismatch so callers can tell a user what to fix.
package imagecache

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gofrs/flock"
)

// Files of one image cache entry, Dir/<sha256(url) hex>/. Each name is a
// constant so that the layout can be read (and cleaned by hand) in one place.
const (
	// imageDataFile is the image itself. It only ever appears by rename of a
	// fully written and verified temp file, so its presence means "complete".
	imageDataFile = "data"
	// imageURLFile holds the URL text, for humans looking at the cache.
	imageURLFile = "url"
	// imageDigestFile holds "sha256:<hex>" of imageDataFile.
	imageDigestFile = "digest"
	// imageSHA512File holds "sha512:<hex>" of imageDataFile. It is written only
	// when some caller asked for a sha512 checksum, because hashing twice on
	// every download would cost CPU for a digest almost nobody uses.
	imageSHA512File = "sha512"
	// imageLockFile serializes downloads of one URL across processes. It is
	// never removed: deleting a lock file races with a process opening it.
	imageLockFile = "lock"
	// imageTempPrefix starts the name of every temp file in an entry. Temp
	// files left behind by a crashed process are removed under the lock.
	imageTempPrefix = ".tmp-"
)

const (
	// imageProgressStep is how many bytes pass between two Progress calls, so
	// that a callback updating a status object is not called per read.
	imageProgressStep = 1 << 20
	// imageCopyBuffer is the read size while streaming an image to disk.
	imageCopyBuffer = 1 << 20
	// imageLockRetry is how often a waiter polls the cross-process lock; flock
	// has no blocking call that honours a context.
	imageLockRetry = 50 * time.Millisecond
)

// ErrChecksumMismatch is returned (wrapped) when an image's content does not
// match the requested checksum, whether freshly downloaded or cached.
var ErrChecksumMismatch = errors.New("checksum mismatch")

// ErrNotFound is returned (wrapped) when the image URL does not exist
// (HTTP 404, or a missing file for file:// URLs).
var ErrNotFound = errors.New("image not found")

// Cache downloads OS images once per URL into Dir and hands out the cached path.
//
// A cache entry is never modified once complete, so any number of VMs may use
// it as a read-only backing file. Downloads of the same URL are shared between
// goroutines using the same Cache and serialized by a file lock between
// Cache values (or processes) using the same Dir.
//
// The zero value with Dir set is ready to use. A Cache must not be
// copied after first use.
type Cache struct {
	Dir    string       // e.g. /var/lib/stargate/images
	Client *http.Client // nil = http.DefaultClient

	mu    sync.Mutex
	calls map[string]*imageCall // in-flight fetches by entry dir and checksum
}

// Progress is called during a download with bytes done and total (total -1 when unknown). May be nil.
//
// It is called from the goroutine doing the download (so it must be quick),
// at most about once per MiB, and finally with (n, n) once all n bytes are in
// place. A cache hit reports (size, size) once. Callers sharing a download all
// get its progress. After Fetch returned because its ctx was done, one more
// call may still arrive.
type Progress func(done, total int64)

// Image is a cached image.
type Image struct {
	Path     string // absolute path of the cached image file (never written to after caching)
	Digest   string // "sha256:<hex>" of the content, always computed
	Size     int64  // bytes
	CacheHit bool   // true when nothing was downloaded
}

// imageCall is one in-flight fetch shared by every goroutine that asked for
// the same URL and checksum. The download runs detached from the callers'
// contexts and is cancelled only when the last waiting caller gives up, so one
// impatient caller does not fail the others.
type imageCall struct {
	done   chan struct{} // closed when img and err are set
	img    Image
	err    error
	cancel context.CancelFunc

	// Guarded by Cache.mu. A waiter is registered even with a nil
	// Progress: len(waiters) is the number of callers still waiting.
	waiters map[int]Progress
	nextID  int
}

// imageChecksum is a parsed "algo:hex" checksum; the zero value means none.
type imageChecksum struct {
	algo string // "sha256" or "sha512"
	hex  string // lowercase
}

func (s imageChecksum) String() string { return s.algo + ":" + s.hex }

// Fetch returns the cached image for rawURL, downloading it first if needed.
//
// rawURL is http, https or file (file:///abs/path is copied into the cache so
// the entry does not depend on the source file). checksum is "" or
// "sha256:<64 hex>" or "sha512:<128 hex>"; it is verified while the image
// streams to disk, and against the stored digest on a cache hit. A cached
// image with a different checksum is an error wrapping ErrChecksumMismatch, not
// a reason to download again: the URL's content changed or the spec is wrong,
// and a human must say which.
func (c *Cache) Fetch(ctx context.Context, rawURL, checksum string, progress Progress) (Image, error) {
	if c.Dir == "" {
		return Image{}, errors.New("image cache dir is not set")
	}
	want, err := parseImageChecksum(checksum)
	if err != nil {
		return Image{}, err
	}
	src, err := parseImageURL(rawURL)
	if err != nil {
		return Image{}, err
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return Image{}, fmt.Errorf("image cache dir %s: %w", c.Dir, err)
	}
	sum := sha256.Sum256([]byte(rawURL))
	entry := filepath.Join(dir, hex.EncodeToString(sum[:]))

	// Fast path without any lock: data only appears by rename after its
	// digest files are written, so if it is there the entry is complete.
	img, ok, err := lookupImage(entry, rawURL, want)
	if err != nil || ok {
		if ok && progress != nil {
			progress(img.Size, img.Size)
		}
		return img, err
	}
	return c.join(ctx, entry, rawURL, src, want, progress)
}

// join waits for the in-flight fetch of (entry, want), starting one if there
// is none.
func (c *Cache) join(ctx context.Context, entry, rawURL string, src *url.URL, want imageChecksum, progress Progress) (Image, error) {
	key := entry + "\x00" + want.String()
	if ctx.Err() != nil { // do not start a download nobody will wait for
		return Image{}, fmt.Errorf("fetching %s: %w", rawURL, context.Cause(ctx))
	}

	c.mu.Lock()
	if c.calls == nil {
		c.calls = make(map[string]*imageCall)
	}
	call, ok := c.calls[key]
	if !ok {
		// Keep the caller's values (loggers, tracing) but not its deadline.
		dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		call = &imageCall{done: make(chan struct{}), cancel: cancel, waiters: make(map[int]Progress)}
		c.calls[key] = call
		go c.run(dctx, key, call, entry, rawURL, src, want)
	}
	id := call.nextID
	call.nextID++
	call.waiters[id] = progress
	c.mu.Unlock()

	select {
	case <-call.done:
		return call.img, call.err
	case <-ctx.Done():
	}

	c.mu.Lock()
	delete(call.waiters, id)
	if len(call.waiters) == 0 {
		call.cancel()
		if c.calls[key] == call {
			delete(c.calls, key)
		}
	}
	c.mu.Unlock()

	select {
	case <-call.done: // finished while we were leaving: the result is good
		return call.img, call.err
	default:
		return Image{}, fmt.Errorf("fetching %s: %w", rawURL, context.Cause(ctx))
	}
}

// run performs a shared fetch and publishes its result.
func (c *Cache) run(ctx context.Context, key string, call *imageCall, entry, rawURL string, src *url.URL, want imageChecksum) {
	report := func(done, total int64) {
		c.mu.Lock()
		fns := make([]Progress, 0, len(call.waiters))
		for _, fn := range call.waiters {
			if fn != nil {
				fns = append(fns, fn)
			}
		}
		c.mu.Unlock()
		for _, fn := range fns {
			fn(done, total)
		}
	}
	img, err := c.fetchLocked(ctx, entry, rawURL, src, want, report)

	c.mu.Lock()
	if c.calls[key] == call {
		delete(c.calls, key)
	}
	c.mu.Unlock()
	call.img, call.err = img, err
	call.cancel()
	close(call.done)
}

// fetchLocked takes the entry's file lock, then returns the entry if another
// process completed it meanwhile, or downloads it.
func (c *Cache) fetchLocked(ctx context.Context, entry, rawURL string, src *url.URL, want imageChecksum, report Progress) (Image, error) {
	if err := os.MkdirAll(entry, 0o755); err != nil {
		return Image{}, imageWriteError(entry, "entry directory", err)
	}
	lock := flock.New(filepath.Join(entry, imageLockFile), flock.SetPermissions(0o644))
	if _, err := lock.TryLockContext(ctx, imageLockRetry); err != nil {
		return Image{}, fmt.Errorf("locking image cache entry %s: %w", entry, err)
	}
	defer lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway

	if _, err := os.Stat(filepath.Join(entry, imageDataFile)); err == nil {
		if err := repairDigests(entry, want); err != nil {
			return Image{}, err
		}
		img, ok, err := lookupImage(entry, rawURL, want)
		if err == nil && !ok {
			err = fmt.Errorf("image cache entry %s is incomplete after repair", entry)
		}
		if err == nil {
			report(img.Size, img.Size)
		}
		return img, err
	}

	// We hold the lock and there is no data: anything else in the entry is
	// debris of an interrupted download. Start from a clean slate so that a
	// stale digest can never be paired with new data.
	if err := cleanImageEntry(entry); err != nil {
		return Image{}, err
	}
	return c.download(ctx, entry, rawURL, src, want, report)
}

// download streams the image into a temp file in entry, hashing as it
// writes, verifies it and renames it into place. Nothing but the complete
// entry is left behind, whatever fails.
func (c *Cache) download(ctx context.Context, entry, rawURL string, src *url.URL, want imageChecksum, report Progress) (img Image, err error) {
	body, total, err := c.open(ctx, rawURL, src)
	if err != nil {
		return Image{}, err
	}
	defer body.Close()

	tmp, err := os.CreateTemp(entry, imageTempPrefix+imageDataFile+"-*")
	if err != nil {
		return Image{}, imageWriteError(entry, "temp file", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	h256 := sha256.New()
	var h512 hash.Hash
	hashes := io.Writer(h256)
	if want.algo == "sha512" {
		h512 = sha512.New()
		hashes = io.MultiWriter(h256, h512)
	}

	buf := make([]byte, imageCopyBuffer)
	var done, reported int64
	for {
		if err := ctx.Err(); err != nil { // file:// reads do not watch ctx
			return Image{}, fmt.Errorf("downloading %s: %w", rawURL, context.Cause(ctx))
		}
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := tmp.Write(buf[:n]); werr != nil {
				return Image{}, imageWriteError(entry, rawURL, werr)
			}
			hashes.Write(buf[:n]) // hash.Hash.Write never fails
			done += int64(n)
			if done-reported >= imageProgressStep {
				reported = done
				report(done, total)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return Image{}, fmt.Errorf("downloading %s: %w", rawURL, rerr)
		}
	}
	if total >= 0 && done != total {
		return Image{}, fmt.Errorf("downloading %s: got %d of %d bytes: %w", rawURL, done, total, io.ErrUnexpectedEOF)
	}

	digest := "sha256:" + hex.EncodeToString(h256.Sum(nil))
	var digest512 string
	if h512 != nil {
		digest512 = "sha512:" + hex.EncodeToString(h512.Sum(nil))
	}
	if want.algo != "" {
		got := digest
		if want.algo == "sha512" {
			got = digest512
		}
		if got != want.String() {
			return Image{}, checksumError(rawURL, want.String(), got, "downloaded")
		}
	}

	// Images are not secret; 0644 lets other tools (and humans) read them.
	if err := tmp.Chmod(0o644); err != nil {
		return Image{}, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	// Sync before rename, or a power cut can leave a complete-looking but
	// empty "data" behind the rename.
	if err := tmp.Sync(); err != nil {
		return Image{}, imageWriteError(entry, rawURL, err)
	}
	if err := tmp.Close(); err != nil {
		return Image{}, imageWriteError(entry, rawURL, err)
	}

	meta := []struct{ name, text string }{
		{imageURLFile, rawURL},
		{imageDigestFile, digest},
		{imageSHA512File, digest512},
	}
	for _, m := range meta {
		if m.text == "" {
			continue
		}
		if err := writeImageFileAtomic(entry, m.name, m.text+"\n"); err != nil {
			return Image{}, err
		}
	}
	data := filepath.Join(entry, imageDataFile)
	if err := os.Rename(tmp.Name(), data); err != nil {
		return Image{}, fmt.Errorf("renaming %s into place: %w", tmp.Name(), err)
	}
	syncImageDir(entry)
	report(done, done)
	return Image{Path: data, Digest: digest, Size: done}, nil
}

// open starts reading the image source. total is the size in bytes, or -1
// when the server does not say.
func (c *Cache) open(ctx context.Context, rawURL string, src *url.URL) (io.ReadCloser, int64, error) {
	if src.Scheme == "file" {
		f, err := os.Open(src.Path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, 0, fmt.Errorf("reading %s: %w: %w", rawURL, ErrNotFound, err)
			}
			return nil, 0, fmt.Errorf("reading %s: %w", rawURL, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("reading %s: %w", rawURL, err)
		}
		if !fi.Mode().IsRegular() {
			f.Close()
			return nil, 0, fmt.Errorf("reading %s: not a regular file", rawURL)
		}
		return f, fi.Size(), nil
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("downloading %s: %w", rawURL, err)
	}
	client := c.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		// *url.Error repeats the URL we are about to name; keep its cause
		// (a *net.OpError, context.Canceled, ...) for errors.Is/As.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, 0, fmt.Errorf("downloading %s: %w", rawURL, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, 0, fmt.Errorf("downloading %s: HTTP %s: %w", rawURL, resp.Status, ErrNotFound)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		resp.Body.Close()
		return nil, 0, fmt.Errorf("downloading %s: unexpected HTTP status %s", rawURL, resp.Status)
	}
	return resp.Body, resp.ContentLength, nil
}

// lookupImage returns the complete entry, ok=false when the entry is absent
// or lacks a digest file that the slow path can repair, or an error when the
// cached content does not match want.
func lookupImage(entry, rawURL string, want imageChecksum) (Image, bool, error) {
	data := filepath.Join(entry, imageDataFile)
	fi, err := os.Stat(data)
	if err != nil {
		return Image{}, false, nil
	}
	digest, err := readImageDigest(entry, imageDigestFile)
	if err != nil {
		return Image{}, false, nil
	}
	if want.algo != "" {
		got := digest
		if want.algo == "sha512" {
			if got, err = readImageDigest(entry, imageSHA512File); err != nil {
				return Image{}, false, nil
			}
		}
		if got != want.String() {
			return Image{}, false, checksumError(rawURL, want.String(), got, "cached at "+data)
		}
	}
	return Image{Path: data, Digest: digest, Size: fi.Size(), CacheHit: true}, true, nil
}

// repairDigests computes the digest files of a complete entry that lacks
// them: sha512 when first asked for, or any digest lost by hand-editing.
// The caller holds the entry lock.
func repairDigests(entry string, want imageChecksum) error {
	need256 := !imageFileExists(filepath.Join(entry, imageDigestFile))
	need512 := want.algo == "sha512" && !imageFileExists(filepath.Join(entry, imageSHA512File))
	if !need256 && !need512 {
		return nil
	}
	f, err := os.Open(filepath.Join(entry, imageDataFile))
	if err != nil {
		return fmt.Errorf("reading cached image: %w", err)
	}
	defer f.Close()
	h256, h512 := sha256.New(), sha512.New()
	var w io.Writer = h256
	switch {
	case need256 && need512:
		w = io.MultiWriter(h256, h512)
	case need512:
		w = h512
	}
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("hashing cached image %s: %w", f.Name(), err)
	}
	if need256 {
		if err := writeImageFileAtomic(entry, imageDigestFile, "sha256:"+hex.EncodeToString(h256.Sum(nil))+"\n"); err != nil {
			return err
		}
	}
	if need512 {
		if err := writeImageFileAtomic(entry, imageSHA512File, "sha512:"+hex.EncodeToString(h512.Sum(nil))+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// cleanImageEntry removes temp files and digests of an entry without data.
// The caller holds the entry lock, so no other process is writing there.
func cleanImageEntry(entry string) error {
	des, err := os.ReadDir(entry)
	if err != nil {
		return fmt.Errorf("reading image cache entry %s: %w", entry, err)
	}
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, imageTempPrefix) || name == imageDigestFile || name == imageSHA512File {
			if err := os.RemoveAll(filepath.Join(entry, name)); err != nil {
				return fmt.Errorf("removing stale %s: %w", filepath.Join(entry, name), err)
			}
		}
	}
	return nil
}

// writeImageFileAtomic writes a small metadata file by temp file and rename,
// so readers see the old content or the new, never a torn one.
func writeImageFileAtomic(entry, name, text string) error {
	tmp, err := os.CreateTemp(entry, imageTempPrefix+name+"-*")
	if err != nil {
		return imageWriteError(entry, name, err)
	}
	_, err = tmp.WriteString(text)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(entry, name))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return imageWriteError(entry, name, err)
	}
	return nil
}

func readImageDigest(entry, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(entry, name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func imageFileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// syncImageDir makes a rename in dir durable. Best effort: the entry is
// consistent without it, only possibly absent after a power cut.
func syncImageDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// imageWriteError names a full disk plainly: "out of space" is what an
// operator must act on, buried ENOSPC text is easy to miss.
func imageWriteError(entry, what string, err error) error {
	dir := filepath.Dir(entry)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("image cache %s is out of space writing %s: %w", dir, what, err)
	}
	return fmt.Errorf("writing %s in image cache %s: %w", what, dir, err)
}

func checksumError(rawURL, want, got, where string) error {
	return fmt.Errorf("image %s (%s): expected %s, got %s; update spec.image.checksum or fix the URL: %w",
		rawURL, where, want, got, ErrChecksumMismatch)
}

// parseImageChecksum validates "", "sha256:<64 hex>" or "sha512:<128 hex>".
func parseImageChecksum(s string) (imageChecksum, error) {
	if s == "" {
		return imageChecksum{}, nil
	}
	algo, hexSum, _ := strings.Cut(s, ":")
	algo = strings.ToLower(algo)
	hexSum = strings.ToLower(hexSum)
	size := map[string]int{"sha256": sha256.Size, "sha512": sha512.Size}[algo]
	if b, err := hex.DecodeString(hexSum); size == 0 || err != nil || len(b) != size {
		return imageChecksum{}, fmt.Errorf("invalid image checksum %q: want sha256:<64 hex> or sha512:<128 hex>", s)
	}
	return imageChecksum{algo: algo, hex: hexSum}, nil
}

// parseImageURL accepts http, https and file:///abs/path URLs.
func parseImageURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid image URL: %w", err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("invalid image URL %s: no host", rawURL)
		}
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("invalid image URL %s: file URLs cannot name a host; use file:///abs/path", rawURL)
		}
		if !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("invalid image URL %s: file URLs need an absolute path; use file:///abs/path", rawURL)
		}
	case "":
		return nil, fmt.Errorf("invalid image URL %s: no scheme; use http://, https:// or file:///abs/path", rawURL)
	default:
		return nil, fmt.Errorf("invalid image URL %s: unsupported scheme %q (want http, https or file)", rawURL, u.Scheme)
	}
	return u, nil
}
