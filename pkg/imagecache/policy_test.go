package imagecache

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/qemu"
)

// imgAssertNoEntry checks that a refused or rejected URL left nothing in the cache.
func imgAssertNoEntry(t *testing.T, dir, rawURL string) {
	t.Helper()
	if _, err := os.Stat(imgEntryDir(dir, rawURL)); !errors.Is(err, fs.ErrNotExist) {
		des, _ := os.ReadDir(imgEntryDir(dir, rawURL))
		t.Errorf("cache entry of %s exists after a failed fetch (%v): %v", rawURL, err, des)
	}
}

// imgMBRDisk is a small raw disk with an MBR boot signature.
func imgMBRDisk(size int) []byte {
	b := make([]byte, size)
	b[510], b[511] = 0x55, 0xaa
	return b
}

// TestFileURLPolicy: file URLs read only below the allowed directories. /etc/shadow, a ".."
// walk out of an allowed directory and symlinks leading out of it are refused with
// ErrNotAllowed before anything is read or cached; a symlink that stays inside is fine.
func TestFileURLPolicy(t *testing.T) {
	t.Parallel()
	allowed, outside := t.TempDir(), t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("root:$6$secret-hash"), 0o600); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(allowed, "disk.raw")
	if err := os.WriteFile(disk, imgMBRDisk(4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"shadow-link": "/etc/shadow", "secret-link": secret, "outside-dir": outside, "disk-link": disk} {
		if err := os.Symlink(target, filepath.Join(allowed, name)); err != nil {
			t.Fatal(err)
		}
	}

	none := &Cache{Dir: t.TempDir()}
	_, err := none.Fetch(t.Context(), "file:///etc/shadow", "", nil)
	if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "no image directory is allowed") {
		t.Errorf("file URL without allowed directories: err = %v, want ErrNotAllowed", err)
	}

	c := &Cache{Dir: t.TempDir(), FileDirs: []string{allowed}}
	for _, u := range []string{
		"file:///etc/shadow",
		"file://" + secret,
		"file://" + allowed + "/../" + filepath.Base(outside) + "/secret",
		"file://" + allowed + "/%2e%2e/" + filepath.Base(outside) + "/secret",
		"file://" + allowed + "/shadow-link",
		"file://" + allowed + "/secret-link",
		"file://" + allowed + "/outside-dir/secret",
		"file://" + allowed, // the directory itself
	} {
		img, err := c.Fetch(t.Context(), u, "", nil)
		if !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s: fetch = %+v, %v; want ErrNotAllowed", u, img, err)
			continue
		}
		if strings.Contains(err.Error(), "secret-hash") {
			t.Errorf("%s: error shows the file's content: %v", u, err)
		}
		t.Log(err)
		imgAssertNoEntry(t, c.Dir, u)
		if _, ok, err := c.Lookup(t.Context(), u, ""); ok || !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s: Lookup = %v, %v; want ErrNotAllowed", u, ok, err)
		}
	}

	for _, u := range []string{"file://" + disk, "file://" + allowed + "/disk-link", "file://" + allowed + "/./sub/../disk.raw"} {
		if _, err := c.Fetch(t.Context(), u, "", nil); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	// A FIFO below an allowed directory fails at once instead of blocking the fetch.
	fifo := filepath.Join(allowed, "fifo")
	if err := syscallMkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(t.Context(), "file://"+fifo, "", nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FIFO: err = %v", err)
	}
}

// TestFileURLAllowedDirIsSymlink: an allowed directory given through a symlink accepts URLs
// spelled either way.
func TestFileURLAllowedDirIsSymlink(t *testing.T) {
	t.Parallel()
	target := t.TempDir()
	link := filepath.Join(t.TempDir(), "images")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "disk.raw"), imgMBRDisk(4096), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: t.TempDir(), FileDirs: []string{link}}
	for _, u := range []string{"file://" + link + "/disk.raw", "file://" + target + "/disk.raw"} {
		if _, err := c.Fetch(t.Context(), u, "", nil); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// TestHTTPAddressPolicy: loopback is refused unless allowed, and so are the addresses an image
// is never fetched from, before any request is sent.
func TestHTTPAddressPolicy(t *testing.T) {
	t.Parallel()
	content := imgTestContent(4096)
	srv, gets := imgServer(t, content)

	strict := &Cache{Dir: t.TempDir()}
	for _, u := range []string{
		srv.URL + "/img",
		strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/img", // a name: refused at connect
		strings.Replace(srv.URL, "127.0.0.1", "[::ffff:127.0.0.1]", 1) + "/img",
		"http://169.254.169.254/latest/meta-data/",
		"http://[fe80::1]/img",
		"http://0.0.0.0:" + srv.URL[strings.LastIndex(srv.URL, ":")+1:] + "/img",
		"http://224.0.0.1/img",
		"http://255.255.255.255/img",
	} {
		_, err := strict.Fetch(t.Context(), u, "", nil)
		if !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s: err = %v, want ErrNotAllowed", u, err)
		}
		t.Log(err)
		imgAssertNoEntry(t, strict.Dir, u)
	}
	if n := gets.Load(); n != 0 {
		t.Errorf("%d requests reached the loopback server", n)
	}

	denied := &Cache{Dir: t.TempDir(), DenyHosts: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	if _, err := denied.Fetch(t.Context(), "http://192.0.2.7/img", "", nil); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("denied network: err = %v, want ErrNotAllowed", err)
	}

	allowed := &Cache{Dir: t.TempDir(), AllowHosts: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	if _, err := allowed.Fetch(t.Context(), srv.URL+"/img", "", nil); err != nil {
		t.Errorf("allowed loopback: %v", err)
	}
}

// TestHTTPHostAddressRefused: an address of one of this host's interfaces (other than
// loopback) is refused like loopback.
func TestHTTPHostAddressRefused(t *testing.T) {
	t.Parallel()
	var host netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				host = ip.Unmap()
				break
			}
		}
	}
	if !host.IsValid() {
		testreq.Need(t, "a non-loopback IPv4 address on this host", "give the machine a network interface with an IPv4 address")
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(host, 0).String())
	if err != nil {
		testreq.Need(t, fmt.Sprintf("a listening socket on %s (%v)", host, err), "run the test where it may bind to the host's address")
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(imgMBRDisk(4096)) }))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)

	c := &Cache{Dir: t.TempDir(), AllowHosts: imgLoopback}
	_, err = c.Fetch(t.Context(), srv.URL+"/img", "", nil)
	if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "an address of this host") {
		t.Errorf("err = %v, want ErrNotAllowed naming a host address", err)
	}
	ok := &Cache{Dir: t.TempDir(), AllowHosts: []netip.Prefix{netip.PrefixFrom(host, 32)}}
	if _, err := ok.Fetch(t.Context(), srv.URL+"/img", "", nil); err != nil {
		t.Errorf("allowed host address: %v", err)
	}
}

// TestHTTPRedirectPolicy: every redirect target is checked again (by literal address, and at
// connect time for names), https never redirects to http, and redirect chains are bounded.
func TestHTTPRedirectPolicy(t *testing.T) {
	t.Parallel()
	// The target that must never be reached, on 127.0.0.1, which is not allowed.
	var forbiddenGets atomic.Int64
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		forbiddenGets.Add(1)
		_, _ = w.Write(imgMBRDisk(4096))
	}))
	t.Cleanup(forbidden.Close)
	_, forbiddenPort, _ := net.SplitHostPort(forbidden.Listener.Addr().String())

	// The allowed server, on 127.0.0.2 (all of 127/8 is loopback on Linux).
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		testreq.Need(t, fmt.Sprintf("a listening socket on 127.0.0.2 (%v)", err), "run the test where loopback covers 127/8 (Linux)")
	}
	var hops atomic.Int64
	allowedSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metadata":
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/iam/security-credentials/", http.StatusFound)
		case "/loopback-name":
			http.Redirect(w, r, "http://localhost:"+forbiddenPort+"/img", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, "/loop?"+strconv.FormatInt(hops.Add(1), 10), http.StatusFound)
		case "/ok":
			http.Redirect(w, r, "/disk", http.StatusMovedPermanently)
		case "/disk":
			_, _ = w.Write(imgMBRDisk(4096))
		}
	}))
	allowedSrv.Listener.Close()
	allowedSrv.Listener = l
	allowedSrv.Start()
	t.Cleanup(allowedSrv.Close)

	c := &Cache{Dir: t.TempDir(), AllowHosts: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
	for path, want := range map[string]string{
		"/metadata":      "link-local",
		"/loopback-name": "loopback",
		"/loop":          "redirects",
	} {
		u := allowedSrv.URL + path
		_, err := c.Fetch(t.Context(), u, "", nil)
		if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want ErrNotAllowed mentioning %q", path, err, want)
		}
		if strings.Contains(fmt.Sprint(err), "security-credentials") {
			t.Errorf("%s: the error repeats the redirect's whole URL: %v", path, err)
		}
		t.Log(err)
		imgAssertNoEntry(t, c.Dir, u)
	}
	if n := forbiddenGets.Load(); n != 0 {
		t.Errorf("%d requests reached the refused server through a redirect", n)
	}
	if _, err := c.Fetch(t.Context(), allowedSrv.URL+"/ok", "", nil); err != nil {
		t.Errorf("redirect within the allowed server: %v", err)
	}
}

// TestHTTPSDowngradeRefused: an https server redirecting to http is not followed.
func TestHTTPSDowngradeRefused(t *testing.T) {
	t.Parallel()
	plain, gets := imgServer(t, imgMBRDisk(4096))
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/disk" {
			_, _ = w.Write(imgMBRDisk(4096))
			return
		}
		http.Redirect(w, r, plain.URL+"/img", http.StatusFound)
	}))
	t.Cleanup(tlsSrv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(tlsSrv.Certificate())
	c := &Cache{Dir: t.TempDir(), AllowHosts: imgLoopback, tlsConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}

	_, err := c.Fetch(t.Context(), tlsSrv.URL+"/img", "", nil)
	if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "downgrade") {
		t.Errorf("err = %v, want a refused downgrade", err)
	}
	if n := gets.Load(); n != 0 {
		t.Errorf("the http server got %d requests", n)
	}
	if _, err := c.Fetch(t.Context(), tlsSrv.URL+"/disk", "", nil); err != nil {
		t.Errorf("https fetch: %v", err)
	}
}

// TestHTTPErrorsDoNotEchoTheServer: a failed download names the status code, never the
// server's reason phrase or body.
func TestHTTPErrorsDoNotEchoTheServer(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				body := "aws_secret_access_key=EXAMPLEKEY"
				fmt.Fprintf(conn, "HTTP/1.1 403 token=EXAMPLETOKEN\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			}()
		}
	}()
	c := imgCache(t.TempDir())
	_, err = c.Fetch(t.Context(), "http://"+l.Addr().String()+"/img", "", nil)
	if err == nil || !strings.Contains(err.Error(), "403 Forbidden") {
		t.Fatalf("err = %v, want the status code", err)
	}
	if strings.Contains(err.Error(), "EXAMPLE") {
		t.Errorf("the error echoes the server's text: %v", err)
	}
	t.Log(err)
}

// TestSizeLimit: an announced size above MaxBytes fails before the body is read; a stream
// (or a file) exceeding it is cut off; nothing is cached.
func TestSizeLimit(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	var streamed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		switch r.URL.Path {
		case "/announced":
			w.Header().Set("Content-Length", strconv.Itoa(100<<30))
			w.WriteHeader(http.StatusOK)
		case "/stream": // no Content-Length: chunked, and endless unless cut off
			for i := 0; i < 1000 && r.Context().Err() == nil; i++ {
				n, _ := w.Write(chunk)
				streamed.Add(int64(n))
			}
		case "/fits":
			_, _ = w.Write(imgMBRDisk(limit))
		}
	}))
	t.Cleanup(srv.Close)
	c := &Cache{Dir: t.TempDir(), AllowHosts: imgLoopback, MaxBytes: limit}

	start := time.Now()
	for _, path := range []string{"/announced", "/stream"} {
		_, err := c.Fetch(t.Context(), srv.URL+path, "", nil)
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: err = %v, want ErrTooLarge", path, err)
		}
		t.Log(err)
		imgAssertNoEntry(t, c.Dir, srv.URL+path)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusing oversize images took %s", d)
	}
	if n := streamed.Load(); n > 16*limit {
		t.Errorf("the stream was read for %d bytes before being cut off", n)
	}
	if _, err := c.Fetch(t.Context(), srv.URL+"/fits", "", nil); err != nil {
		t.Errorf("an image of exactly the limit: %v", err)
	}

	dir := t.TempDir()
	big := filepath.Join(dir, "big.raw")
	if err := os.WriteFile(big, imgMBRDisk(limit+1), 0o600); err != nil {
		t.Fatal(err)
	}
	fc := &Cache{Dir: t.TempDir(), FileDirs: []string{dir}, MaxBytes: limit}
	if _, err := fc.Fetch(t.Context(), "file://"+big, "", nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize file: err = %v, want ErrTooLarge", err)
	}
}

// TestStallAndRetry: a server that stops sending mid-body fails the download within the stall
// timeout, leaves nothing cached, and the next fetch downloads again and succeeds. A server
// that never answers fails within the header timeout.
func TestStallAndRetry(t *testing.T) {
	t.Parallel()
	content := imgMBRDisk(256 << 10)
	var stall atomic.Bool
	stall.Store(true)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/silent" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		if !stall.Load() {
			_, _ = w.Write(content)
			return
		}
		_, _ = w.Write(content[:len(content)/2])
		w.(http.Flusher).Flush()
		select { // stall: the connection stays open, nothing more comes
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	c := &Cache{Dir: t.TempDir(), AllowHosts: imgLoopback, StallTimeout: 300 * time.Millisecond, HeaderTimeout: 300 * time.Millisecond}
	u := srv.URL + "/img"

	start := time.Now()
	_, err := c.Fetch(t.Context(), u, "", nil)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a stalled download failed after %s, want about the stall timeout", d)
	}
	t.Log(err)
	imgAssertNoEntry(t, c.Dir, u)

	stall.Store(false)
	img, err := c.Fetch(t.Context(), u, imgSHA256(content), nil)
	if err != nil || img.CacheHit {
		t.Fatalf("retry = %+v, %v; want a fresh download", img, err)
	}

	start = time.Now()
	if _, err := c.Fetch(t.Context(), srv.URL+"/silent", "", nil); err == nil || !strings.Contains(err.Error(), "awaiting response headers") {
		t.Errorf("silent server: err = %v, want a header timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a silent server failed after %s, want about the header timeout", d)
	}
}

// verifyDisk is the check the simulator uses: real disk images only.
func verifyDisk(ctx context.Context, path string) error {
	_, err := qemu.InspectBaseImage(ctx, path)
	return err
}

// TestOnlyDiskImagesAreCached: with a Verify, pages, text, VMDK descriptors and qcow2 images
// with a backing file are refused within seconds and leave no cache entry; real disks are cached.
func TestOnlyDiskImagesAreCached(t *testing.T) {
	t.Parallel()
	testreq.Command(t, "qemu-img", "apt-get install -y qemu-utils")
	dir := t.TempDir()
	run := func(args ...string) {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	run("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", filepath.Join(dir, "backed.qcow2"), "1M")
	run("create", "-q", "-f", "qcow2", filepath.Join(dir, "plain.qcow2"), "1M")
	files := map[string][]byte{
		"page.html":    []byte("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"),
		"notes.txt":    []byte("just some text\n"),
		"desc.vmdk":    []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/shadow\" 0\n"),
		"mbr.raw":      imgMBRDisk(64 << 10),
		"backed.qcow2": nil,
		"plain.qcow2":  nil,
	}
	for name, b := range files {
		if b != nil {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	c := &Cache{Dir: t.TempDir(), AllowHosts: imgLoopback, Verify: verifyDisk}

	for name := range files {
		u := srv.URL + "/" + name
		start := time.Now()
		img, err := c.Fetch(t.Context(), u, "", nil)
		switch name {
		case "mbr.raw", "plain.qcow2":
			if err != nil {
				t.Errorf("%s: %v", name, err)
			} else if _, err := os.Stat(img.Path); err != nil {
				t.Errorf("%s: not cached: %v", name, err)
			}
		default:
			if !errors.Is(err, qemu.ErrUnsupportedImage) {
				t.Errorf("%s: err = %v, want ErrUnsupportedImage", name, err)
			}
			if strings.Contains(fmt.Sprint(err), "sign in") || strings.Contains(fmt.Sprint(err), ".tmp-") {
				t.Errorf("%s: the error quotes the content or a temp file: %v", name, err)
			}
			t.Log(err)
			imgAssertNoEntry(t, c.Dir, u)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s took %s", name, d)
		}
	}
}

// TestCachedEntryRejectedOnUse: an entry cached without the check (by an older version) is
// checked on use, removed, fetched again and refused.
func TestCachedEntryRejectedOnUse(t *testing.T) {
	t.Parallel()
	srv, gets := imgServer(t, []byte("<html>not a disk</html>\n"))
	dir := t.TempDir()
	u := srv.URL + "/img"
	if _, err := imgCache(dir).Fetch(t.Context(), u, "", nil); err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: dir, AllowHosts: imgLoopback, Verify: verifyDisk}
	if _, ok, err := c.Lookup(t.Context(), u, ""); ok || err != nil {
		t.Errorf("Lookup = %v, %v; want a miss", ok, err)
	}
	if _, err := c.Fetch(t.Context(), u, "", nil); !errors.Is(err, qemu.ErrUnsupportedImage) {
		t.Errorf("err = %v, want ErrUnsupportedImage", err)
	}
	imgAssertNoEntry(t, dir, u)
	if n := gets.Load(); n != 2 {
		t.Errorf("%d GETs, want 2 (the old entry, then a fresh try)", n)
	}
}

// TestCacheEntryDamagedOrRemoved: an entry removed by hand, a data file deleted, truncated or
// changed in place is fetched again instead of failing; an entry of an older version without
// a stat record is re-hashed once and kept.
func TestCacheEntryDamagedOrRemoved(t *testing.T) {
	t.Parallel()
	content := imgTestContent(2<<20 + 5)
	for _, tc := range []struct {
		name     string
		damage   func(t *testing.T, entry string)
		wantGets int64
	}{
		{"entry removed", func(t *testing.T, entry string) { imgMust(t, os.RemoveAll(entry)) }, 2},
		{"data removed", func(t *testing.T, entry string) { imgMust(t, os.Remove(filepath.Join(entry, imageDataFile))) }, 2},
		{"data truncated", func(t *testing.T, entry string) { imgMust(t, os.Truncate(filepath.Join(entry, imageDataFile), 1000)) }, 2},
		{"data changed in place", func(t *testing.T, entry string) {
			f, err := os.OpenFile(filepath.Join(entry, imageDataFile), os.O_WRONLY, 0)
			imgMust(t, err)
			_, err = f.WriteAt([]byte("XXXX"), 4096)
			imgMust(t, err)
			imgMust(t, f.Close())
		}, 2},
		{"older version without stat record", func(t *testing.T, entry string) {
			imgMust(t, os.Remove(filepath.Join(entry, imageStatFile)))
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, gets := imgServer(t, content)
			c := imgCache(t.TempDir())
			u := srv.URL + "/img"
			if _, err := c.Fetch(t.Context(), u, "", nil); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, imgEntryDir(c.Dir, u))
			if _, ok, err := c.Lookup(t.Context(), u, ""); ok || err != nil {
				t.Errorf("Lookup after damage = %v, %v; want a miss", ok, err)
			}
			img, err := c.Fetch(t.Context(), u, imgSHA256(content), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(img.Path); string(got) != string(content) {
				t.Error("the entry does not hold the image after the fetch")
			}
			if n := gets.Load(); n != tc.wantGets {
				t.Errorf("%d GETs, want %d", n, tc.wantGets)
			}
			if img, ok, err := c.Lookup(t.Context(), u, ""); !ok || err != nil || !img.CacheHit {
				t.Errorf("Lookup after the fetch = %+v, %v, %v; want a hit", img, ok, err)
			}
		})
	}
}

// TestCacheModesFixedOnUse: an entry left world-readable by an older version is made
// 0700/0600 when used.
func TestCacheModesFixedOnUse(t *testing.T) {
	t.Parallel()
	srv, _ := imgServer(t, imgTestContent(4096))
	c := imgCache(filepath.Join(t.TempDir(), "images"))
	u := srv.URL + "/img"
	img, err := c.Fetch(t.Context(), u, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	entry := filepath.Dir(img.Path)
	imgMust(t, os.Chmod(c.Dir, 0o755))
	imgMust(t, os.Chmod(entry, 0o755))
	des, _ := os.ReadDir(entry)
	for _, de := range des {
		imgMust(t, os.Chmod(filepath.Join(entry, de.Name()), 0o644))
	}
	if img, err := c.Fetch(t.Context(), u, "", nil); err != nil || !img.CacheHit {
		t.Fatalf("fetch = %+v, %v; want a hit", img, err)
	}
	for _, d := range []string{c.Dir, entry} {
		if fi, _ := os.Stat(d); fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, fi.Mode().Perm())
		}
	}
	des, _ = os.ReadDir(entry)
	for _, de := range des {
		if fi, _ := de.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", de.Name(), fi.Mode().Perm())
		}
	}
}

// TestLookupDoesNotDownload: Lookup answers from the cache only.
func TestLookupDoesNotDownload(t *testing.T) {
	t.Parallel()
	srv, gets := imgServer(t, imgTestContent(4096))
	c := imgCache(t.TempDir())
	if _, ok, err := c.Lookup(t.Context(), srv.URL+"/img", ""); ok || err != nil {
		t.Errorf("Lookup = %v, %v; want a miss", ok, err)
	}
	if n := gets.Load(); n != 0 {
		t.Errorf("Lookup sent %d requests", n)
	}
}

func imgMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func syscallMkfifo(path string) error { return syscall.Mkfifo(path, 0o600) }
