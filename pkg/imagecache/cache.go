// Package imagecache downloads OS images once per URL and hands out the cached file. Each entry
// is a directory named by the SHA-256 of the URL; downloads are hashed while they stream, verified
// against the requested checksum (and by the caller's Verify) and renamed into place from a temp
// file under a per-entry file lock, so a cached image is complete, verified and never written
// again. On every use an entry is checked again (present, same size and mtime as recorded, else
// re-hashed; Verify), and refetched when it is gone or damaged. Every use records its time, so
// that a caller can bound the cache's size: Entries lists the entries with their last use and
// size, Remove removes one under its lock (entries.go).
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
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"time"
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

// ErrServerError is returned (wrapped) when the server answers with a 5xx status: the one kind of
// failure worth trying again soon (a mirror restarting, a proxy overloaded).
var ErrServerError = errors.New("server error")

// ServerError is the error of a download of rawURL answered with the 5xx status code: it says
// which, and is ErrServerError.
func ServerError(rawURL string, code int) error { return serverError{rawURL, code} }

type serverError struct {
	url  string
	code int
}

func (e serverError) Error() string {
	return fmt.Sprintf("downloading %s: unexpected HTTP %d %s", e.url, e.code, http.StatusText(e.code))
}

func (e serverError) Is(target error) bool { return target == ErrServerError }

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
	// Intercept, when set, stands between an image's source and its download: it gets the
	// opened body and its announced size (-1 unknown), or the error opening it, and returns
	// what the download reads instead. For rehearsing failures (injected faults) on a cache of
	// their own: a cache others share must never have one.
	Intercept func(body io.ReadCloser, size int64, err error) (io.ReadCloser, int64, error)

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
		if errors.Is(err, fs.ErrNotExist) { // removed meanwhile (Remove): a miss
			return Image{}, false, nil
		}
		return Image{}, false, err
	}
	if c.Verify != nil {
		if err := c.Verify(ctx, img.Path); err != nil {
			return Image{}, false, nil
		}
	}
	touchEntry(req.entry)
	return img, true, nil
}
