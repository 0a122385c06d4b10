package imagecache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gofrs/flock"
)

// imgTestContent returns n bytes of deterministic, non-repeating-ish content.
func imgTestContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func imgSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func imgSHA512(b []byte) string {
	s := sha512.Sum512(b)
	return "sha512:" + hex.EncodeToString(s[:])
}

// imgServer serves content at every path and counts GET requests.
func imgServer(t testing.TB, content []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		_, _ = w.Write(content)
	}))
	t.Cleanup(srv.Close)
	return srv, &gets
}

// imgLoopback allows the loopback addresses httptest servers listen on.
var imgLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// imgCache is a cache in dir that may fetch from httptest servers.
func imgCache(dir string) *Cache { return &Cache{Dir: dir, AllowHosts: imgLoopback} }

// imgEntryDir is the cache entry directory of rawURL in cache dir.
func imgEntryDir(dir, rawURL string) string {
	s := sha256.Sum256([]byte(rawURL))
	return filepath.Join(dir, hex.EncodeToString(s[:]))
}

// imgAssertNoData checks that an entry holds no image and no temp file.
func imgAssertNoData(t *testing.T, dir, rawURL string) {
	t.Helper()
	entry := imgEntryDir(dir, rawURL)
	des, err := os.ReadDir(entry)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if de.Name() == imageDataFile || strings.HasPrefix(de.Name(), imageTempPrefix) {
			t.Errorf("entry %s holds %s after a failed fetch", entry, de.Name())
		}
	}
}

// imgWaitForWaiters spins until n callers wait on the in-flight fetch of
// rawURL. It yields instead of sleeping: the state changes within microseconds.
func imgWaitForWaiters(t *testing.T, c *Cache, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got := 0
		for _, call := range c.calls {
			got += len(call.waiters)
		}
		c.mu.Unlock()
		if got == n {
			return
		}
		runtime.Gosched()
	}
	t.Fatalf("timed out waiting for %d waiters", n)
}

func TestImageCacheFetchThenHit(t *testing.T) {
	t.Parallel()
	content := imgTestContent(3<<20 + 17)
	srv, gets := imgServer(t, content)
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/debian-12.qcow2"

	img, err := c.Fetch(t.Context(), rawURL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.CacheHit {
		t.Error("first fetch reported a cache hit")
	}
	if img.Digest != imgSHA256(content) || img.Size != int64(len(content)) {
		t.Errorf("got digest %s size %d, want %s %d", img.Digest, img.Size, imgSHA256(content), len(content))
	}
	if !filepath.IsAbs(img.Path) || filepath.Dir(img.Path) != imgEntryDir(c.Dir, rawURL) {
		t.Errorf("path %s is not the data file of the URL's entry", img.Path)
	}
	if got, err := os.ReadFile(img.Path); err != nil || !bytes.Equal(got, content) {
		t.Errorf("cached content differs from served content (err %v)", err)
	}
	if got, _ := os.ReadFile(filepath.Join(filepath.Dir(img.Path), imageURLFile)); strings.TrimSpace(string(got)) != rawURL {
		t.Errorf("url file holds %q, want %q", got, rawURL)
	}
	// Root-only: an image may hold what its publisher did not mean for
	// every user of this host.
	for path, want := range map[string]fs.FileMode{
		c.Dir:                  0o700 | fs.ModeDir,
		img.Path:               0o600,
		filepath.Dir(img.Path): 0o700 | fs.ModeDir,
		filepath.Join(filepath.Dir(img.Path), imageDigestFile): 0o600,
		filepath.Join(filepath.Dir(img.Path), imageStatFile):   0o600,
		filepath.Join(filepath.Dir(img.Path), imageLockFile):   0o600,
		filepath.Join(filepath.Dir(img.Path), imageURLFile):    0o600,
	} {
		if fi, err := os.Stat(path); err != nil {
			t.Error(err)
		} else if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}

	again, err := c.Fetch(t.Context(), rawURL, imgSHA256(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !again.CacheHit || again.Path != img.Path || again.Digest != img.Digest || again.Size != img.Size {
		t.Errorf("second fetch = %+v, want a cache hit of %+v", again, img)
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d GET requests, want 1", n)
	}
}

func TestImageCacheFetchConcurrentOneDownload(t *testing.T) {
	t.Parallel()
	content := imgTestContent(2 << 20)
	var gets atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		<-release
		_, _ = w.Write(content)
	}))
	t.Cleanup(srv.Close)
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/img"

	const n = 20
	imgs := make([]Image, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { imgs[i], errs[i] = c.Fetch(t.Context(), rawURL, "", nil) })
	}
	// All callers share one in-flight download before the server answers.
	imgWaitForWaiters(t, c, n)
	close(release)
	wg.Wait()

	for i := range n {
		if errs[i] != nil {
			t.Fatalf("fetch %d: %v", i, errs[i])
		}
		if imgs[i] != imgs[0] {
			t.Errorf("fetch %d = %+v, want the same result as fetch 0 %+v", i, imgs[i], imgs[0])
		}
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d GET requests, want 1", n)
	}
	if img, err := c.Fetch(t.Context(), rawURL, "", nil); err != nil || !img.CacheHit {
		t.Errorf("fetch after the shared download = %+v, %v; want a cache hit", img, err)
	}
}

func TestImageCacheFetchChecksum(t *testing.T) {
	t.Parallel()
	content := imgTestContent(1<<20 + 5)
	other := imgTestContent(10)
	for _, tc := range []struct {
		name     string
		checksum string
		mismatch bool
	}{
		{"sha256", imgSHA256(content), false},
		{"sha512", imgSHA512(content), false},
		{"uppercase hex", strings.ToUpper(imgSHA256(content)), false},
		{"sha256 mismatch", imgSHA256(other), true},
		{"sha512 mismatch", imgSHA512(other), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := imgServer(t, content)
			c := imgCache(t.TempDir())
			rawURL := srv.URL + "/img"
			img, err := c.Fetch(t.Context(), rawURL, tc.checksum, nil)
			if !tc.mismatch {
				if err != nil {
					t.Fatal(err)
				}
				if img.Digest != imgSHA256(content) {
					t.Errorf("digest %s, want %s", img.Digest, imgSHA256(content))
				}
				return
			}
			if !errors.Is(err, ErrChecksumMismatch) {
				t.Fatalf("err = %v, want ErrChecksumMismatch", err)
			}
			t.Log(err)
			for _, want := range []string{strings.ToLower(tc.checksum), "update spec.image.checksum", rawURL} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			imgAssertNoData(t, c.Dir, rawURL)
		})
	}
}

func TestImageCacheFetchCachedChecksum(t *testing.T) {
	t.Parallel()
	content := imgTestContent(1 << 20)
	other := imgTestContent(10)
	for _, tc := range []struct {
		name     string
		checksum string
		mismatch bool
	}{
		{"no checksum", "", false},
		{"sha256 match", imgSHA256(content), false},
		{"sha512 computed once", imgSHA512(content), false},
		{"sha256 differs", imgSHA256(other), true},
		{"sha512 differs", imgSHA512(other), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, gets := imgServer(t, content)
			c := imgCache(t.TempDir())
			rawURL := srv.URL + "/img"
			// Cached without a checksum, so no sha512 is stored yet.
			if _, err := c.Fetch(t.Context(), rawURL, "", nil); err != nil {
				t.Fatal(err)
			}
			img, err := c.Fetch(t.Context(), rawURL, tc.checksum, nil)
			if tc.mismatch {
				if !errors.Is(err, ErrChecksumMismatch) {
					t.Fatalf("err = %v, want ErrChecksumMismatch", err)
				}
			} else if err != nil || !img.CacheHit {
				t.Fatalf("fetch = %+v, %v; want a cache hit", img, err)
			}
			if n := gets.Load(); n != 1 {
				t.Errorf("%d GET requests, want 1: a cached image is never downloaded again", n)
			}
			if strings.HasPrefix(tc.checksum, "sha512:") {
				stored, _ := os.ReadFile(filepath.Join(imgEntryDir(c.Dir, rawURL), imageSHA512File))
				if strings.TrimSpace(string(stored)) != imgSHA512(content) {
					t.Errorf("stored sha512 %q, want %q", stored, imgSHA512(content))
				}
			}
		})
	}
}

func TestImageCacheFetchInvalidChecksum(t *testing.T) {
	t.Parallel()
	for _, checksum := range []string{
		"abc",
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"sha256:1234",
		"sha256:" + strings.Repeat("z", 64),
		"sha512:" + strings.Repeat("a", 64),
		strings.Repeat("a", 64),
	} {
		t.Run(checksum, func(t *testing.T) {
			t.Parallel()
			c := imgCache(t.TempDir())
			_, err := c.Fetch(t.Context(), "http://127.0.0.1:1/img", checksum, nil)
			if err == nil || !strings.Contains(err.Error(), "invalid image checksum") {
				t.Errorf("err = %v, want an invalid checksum error", err)
			}
		})
	}
}

func TestImageCacheFetchHTTPErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status   int
		notFound bool
	}{
		{http.StatusNotFound, true},
		{http.StatusForbidden, false},
		{http.StatusInternalServerError, false},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "nope", tc.status)
			}))
			t.Cleanup(srv.Close)
			c := imgCache(t.TempDir())
			rawURL := srv.URL + "/missing.img"
			_, err := c.Fetch(t.Context(), rawURL, "", nil)
			if err == nil {
				t.Fatal("fetch succeeded")
			}
			t.Log(err)
			if errors.Is(err, ErrNotFound) != tc.notFound {
				t.Errorf("errors.Is(%v, ErrNotFound) = %v, want %v", err, !tc.notFound, tc.notFound)
			}
			for _, want := range []string{rawURL, strconv.Itoa(tc.status)} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			imgAssertNoData(t, c.Dir, rawURL)
		})
	}
}

func TestImageCacheFetchInterruptedThenRetry(t *testing.T) {
	t.Parallel()
	content := imgTestContent(4 << 20)
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		if gets.Add(1) > 1 {
			_, _ = w.Write(content)
			return
		}
		// The connection drops halfway through the declared length.
		_, _ = w.Write(content[:len(content)/2])
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		conn.Close()
	}))
	t.Cleanup(srv.Close)
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/img"

	if _, err := c.Fetch(t.Context(), rawURL, "", nil); err == nil {
		t.Fatal("fetch of a truncated body succeeded")
	} else if !strings.Contains(err.Error(), rawURL) {
		t.Errorf("error %q does not name the URL", err)
	} else {
		t.Log(err)
	}
	imgAssertNoData(t, c.Dir, rawURL)

	img, err := c.Fetch(t.Context(), rawURL, imgSHA256(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.CacheHit || gets.Load() != 2 {
		t.Errorf("retry: CacheHit %v after %d GETs, want a fresh download (2 GETs)", img.CacheHit, gets.Load())
	}
}

func TestImageCacheFetchCancelled(t *testing.T) {
	t.Parallel()
	content := imgTestContent(4 << 20)
	var gets atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		if gets.Add(1) > 1 {
			_, _ = w.Write(content)
			return
		}
		_, _ = w.Write(content[:2<<20])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/img"

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started := make(chan struct{})
	var once sync.Once
	progress := func(done, total int64) { once.Do(func() { close(started) }) }
	errc := make(chan error, 1)
	go func() {
		_, err := c.Fetch(ctx, rawURL, "", progress)
		errc <- err
	}()
	<-started // some bytes are on disk
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	// The next fetch waits for the cancelled download to clean up (entry
	// lock), then starts over.
	img, err := c.Fetch(t.Context(), rawURL, imgSHA256(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.CacheHit {
		t.Error("fetch after a cancelled download reported a cache hit")
	}
	des, _ := os.ReadDir(filepath.Dir(img.Path))
	for _, de := range des {
		if strings.HasPrefix(de.Name(), imageTempPrefix) {
			t.Errorf("temp file %s left behind", de.Name())
		}
	}
}

func TestImageCacheFetchOneWaiterCancels(t *testing.T) {
	t.Parallel()
	content := imgTestContent(1 << 20)
	var gets atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		<-release
		_, _ = w.Write(content)
	}))
	t.Cleanup(srv.Close)
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/img"

	ctxA, cancelA := context.WithCancel(t.Context())
	errA := make(chan error, 1)
	go func() {
		_, err := c.Fetch(ctxA, rawURL, "", nil)
		errA <- err
	}()
	type result struct {
		img Image
		err error
	}
	resB := make(chan result, 1)
	go func() {
		img, err := c.Fetch(t.Context(), rawURL, "", nil)
		resB <- result{img, err}
	}()
	imgWaitForWaiters(t, c, 2)

	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled waiter: err = %v, want context.Canceled", err)
	}
	close(release)
	if r := <-resB; r.err != nil || r.img.CacheHit {
		t.Errorf("remaining waiter = %+v, %v; want the shared download", r.img, r.err)
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d GET requests, want 1", n)
	}
}

func TestImageCacheFetchStaleTempFiles(t *testing.T) {
	t.Parallel()
	content := imgTestContent(1 << 20)
	srv, _ := imgServer(t, content)
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/img"

	// Debris of a process that died mid-download: a half image, a digest of
	// something else, a stale lock file.
	entry := imgEntryDir(c.Dir, rawURL)
	if err := os.MkdirAll(entry, 0o755); err != nil {
		t.Fatal(err)
	}
	stale := map[string]string{
		imageTempPrefix + "data-123": "half an image",
		imageTempPrefix + "digest-9": "sha256:junk",
		imageDigestFile:              imgSHA256([]byte("other")),
		imageSHA512File:              imgSHA512([]byte("other")),
		imageLockFile:                "",
	}
	for name, text := range stale {
		if err := os.WriteFile(filepath.Join(entry, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	img, err := c.Fetch(t.Context(), rawURL, imgSHA512(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != imgSHA256(content) {
		t.Errorf("digest %s, want %s", img.Digest, imgSHA256(content))
	}
	if digest, _ := os.ReadFile(filepath.Join(entry, imageDigestFile)); strings.TrimSpace(string(digest)) != imgSHA256(content) {
		t.Errorf("digest file %q, want %s", digest, imgSHA256(content))
	}
	des, _ := os.ReadDir(entry)
	for _, de := range des {
		if strings.HasPrefix(de.Name(), imageTempPrefix) {
			t.Errorf("stale temp file %s still there", de.Name())
		}
	}
}

func TestImageCacheFetchFileURL(t *testing.T) {
	t.Parallel()
	content := imgTestContent(2<<20 + 3)
	srcDir := t.TempDir()
	src := filepath.Join(srcDir, "base image.raw")
	if err := os.WriteFile(src, content, 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: t.TempDir(), FileDirs: []string{srcDir, "/nonexistent"}}
	rawURL := "file://" + strings.ReplaceAll(src, " ", "%20")

	img, err := c.Fetch(t.Context(), rawURL, imgSHA256(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.CacheHit || img.Path == src {
		t.Errorf("fetch = %+v, want a copy of %s", img, src)
	}
	// The entry is independent of its source.
	if err := os.Remove(src); err != nil {
		t.Fatal(err)
	}
	again, err := c.Fetch(t.Context(), rawURL, "", nil)
	if err != nil || !again.CacheHit {
		t.Fatalf("fetch after removing the source = %+v, %v; want a cache hit", again, err)
	}
	if got, _ := os.ReadFile(again.Path); !bytes.Equal(got, content) {
		t.Error("cached copy differs from the source")
	}

	_, err = c.Fetch(t.Context(), "file:///nonexistent/stargate.img", "", nil)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing file: err = %v, want ErrNotFound", err)
	}
}

func TestImageCacheFetchInvalidURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url  string
		want string
	}{
		{"ftp://example.com/img", `unsupported scheme "ftp"`},
		{"s3://bucket/img", `unsupported scheme "s3"`},
		{"/var/lib/img.qcow2", "no scheme"},
		{"file://otherhost/img", "cannot name a host"},
		{"file:relative/img", "absolute path"},
		{"http:///img", "no host"},
		{"http://:8080/img", "no host"},
		{"http://[::1", "invalid image URL"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			t.Parallel()
			c := imgCache(t.TempDir())
			_, err := c.Fetch(t.Context(), tc.url, "", nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidURL) {
				t.Errorf("err = %v, want ErrInvalidURL mentioning %q", err, tc.want)
			}
			if des, _ := os.ReadDir(c.Dir); len(des) != 0 {
				t.Errorf("cache dir has %d entries after a rejected URL", len(des))
			}
		})
	}
	if _, err := (&Cache{}).Fetch(t.Context(), "http://127.0.0.1:1/img", "", nil); err == nil {
		t.Error("fetch with an empty Dir succeeded")
	}
}

func TestImageCacheFetchUnreachableHost(t *testing.T) {
	t.Parallel()
	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	rawURL := "http://" + addr + "/img"
	c := imgCache(t.TempDir())

	_, err = c.Fetch(t.Context(), rawURL, "", nil)
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Fatalf("err = %v, want a wrapped *net.OpError", err)
	}
	if !strings.Contains(err.Error(), rawURL) {
		t.Errorf("error %q does not name the URL", err)
	}
	t.Log(err)
	imgAssertNoData(t, c.Dir, rawURL)
}

func TestImageCacheFetchProgress(t *testing.T) {
	t.Parallel()
	content := imgTestContent(5<<20 + 123)
	for _, tc := range []struct {
		name        string
		knownLength bool
	}{
		{"content-length", true},
		{"chunked", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.knownLength {
					w.Header().Set("Content-Length", strconv.Itoa(len(content)))
				}
				for chunk := range slices.Chunk(content, 64<<10) {
					_, _ = w.Write(chunk)
					w.(http.Flusher).Flush() // without a length, this makes it chunked
				}
			}))
			t.Cleanup(srv.Close)
			c := imgCache(t.TempDir())
			n := int64(len(content))
			wantTotal := int64(-1)
			if tc.knownLength {
				wantTotal = n
			}

			var calls [][2]int64
			if _, err := c.Fetch(t.Context(), srv.URL+"/img", "", func(done, total int64) {
				calls = append(calls, [2]int64{done, total})
			}); err != nil {
				t.Fatal(err)
			}
			if len(calls) == 0 || calls[len(calls)-1] != [2]int64{n, n} {
				t.Fatalf("progress calls %v, want a final (%d, %d)", calls, n, n)
			}
			if limit := n/imageProgressStep + 2; int64(len(calls)) > limit {
				t.Errorf("%d progress calls for %d bytes, want at most %d", len(calls), n, limit)
			}
			for i, call := range calls[:len(calls)-1] {
				if call[1] != wantTotal || (i > 0 && call[0] <= calls[i-1][0]) {
					t.Errorf("progress call %d = %v, want increasing done and total %d", i, call, wantTotal)
				}
			}

			// A hit reports its size once.
			calls = nil
			if _, err := c.Fetch(t.Context(), srv.URL+"/img", "", func(done, total int64) {
				calls = append(calls, [2]int64{done, total})
			}); err != nil {
				t.Fatal(err)
			}
			if len(calls) != 1 || calls[0] != [2]int64{n, n} {
				t.Errorf("cache hit progress calls %v, want [[%d %d]]", calls, n, n)
			}
		})
	}
}

func TestImageCacheFetchTwoCachesOneDownload(t *testing.T) {
	t.Parallel()
	content := imgTestContent(2 << 20)
	var gets atomic.Int64
	entered := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gets.Add(1) == 1 {
			close(entered)
		}
		<-release
		_, _ = w.Write(content)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	rawURL := srv.URL + "/img"
	// Two values share nothing in memory, like two processes: only the file
	// lock keeps them from downloading twice.
	caches := []*Cache{imgCache(dir), imgCache(dir)}

	imgs := make([]Image, len(caches))
	errs := make([]error, len(caches))
	var wg sync.WaitGroup
	wg.Go(func() { imgs[0], errs[0] = caches[0].Fetch(t.Context(), rawURL, "", nil) })
	<-entered // caches[0] holds the entry lock and is downloading
	wg.Go(func() { imgs[1], errs[1] = caches[1].Fetch(t.Context(), rawURL, "", nil) })
	imgWaitForWaiters(t, caches[1], 1)
	close(release)
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("cache %d: %v", i, err)
		}
	}
	if imgs[0].CacheHit || !imgs[1].CacheHit || imgs[0].Path != imgs[1].Path {
		t.Errorf("results %+v and %+v, want one download and one hit of the same file", imgs[0], imgs[1])
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d GET requests, want 1", n)
	}
}

func TestImageCacheFetchHonoursFileLock(t *testing.T) {
	t.Parallel()
	content := imgTestContent(1 << 20)
	srv, gets := imgServer(t, content)
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/img"

	// Another "process" holds the entry lock.
	entry := imgEntryDir(c.Dir, rawURL)
	if err := os.MkdirAll(entry, 0o755); err != nil {
		t.Fatal(err)
	}
	other := flock.New(filepath.Join(entry, imageLockFile))
	if err := other.Lock(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Fetch(ctx, rawURL, "", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("fetch while the lock is held: err = %v, want DeadlineExceeded", err)
	}
	if n := gets.Load(); n != 0 {
		t.Errorf("%d GET requests while the lock was held, want 0", n)
	}

	if err := other.Unlock(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(t.Context(), rawURL, "", nil); err != nil {
		t.Fatal(err)
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d GET requests, want 1", n)
	}
}

func TestImageWriteError(t *testing.T) {
	t.Parallel()
	entry := "/var/lib/stargate/images/abc"
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"enospc", &fs.PathError{Op: "write", Path: entry + "/.tmp-data-1", Err: syscall.ENOSPC}, "image cache /var/lib/stargate/images is out of space"},
		{"edquot", fmt.Errorf("sync: %w", syscall.EDQUOT), "is out of space"},
		{"other", &fs.PathError{Op: "write", Path: entry, Err: syscall.EIO}, "writing http://x/img in image cache /var/lib/stargate/images"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := imageWriteError(entry, "http://x/img", tc.err)
			if !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.err) {
				t.Errorf("err = %v, want it to wrap %v and mention %q", err, tc.err, tc.want)
			}
		})
	}
}
