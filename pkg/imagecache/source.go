package imagecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Defaults of the Cache's limits, used where a field is zero.
const (
	// DefaultMaxBytes is the largest image downloaded: far above any cloud image (Ubuntu's is
	// ~700 MB), far below what would fill a host's disk by accident.
	DefaultMaxBytes int64 = 20 << 30
	// DefaultConnectTimeout bounds the TCP connect and, separately, the TLS handshake.
	DefaultConnectTimeout = 30 * time.Second
	// DefaultHeaderTimeout bounds the wait for response headers once the request is sent.
	DefaultHeaderTimeout = time.Minute
	// DefaultStallTimeout fails a download that received no byte for this long.
	DefaultStallTimeout = time.Minute
	// maxRedirects is how many redirects are followed: mirrors use one or two.
	maxRedirects = 5
)

// ErrNotAllowed is returned (wrapped) when an image URL names something this host does not
// fetch images from: a file outside the allowed directories, or an http(s) server at a
// loopback, link-local, multicast, unspecified or denied address, or one of this host's own.
var ErrNotAllowed = errors.New("image source not allowed")

// ErrTooLarge is returned (wrapped) when an image is larger than the cache's MaxBytes.
var ErrTooLarge = errors.New("image too large")

// ErrStalled is returned (wrapped) when a download received nothing for StallTimeout.
var ErrStalled = errors.New("download stalled")

// source is a parsed, policy-checked image URL.
type source struct {
	raw string
	url *url.URL
}

// ErrInvalidURL is returned (wrapped) for an image URL that is not http(s)://host/... or
// file:///abs/path: a mistake in the request, as opposed to a source the policy refuses.
var ErrInvalidURL = errors.New("invalid image URL")

// parseImageURL accepts http, https and file:///abs/path URLs.
func parseImageURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	switch u.Scheme {
	case "http", "https":
		// Hostname, not Host: "http://:8080/" has a port but no host (the API refuses it too).
		if u.Hostname() == "" {
			return nil, fmt.Errorf("%w %s: no host", ErrInvalidURL, rawURL)
		}
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("%w %s: file URLs cannot name a host; use file:///abs/path", ErrInvalidURL, rawURL)
		}
		if !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("%w %s: file URLs need an absolute path; use file:///abs/path", ErrInvalidURL, rawURL)
		}
	case "":
		return nil, fmt.Errorf("%w %s: no scheme; use http://, https:// or file:///abs/path", ErrInvalidURL, rawURL)
	default:
		return nil, fmt.Errorf("%w %s: unsupported scheme %q (want http, https or file)", ErrInvalidURL, rawURL, u.Scheme)
	}
	return u, nil
}

// checkSource applies the policy that needs no network: a file URL must name a path below an
// allowed directory (also after resolving symlinks, when the file exists), an http(s) URL must
// not name a refused address literally. It runs before the cache is looked at, so an entry
// cached before a policy change is not handed out either. Host names are checked again at
// connect time, with the addresses they resolve to (see dialControl).
func (c *Cache) checkSource(src source) error {
	if src.url.Scheme == "file" {
		_, _, err := c.fileLocation(src, false)
		return err
	}
	host := src.url.Hostname()
	if ip, err := netip.ParseAddr(strings.TrimSuffix(host, ".")); err == nil {
		if err := c.checkAddr(ip); err != nil {
			return fmt.Errorf("image URL %s: %w", src.raw, err)
		}
	}
	return nil
}

// fileLocation checks a file URL's path against the allowed directories. When the file exists
// it returns the allowed directory (symlinks resolved) and the file's path relative to it, also
// resolved, for openFile; resolved, the path must still be below an allowed directory. A missing
// file is ErrNotFound with mustExist, and passes otherwise (a cached copy may still be used).
func (c *Cache) fileLocation(src source, mustExist bool) (dir, rel string, err error) {
	dirs := c.settings().fileDirs
	if len(dirs) == 0 {
		return "", "", fmt.Errorf("image URL %s: file URLs are refused on this host (no image directory is allowed): %w", src.raw, ErrNotAllowed)
	}
	path := filepath.Clean(src.url.Path)
	inside := false
	for _, d := range dirs {
		_, in1 := below(d.given, path)
		_, in2 := below(d.resolved, path)
		inside = inside || in1 || in2
	}
	if !inside {
		return "", "", fmt.Errorf("image URL %s: %s is not below a directory this host serves images from: %w", src.raw, path, ErrNotAllowed)
	}
	resolved, err := filepath.EvalSymlinks(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if mustExist {
			return "", "", fmt.Errorf("reading %s: %w: %w", src.raw, ErrNotFound, err)
		}
		return "", "", nil
	case err != nil:
		return "", "", fmt.Errorf("reading %s: %w", src.raw, err)
	}
	for _, d := range dirs {
		if r, ok := below(d.resolved, resolved); ok {
			return d.resolved, r, nil
		}
	}
	return "", "", fmt.Errorf("image URL %s: %s leads outside the allowed image directories through a symlink: %w", src.raw, path, ErrNotAllowed)
}

// below reports whether path is inside dir (both clean and absolute) and returns it relative to dir.
func below(dir, path string) (string, bool) {
	if dir == "" {
		return "", false
	}
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return rel, true
}

// openFile opens the file a file URL names, by its resolved path below the resolved allowed
// directory. The open goes through os.Root, which refuses any path that escapes the directory,
// so a symlink swapped in after fileLocation resolved the path is refused too. O_NONBLOCK:
// opening a FIFO must not hang the download.
func (c *Cache) openFile(src source) (io.ReadCloser, int64, error) {
	dir, rel, err := c.fileLocation(src, true)
	if err != nil {
		return nil, 0, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("reading %s: %w", src.raw, err)
	}
	defer root.Close()
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 0, fmt.Errorf("reading %s: %w: %w", src.raw, ErrNotFound, err)
		}
		return nil, 0, fmt.Errorf("reading %s: %w", src.raw, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("reading %s: %w", src.raw, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("reading %s: not a regular file", src.raw)
	}
	return f, fi.Size(), nil
}

// checkAddr refuses addresses an image is never fetched from unless the operator allowed them:
// loopback (the simulator's own services, the API server), link-local (cloud metadata at
// 169.254.169.254), unspecified (0.0.0.0 reaches this host), multicast and broadcast, DenyHosts
// (the VMs' network) and every address of this host's interfaces.
func (c *Cache) checkAddr(ip netip.Addr) error {
	ip = ip.Unmap().WithZone("")
	s := c.settings()
	for _, p := range s.allow {
		if p.Contains(ip) {
			return nil
		}
	}
	var why string
	switch {
	case ip.IsLoopback():
		why = "a loopback address"
	case ip.IsLinkLocalUnicast():
		why = "a link-local address (where cloud metadata services answer)"
	case ip.IsUnspecified() || (ip.Is4() && ip.As4()[0] == 0):
		why = "an unspecified address (it reaches this host)"
	case ip.IsMulticast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "a multicast or broadcast address"
	default:
		for _, p := range s.deny {
			if p.Contains(ip) {
				why = "in a network this host does not fetch images from (" + p.String() + ")"
				break
			}
		}
		if why == "" && isHostAddr(ip) {
			why = "an address of this host"
		}
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("address %s is %s: %w", ip, why, ErrNotAllowed)
}

// isHostAddr reports whether ip is configured on one of this host's interfaces. It asks the
// kernel on every connect: addresses come and go (a bridge made after start, DHCP).
func isHostAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if h, ok := netip.AddrFromSlice(n.IP); ok && h.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// dialControl checks the address a connection is about to be made to, after name resolution:
// a name that resolves (or re-resolves, DNS rebinding) to a refused address is caught here,
// for the first request and every redirect alike.
func (c *Cache) dialControl(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", address, err)
	}
	return c.checkAddr(ap.Addr())
}

// checkRedirect follows at most maxRedirects redirects, never from https to http, and refuses
// a target that names a refused address (dialControl catches names). Errors name the target's
// host, not its whole URL: a Location header is the server's text.
func (c *Cache) checkRedirect(req *http.Request, via []*http.Request) error {
	target := req.URL.Scheme + "://" + req.URL.Host
	if len(via) > maxRedirects {
		return fmt.Errorf("stopped after %d redirects: %w", maxRedirects, ErrNotAllowed)
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return fmt.Errorf("redirect to a %q URL: %w", req.URL.Scheme, ErrNotAllowed)
	}
	for _, v := range via {
		if v.URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("redirect from https to %s (a downgrade): %w", target, ErrNotAllowed)
		}
	}
	if ip, err := netip.ParseAddr(strings.TrimSuffix(req.URL.Hostname(), ".")); err == nil {
		if err := c.checkAddr(ip); err != nil {
			return fmt.Errorf("redirect to %s: %w", target, err)
		}
	}
	return nil
}

// newClient builds the HTTP client every download uses. No proxy from the environment: a proxy
// would connect to the image server on our behalf, past dialControl. No transparent gzip: the
// checksum and the size limit apply to the bytes as published. No overall timeout: a large
// image on a slow link may take long; stalls are caught by the stall timeout instead.
func (c *Cache) newClient(s settings) *http.Client {
	dialer := &net.Dialer{Timeout: s.connectTimeout, KeepAlive: 30 * time.Second, ControlContext: c.dialControl}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           dialer.DialContext,
			TLSClientConfig:       c.tlsConfig,
			TLSHandshakeTimeout:   s.connectTimeout,
			ResponseHeaderTimeout: s.headerTimeout,
			DisableCompression:    true,
			MaxIdleConns:          10,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: c.checkRedirect,
	}
}

// openHTTP sends the GET and returns the body, which fails with ErrStalled when no byte arrives
// for the stall timeout, and the announced size (-1 when unknown).
func (c *Cache) openHTTP(ctx context.Context, src source) (io.ReadCloser, int64, error) {
	s := c.settings()
	ctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.raw, nil)
	if err != nil {
		cancel(nil)
		return nil, 0, fmt.Errorf("downloading %s: %w", src.raw, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		cancel(nil)
		// *url.Error repeats the URL we are about to name; keep its cause
		// (a *net.OpError, ErrNotAllowed, context.Canceled, ...) for errors.Is/As.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, 0, fmt.Errorf("downloading %s: %w", src.raw, err)
	}
	// Only the status code is shown: the reason phrase and the body are the server's text.
	status := fmt.Sprintf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		cancel(nil)
		return nil, 0, fmt.Errorf("downloading %s: %s: %w", src.raw, status, ErrNotFound)
	case resp.StatusCode >= 500:
		resp.Body.Close()
		cancel(nil)
		return nil, 0, ServerError(src.raw, resp.StatusCode)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		resp.Body.Close()
		cancel(nil)
		return nil, 0, fmt.Errorf("downloading %s: unexpected %s", src.raw, status)
	case resp.ContentLength > s.maxBytes:
		resp.Body.Close()
		cancel(nil)
		return nil, 0, fmt.Errorf("downloading %s: the server announces %d bytes, more than the limit of %d: %w",
			src.raw, resp.ContentLength, s.maxBytes, ErrTooLarge)
	}
	body := &stallReader{body: resp.Body, ctx: ctx, cancel: cancel, timeout: s.stallTimeout}
	body.timer = time.AfterFunc(s.stallTimeout, func() { cancel(ErrStalled) })
	return body, resp.ContentLength, nil
}

// stallReader cancels its request when no byte arrived for timeout, and then says so.
type stallReader struct {
	body    io.ReadCloser
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timer   *time.Timer
	timeout time.Duration
}

func (r *stallReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if n > 0 {
		r.timer.Reset(r.timeout)
	}
	if err != nil && !errors.Is(err, io.EOF) && errors.Is(context.Cause(r.ctx), ErrStalled) {
		err = fmt.Errorf("no data for %s: %w", r.timeout, ErrStalled)
	}
	return n, err
}

func (r *stallReader) Close() error {
	r.timer.Stop()
	err := r.body.Close()
	r.cancel(nil)
	return err
}
