// Package imagecache downloads OS images once per URL and hands out the cached file. Each entry
// is a directory named by the SHA-256 of the URL; downloads are hashed while they stream, verified
// against the requested checksum (and by the caller's Verify) and renamed into place from a temp
// file under a per-entry file lock, so a cached image is complete, verified and never written
// again. On every use an entry is checked again (present, same size and mtime as recorded, else
// re-hashed; Verify), and refetched when it is gone or damaged.
//
// URLs are untrusted: file URLs are served only from directories the operator allows, http(s)
// never reaches loopback, link-local, multicast or this host's own addresses unless allowed (the
// check is made on the address actually connected to, for every redirect too), and downloads
// have a size limit and connect, header and stall timeouts. Failures wrap ErrNotFound,
// ErrChecksumMismatch, ErrNotAllowed, ErrTooLarge or ErrStalled so callers can tell a user what
// to fix. Cache files are 0600 in 0700 directories.
package imagecache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
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
	// imageStatFile holds "<size> <mtime unix ns>" of imageDataFile as it was
	// cached. A data file that no longer matches it is re-hashed before use.
	imageStatFile = "stat"
	// imageLockFile serializes downloads of one URL across processes. An
	// entry directory is removed only under its lock, and a locker checks that
	// its lock file is still the one in place (see lockEntry).
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
//
// Fields other than Dir say what may be fetched and how; they are read on
// first use and must not change afterwards.
type Cache struct {
	Dir string // e.g. /var/lib/stargate/images; made 0700

	// FileDirs are the directories file:// URLs may name files below (after
	// resolving symlinks and ".."). None: file URLs are refused.
	FileDirs []string
	// AllowHosts are addresses http(s) URLs may reach although they are
	// refused by default (loopback, link-local, this host's addresses, ...,
	// see ErrNotAllowed) or listed in DenyHosts.
	AllowHosts []netip.Prefix
	// DenyHosts are further addresses http(s) URLs may not reach, such as
	// the network of the VMs this host runs.
	DenyHosts []netip.Prefix
	// MaxBytes is the largest image fetched; 0 means DefaultMaxBytes.
	MaxBytes int64
	// ConnectTimeout bounds the TCP connect and the TLS handshake, each;
	// 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// HeaderTimeout bounds the wait for response headers; 0 means
	// DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// StallTimeout fails a download that received no byte for this long;
	// 0 means DefaultStallTimeout.
	StallTimeout time.Duration
	// Verify, when set, checks a downloaded file before it is cached and a
	// cached one on every use; an error rejects the file (the download is
	// discarded, a cached entry removed and fetched again) and is returned
	// wrapped. It must only read path.
	Verify func(ctx context.Context, path string) error

	// tlsConfig lets tests trust their own servers; nil means the system's roots.
	tlsConfig *tls.Config

	once sync.Once
	set  settings

	mu    sync.Mutex
	calls map[string]*imageCall // in-flight fetches by entry dir and checksum
}

// settings are the Cache's fields with defaults applied, and what is made of them.
type settings struct {
	fileDirs                                    []fileDir
	allow, deny                                 []netip.Prefix
	maxBytes                                    int64
	connectTimeout, headerTimeout, stallTimeout time.Duration
	client                                      *http.Client
}

// fileDir is an allowed directory as given and with its symlinks resolved.
type fileDir struct{ given, resolved string }

func (c *Cache) settings() *settings {
	c.once.Do(func() {
		s := settings{
			allow: c.AllowHosts, deny: c.DenyHosts,
			maxBytes:       cmp.Or(c.MaxBytes, DefaultMaxBytes),
			connectTimeout: cmp.Or(c.ConnectTimeout, DefaultConnectTimeout),
			headerTimeout:  cmp.Or(c.HeaderTimeout, DefaultHeaderTimeout),
			stallTimeout:   cmp.Or(c.StallTimeout, DefaultStallTimeout),
		}
		for _, d := range c.FileDirs {
			abs, err := filepath.Abs(d)
			if err != nil || d == "" {
				continue
			}
			fd := fileDir{given: abs, resolved: abs}
			if r, err := filepath.EvalSymlinks(abs); err == nil {
				fd.resolved = r
			}
			s.fileDirs = append(s.fileDirs, fd)
		}
		s.client = c.newClient(s)
		c.set = s
	})
	return &c.set
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

// fetchRequest is one Fetch or Lookup, checked and resolved to its entry.
type fetchRequest struct {
	src   source
	want  imageChecksum
	entry string // absolute entry directory
}

// prepare checks a request's checksum, URL and the URL against the policy, and makes sure the
// cache directory exists with mode 0700.
func (c *Cache) prepare(rawURL, checksum string) (fetchRequest, error) {
	if c.Dir == "" {
		return fetchRequest{}, errors.New("image cache dir is not set")
	}
	want, err := parseImageChecksum(checksum)
	if err != nil {
		return fetchRequest{}, err
	}
	u, err := parseImageURL(rawURL)
	if err != nil {
		return fetchRequest{}, err
	}
	src := source{raw: rawURL, url: u}
	if err := c.checkSource(src); err != nil {
		return fetchRequest{}, err
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return fetchRequest{}, fmt.Errorf("image cache dir %s: %w", c.Dir, err)
	}
	if err := ensureDir(dir); err != nil {
		return fetchRequest{}, err
	}
	sum := sha256.Sum256([]byte(rawURL))
	return fetchRequest{src: src, want: want, entry: filepath.Join(dir, hex.EncodeToString(sum[:]))}, nil
}

// Fetch returns the cached image for rawURL, downloading it first if needed.
//
// rawURL is http, https or file (file:///abs/path is copied into the cache so
// the entry does not depend on the source file), within the limits the Cache's
// fields set. checksum is "" or "sha256:<64 hex>" or "sha512:<128 hex>"; it is
// verified while the image streams to disk, and against the stored digest on a
// cache hit. A cached image with a different checksum is an error wrapping
// ErrChecksumMismatch, not a reason to download again: the URL's content
// changed or the spec is wrong, and a human must say which. A cached entry
// that is missing, damaged or rejected by Verify is fetched again.
func (c *Cache) Fetch(ctx context.Context, rawURL, checksum string, progress Progress) (Image, error) {
	req, err := c.prepare(rawURL, checksum)
	if err != nil {
		return Image{}, err
	}
	img, ok, err := c.lookup(ctx, req)
	if err != nil || ok {
		if ok && progress != nil {
			progress(img.Size, img.Size)
		}
		return img, err
	}
	return c.join(ctx, req, progress)
}

// Lookup returns the cached image for rawURL without downloading anything:
// ok is false when it is not cached (or must be fetched again), and Fetch
// then gets it. Errors are those of Fetch for a cache hit: an invalid or
// refused URL, or a cached image that does not match checksum.
func (c *Cache) Lookup(ctx context.Context, rawURL, checksum string) (img Image, ok bool, err error) {
	req, err := c.prepare(rawURL, checksum)
	if err != nil {
		return Image{}, false, err
	}
	return c.lookup(ctx, req)
}

// lookup is the fast path, without any lock: data only appears by rename after
// its digest and stat files are written, so if it is there and still matches
// its stat record, the entry is complete. Anything doubtful is a miss, for the
// slow path to repair or refetch under the lock.
func (c *Cache) lookup(ctx context.Context, req fetchRequest) (Image, bool, error) {
	img, ok, err := lookupImage(req.entry, req.src.raw, req.want)
	if err != nil || !ok {
		return img, ok, err
	}
	if err := fixEntryModes(req.entry); err != nil {
		return Image{}, false, err
	}
	if c.Verify != nil {
		if err := c.Verify(ctx, img.Path); err != nil {
			return Image{}, false, nil
		}
	}
	return img, true, nil
}

// join waits for the in-flight fetch of the request, starting one if there is none.
func (c *Cache) join(ctx context.Context, req fetchRequest, progress Progress) (Image, error) {
	key := req.entry + "\x00" + req.want.String()
	if ctx.Err() != nil { // do not start a download nobody will wait for
		return Image{}, fmt.Errorf("fetching %s: %w", req.src.raw, context.Cause(ctx))
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
		go c.run(dctx, key, call, req)
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
		return Image{}, fmt.Errorf("fetching %s: %w", req.src.raw, context.Cause(ctx))
	}
}

// run performs a shared fetch and publishes its result.
func (c *Cache) run(ctx context.Context, key string, call *imageCall, req fetchRequest) {
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
	img, err := c.fetchLocked(ctx, req, report)

	c.mu.Lock()
	if c.calls[key] == call {
		delete(c.calls, key)
	}
	c.mu.Unlock()
	call.img, call.err = img, err
	call.cancel()
	close(call.done)
}

// fetchLocked takes the entry's file lock, then returns the entry if it is (or
// another process made it) complete and sound, or downloads it.
func (c *Cache) fetchLocked(ctx context.Context, req fetchRequest, report Progress) (img Image, err error) {
	entry := req.entry
	lock, err := lockEntry(ctx, entry)
	if err != nil {
		return Image{}, err
	}
	defer func() {
		// Nothing but a complete entry stays: a failed fetch leaves no
		// directory behind (removed while we still hold its lock).
		if err != nil && !imageFileExists(filepath.Join(entry, imageDataFile)) {
			os.RemoveAll(entry)
		}
		lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
	}()
	if err := fixEntryModes(entry); err != nil {
		return Image{}, err
	}

	if imageFileExists(filepath.Join(entry, imageDataFile)) {
		usable, err := c.checkEntry(ctx, entry, req.want)
		if err != nil {
			return Image{}, err
		}
		if usable {
			img, ok, err := lookupImage(entry, req.src.raw, req.want)
			if err == nil && !ok {
				err = fmt.Errorf("image cache entry %s is incomplete after repair", entry)
			}
			if err == nil {
				report(img.Size, img.Size)
			}
			return img, err
		}
		// Damaged or rejected: remove the data first, so that the entry is
		// "absent" at every moment from here on, then fetch it again.
		if err := os.Remove(filepath.Join(entry, imageDataFile)); err != nil {
			return Image{}, fmt.Errorf("removing damaged cached image: %w", err)
		}
	}

	// We hold the lock and there is no data: anything else in the entry is
	// debris of an interrupted download. Start from a clean slate so that a
	// stale digest can never be paired with new data.
	if err := cleanImageEntry(entry); err != nil {
		return Image{}, err
	}
	return c.download(ctx, req, report)
}

// lockEntry creates the entry directory and takes its lock. A locker that got
// the lock of an entry removed meanwhile (it opened the lock file before the
// remover unlinked it) sees that the lock file in place is another and tries
// again, so an entry is never written by two processes.
func lockEntry(ctx context.Context, entry string) (*flock.Flock, error) {
	for {
		if err := os.MkdirAll(entry, 0o700); err != nil {
			return nil, imageWriteError(entry, "entry directory", err)
		}
		path := filepath.Join(entry, imageLockFile)
		lock := flock.New(path, flock.SetPermissions(0o600))
		if _, err := lock.TryLockContext(ctx, imageLockRetry); err != nil {
			if errors.Is(err, fs.ErrNotExist) && ctx.Err() == nil {
				continue // removed between MkdirAll and open by a failed fetch
			}
			return nil, fmt.Errorf("locking image cache entry %s: %w", entry, err)
		}
		held, err := lock.Stat()
		if err != nil {
			lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
			return nil, fmt.Errorf("locking image cache entry %s: %w", entry, err)
		}
		if now, err := os.Stat(path); err == nil && os.SameFile(held, now) {
			return lock, nil
		}
		lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
	}
}

// checkEntry decides, under the entry's lock, whether its data may be used:
// re-hashed when it no longer matches its stat record (or has none, cached by
// an older version) and compared with the recorded digest, and run through
// Verify. Missing digests are computed (sha512 when first asked for). Errors
// are those that keep it from deciding; false means "remove and refetch".
func (c *Cache) checkEntry(ctx context.Context, entry string, want imageChecksum) (bool, error) {
	data := filepath.Join(entry, imageDataFile)
	fi, err := os.Stat(data)
	if err != nil {
		return false, fmt.Errorf("reading cached image: %w", err)
	}
	recorded := readStatRecord(entry)
	need256 := recorded != statRecord(fi) || !imageFileExists(filepath.Join(entry, imageDigestFile))
	need512 := want.algo == "sha512" && (need256 || !imageFileExists(filepath.Join(entry, imageSHA512File)))
	if need256 || need512 {
		d256, d512, err := hashFile(ctx, data, need512)
		if err != nil {
			return false, err
		}
		// A digest on record that the data no longer matches: the data was
		// damaged (or replaced) after caching.
		if old, err := readImageDigest(entry, imageDigestFile); err == nil && old != d256 {
			return false, nil
		}
		if old, err := readImageDigest(entry, imageSHA512File); err == nil && need512 && old != d512 {
			return false, nil
		}
		if err := writeImageFileAtomic(entry, imageDigestFile, d256+"\n"); err != nil {
			return false, err
		}
		if need512 {
			if err := writeImageFileAtomic(entry, imageSHA512File, d512+"\n"); err != nil {
				return false, err
			}
		}
		if err := writeImageFileAtomic(entry, imageStatFile, statRecord(fi)+"\n"); err != nil {
			return false, err
		}
	}
	if c.Verify != nil {
		if err := c.Verify(ctx, data); err != nil {
			if ctx.Err() != nil {
				return false, fmt.Errorf("checking cached image: %w", context.Cause(ctx))
			}
			return false, nil
		}
	}
	return true, nil
}

// hashFile returns the sha256 digest of path, and its sha512 digest with want512.
func hashFile(ctx context.Context, path string, want512 bool) (string, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("reading cached image: %w", err)
	}
	defer f.Close()
	h256, h512 := sha256.New(), sha512.New()
	w := io.Writer(h256)
	if want512 {
		w = io.MultiWriter(h256, h512)
	}
	buf := make([]byte, imageCopyBuffer)
	for {
		if err := ctx.Err(); err != nil {
			return "", "", fmt.Errorf("hashing cached image: %w", context.Cause(ctx))
		}
		n, err := f.Read(buf)
		_, _ = w.Write(buf[:n]) // hash.Hash.Write never fails
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", "", fmt.Errorf("hashing cached image %s: %w", path, err)
		}
	}
	d512 := ""
	if want512 {
		d512 = "sha512:" + hex.EncodeToString(h512.Sum(nil))
	}
	return "sha256:" + hex.EncodeToString(h256.Sum(nil)), d512, nil
}

// download streams the image into a temp file in the entry, hashing as it
// writes, verifies it and renames it into place. Nothing but the complete
// entry is left behind, whatever fails.
func (c *Cache) download(ctx context.Context, req fetchRequest, report Progress) (img Image, err error) {
	entry, rawURL, want := req.entry, req.src.raw, req.want
	maxBytes := c.settings().maxBytes
	var body io.ReadCloser
	var total int64
	if req.src.url.Scheme == "file" {
		body, total, err = c.openFile(req.src)
		if err == nil && total > maxBytes {
			body.Close()
			err = fmt.Errorf("reading %s: %d bytes, more than the limit of %d: %w", rawURL, total, maxBytes, ErrTooLarge)
		}
	} else {
		body, total, err = c.openHTTP(ctx, req.src)
	}
	if err != nil {
		return Image{}, err
	}
	defer body.Close()

	// CreateTemp makes the file 0600: cached images may hold what their
	// publisher did not mean for every user of this host.
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
			if done+int64(n) > maxBytes {
				return Image{}, fmt.Errorf("downloading %s: more than the limit of %d bytes: %w", rawURL, maxBytes, ErrTooLarge)
			}
			if _, werr := tmp.Write(buf[:n]); werr != nil {
				return Image{}, imageWriteError(entry, rawURL, werr)
			}
			_, _ = hashes.Write(buf[:n]) // hash.Hash.Write never fails
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

	// Explicit, in case a default ACL or umask widened it.
	if err := tmp.Chmod(0o600); err != nil {
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
	if c.Verify != nil {
		if err := c.Verify(ctx, tmp.Name()); err != nil {
			return Image{}, fmt.Errorf("image %s: %w", rawURL, err)
		}
	}
	fi, err := os.Stat(tmp.Name())
	if err != nil {
		return Image{}, imageWriteError(entry, rawURL, err)
	}

	meta := []struct{ name, text string }{
		{imageURLFile, rawURL},
		{imageDigestFile, digest},
		{imageSHA512File, digest512},
		{imageStatFile, statRecord(fi)}, // rename keeps size and mtime
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

// lookupImage returns the complete entry, ok=false when the entry is absent,
// lacks a digest or stat file, or its data no longer matches its stat record
// (all of which the slow path repairs or refetches), or an error when the
// cached content does not match want.
func lookupImage(entry, rawURL string, want imageChecksum) (Image, bool, error) {
	data := filepath.Join(entry, imageDataFile)
	fi, err := os.Stat(data)
	if err != nil || !fi.Mode().IsRegular() {
		return Image{}, false, nil
	}
	if readStatRecord(entry) != statRecord(fi) {
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

// statRecord is what imageStatFile holds for a data file.
func statRecord(fi os.FileInfo) string {
	return fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
}

func readStatRecord(entry string) string {
	s, _ := readImageDigest(entry, imageStatFile)
	return s
}

// ensureDir creates the cache directory, and makes it (and an existing one) 0700.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return imageWriteError(filepath.Join(dir, "x"), "cache directory", err)
	}
	return chmodIf(dir, 0o700)
}

// fixEntryModes makes an entry 0700 and its files 0600, for entries cached by
// versions that made them world-readable.
func fixEntryModes(entry string) error {
	if err := chmodIf(entry, 0o700); err != nil {
		return err
	}
	des, err := os.ReadDir(entry)
	if err != nil {
		return fmt.Errorf("reading image cache entry %s: %w", entry, err)
	}
	for _, de := range des {
		if de.Type().IsRegular() {
			if err := chmodIf(filepath.Join(entry, de.Name()), 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// chmodIf sets path's permissions to mode unless they are already.
func chmodIf(path string, mode fs.FileMode) error {
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile: nothing to protect
		}
		return fmt.Errorf("securing %s: %w", path, err)
	}
	if fi.Mode().Perm() == mode || fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	if err := os.Chmod(path, mode); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("securing %s: %w", path, err)
	}
	return nil
}

// cleanImageEntry removes temp files and metadata of an entry without data.
// The caller holds the entry lock, so no other process is writing there.
func cleanImageEntry(entry string) error {
	des, err := os.ReadDir(entry)
	if err != nil {
		return fmt.Errorf("reading image cache entry %s: %w", entry, err)
	}
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, imageTempPrefix) || name == imageDigestFile || name == imageSHA512File || name == imageStatFile {
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
		err = tmp.Chmod(0o600)
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
		_ = d.Sync()
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
