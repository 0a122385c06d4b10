// Package redfishclient drives a server's BMC over DMTF Redfish: it finds the ComputerSystem,
// reads and changes its power (ComputerSystem.Reset), sets a boot source override, and inserts
// and ejects virtual media. It is the client side of what package redfish serves, written for
// BMCs as they are rather than as the specification hopes: virtual media is looked for under the
// System and under its Managers, only the InsertMedia parameters a slot advertises are sent,
// advertised allowable values are honoured, ETags are sent back with If-Match, and 5xx, 429,
// timeouts and dropped connections are retried with bounded backoff.
//
// The BMC is untrusted: responses are size-limited and strictly decoded, links it returns are
// followed only as paths on the configured endpoint, redirects to another host are refused, and
// every connection's address is checked by Config.CheckAddress (the caller's allow-list of BMC
// networks) when it is made. Credentials are sent only as basic auth to the configured endpoint
// and never appear in errors or logs.
//
//	c, err := redfishclient.New(redfishclient.Config{
//		Endpoint: "https://10.0.0.50", Username: user, Password: password, RootCAs: pool,
//	})
//	sys, err := c.System(ctx, "") // the BMC's only system
//	err = sys.InsertMedia(ctx, "https://images.example/installer.iso")
//	err = sys.SetBootOverride(ctx, redfishclient.BootOverride{Target: redfishclient.BootCd, Enabled: redfishclient.BootOnce})
//	err = sys.Reset(ctx, redfishclient.ResetOn)
package redfishclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

// Defaults for the Config fields left zero.
const (
	DefaultRequestTimeout = 30 * time.Second
	DefaultAttempts       = 5
	DefaultMinBackoff     = 500 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
)

// MaxResponseBytes bounds the body of any response the client reads; a larger one is an error.
// Redfish resources are a few KiB; a megabyte leaves room for large collections.
const MaxResponseBytes = 1 << 20

// maxRedirects bounds the redirects one request follows.
const maxRedirects = 5

// Config says how to reach a BMC.
type Config struct {
	// Endpoint is the BMC's base URL, http or https, e.g. "https://10.0.0.50" or
	// "https://bmc.example:8443". A path, if any, must be "/" or "/redfish/v1"; user info, query
	// and fragment are refused.
	Endpoint string
	// Username and Password are sent as HTTP basic auth.
	Username, Password string
	// RootCAs verifies the BMC's certificate over https; nil means the system's roots.
	RootCAs *x509.CertPool
	// InsecureSkipVerify accepts any certificate. Only an explicit opt-in of the operator may set
	// it; Client.Verified reports it so that status can show it.
	InsecureSkipVerify bool
	// CheckAddress, when set, is called with the IP address and port of every connection before
	// it is made — the first one, those after a BMC reset, and those a redirect leads to — and
	// the connection is refused when it returns an error. Checking the resolved address (not the
	// host name) keeps a name that resolves elsewhere later from getting past it.
	CheckAddress func(addr netip.AddrPort) error
	// RequestTimeout bounds each attempt of a request, reading the response included; zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Attempts is how many times a request is tried when it fails in a way worth retrying (5xx,
	// 409, 429, timeout, dropped connection); zero means DefaultAttempts, 1 means no retry.
	// Actions are retried too, so a BMC that acted on a request whose answer was lost sees it
	// again: the requests this client sends are meant to be safe to repeat (a second ForceOff
	// or InsertMedia of the same image changes nothing; a second ForceRestart restarts again).
	Attempts int
	// MinBackoff and MaxBackoff bound the wait between attempts, which doubles from MinBackoff
	// up to MaxBackoff (a Retry-After the BMC sends is honoured up to MaxBackoff). Zero means
	// DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Log receives, at V(1), each retry and its reason. The zero Logger discards.
	Log logr.Logger
}

// Client talks to one BMC. It is safe for concurrent use.
type Client struct {
	base     *url.URL
	user     string
	password string
	http     *http.Client
	verified bool
	timeout  time.Duration
	attempts int
	minWait  time.Duration
	maxWait  time.Duration
	log      logr.Logger
}

// New returns a client for the BMC cfg names. It makes no request.
func New(cfg Config) (*Client, error) {
	base, err := parseEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:     base,
		user:     cfg.Username,
		password: cfg.Password,
		verified: base.Scheme == "https" && !cfg.InsecureSkipVerify,
		timeout:  orDefault(cfg.RequestTimeout, DefaultRequestTimeout),
		attempts: cfg.Attempts,
		minWait:  orDefault(cfg.MinBackoff, DefaultMinBackoff),
		maxWait:  orDefault(cfg.MaxBackoff, DefaultMaxBackoff),
		log:      cfg.Log,
	}
	if c.attempts <= 0 {
		c.attempts = DefaultAttempts
	}
	c.maxWait = max(c.maxWait, c.minWait)
	check := cfg.CheckAddress
	// No dial or handshake timeouts of their own: each attempt's context bounds the whole
	// exchange, so that a timeout always reads the same.
	dialer := &net.Dialer{
		KeepAlive: 30 * time.Second,
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			if check == nil {
				return nil
			}
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return &refusedError{fmt.Errorf("BMC address %q: %w", address, err)}
			}
			if err := check(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())); err != nil {
				return &refusedError{fmt.Errorf("BMC address %s refused: %w", ap, err)}
			}
			return nil
		},
	}
	transport := &http.Transport{
		// No proxy from the environment: the connection must go to the address that was checked.
		Proxy:       nil,
		DialContext: dialer.DialContext,
		// InsecureSkipVerify is the operator's explicit opt-in, which Verified reports.
		TLSClientConfig:     &tls.Config{RootCAs: cfg.RootCAs, InsecureSkipVerify: cfg.InsecureSkipVerify, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
		// BMCs are small: a few connections are what many of them can take.
		MaxConnsPerHost: 4,
	}
	c.http = &http.Client{Transport: transport, CheckRedirect: c.checkRedirect}
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// parseEndpoint checks a BMC's base URL and returns it reduced to scheme and host.
func parseEndpoint(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		// Not the parser's error: it quotes the URL, which may hold a password.
		return nil, errors.New("BMC endpoint: not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("BMC endpoint %q: the scheme must be http or https", u.Redacted())
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("BMC endpoint %q: no host", u.Redacted())
	case u.User != nil:
		return nil, errors.New("BMC endpoint: credentials belong in Username and Password, not in the URL")
	case u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return nil, fmt.Errorf("BMC endpoint %q: no query or fragment", u.Redacted())
	}
	switch strings.TrimSuffix(u.Path, "/") {
	case "", "/redfish/v1":
	default:
		return nil, fmt.Errorf("BMC endpoint %q: the path must be empty or /redfish/v1", u.Redacted())
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// CloseIdleConnections closes the connections kept open for the next request, e.g. when a
// caller is done with the BMC for a while.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Verified reports whether the BMC's identity is verified: https with its certificate checked.
// It is false over plain http and with InsecureSkipVerify.
func (c *Client) Verified() bool { return c.verified }

// Endpoint is the BMC's base URL (scheme and host).
func (c *Client) Endpoint() string { return c.base.String() }

// checkRedirect follows a redirect only on the BMC's own host (an upgrade from http to https
// included, never the reverse): a BMC that sends the client elsewhere is refused, not followed,
// as the credentials would go with it.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return &refusedError{fmt.Errorf("more than %d redirects", maxRedirects)}
	}
	prev := via[len(via)-1].URL
	to := req.URL
	switch {
	case !strings.EqualFold(to.Hostname(), c.base.Hostname()) || to.User != nil:
		return &refusedError{fmt.Errorf("the BMC redirected to %s://%s, which is not its own address %s", to.Scheme, to.Host, c.base)}
	case to.Scheme != prev.Scheme && (prev.Scheme != "http" || to.Scheme != "https"):
		return &refusedError{fmt.Errorf("the BMC redirected from %s to %s, which would send the credentials in clear", prev.Scheme, to.Scheme)}
	}
	return nil
}

// refusedError is a request the client itself refused (an address or a redirect): never retried.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// response is a BMC's answer to one request.
type response struct {
	header http.Header
	body   []byte
}

// get reads the resource at path into v and returns its ETag (header, or @odata.etag).
func (c *Client) get(ctx context.Context, path string, v any) (etag string, err error) {
	resp, err := c.do(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return "", err
	}
	if err := decode(resp.body, v); err != nil {
		return "", fmt.Errorf("GET %s: %w", path, err)
	}
	etag = resp.header.Get("ETag")
	if etag == "" {
		var tagged struct {
			ETag string `json:"@odata.etag"`
		}
		_ = json.Unmarshal(resp.body, &tagged)
		etag = tagged.ETag
	}
	return sanitizeETag(etag), nil
}

// sanitizeETag drops an ETag that could not go back in a header as it is.
func sanitizeETag(etag string) string {
	if len(etag) > 256 || strings.ContainsFunc(etag, func(r rune) bool { return r < ' ' || r > '~' }) {
		return ""
	}
	return etag
}

// decode strictly decodes a JSON object.
func decode(data []byte, v any) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return errors.New("the BMC's response is not a JSON object")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("the BMC's response does not decode: %w", err)
	}
	return nil
}

// post sends body (nil for an empty object) to an action's target.
func (c *Client) post(ctx context.Context, path string, body any) error {
	if body == nil {
		body = struct{}{}
	}
	_, err := c.do(ctx, http.MethodPost, path, body, nil)
	return err
}

// patch sends body to path, with If-Match when etag is set.
func (c *Client) patch(ctx context.Context, path string, body any, etag string) error {
	var h http.Header
	if etag != "" {
		h = http.Header{"If-Match": {etag}}
	}
	_, err := c.do(ctx, http.MethodPatch, path, body, h)
	return err
}
