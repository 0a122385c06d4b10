package redfishclient_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"stargate.io/stargate/pkg/redfish"
	"stargate.io/stargate/pkg/redfishclient"
)

// The system the tests' BMC serves, and its credentials.
const (
	systemID = "server-a"
	sysUUID  = "6a1f0e9e-1b2c-4d3e-8f40-5a6b7c8d9e0a"
	user     = "admin-a"
	password = "secret-a-3f9c"
	image    = "http://images.example/boot/installer.iso"
)

// newBackend is a MemoryBackend with one system, on, whose BMC takes user/password.
func newBackend(t *testing.T) *redfish.MemoryBackend {
	t.Helper()
	b := redfish.NewMemoryBackend()
	if err := b.Add(redfish.System{ID: systemID, UUID: sysUUID, PowerState: redfish.PowerOn, Boot: redfish.Boot{Mode: redfish.BootModeUEFI},
		MACAddresses: []string{"52:54:00:00:00:0a"}, MemoryMiB: 1024, CPUs: 1}, user, password); err != nil {
		t.Fatal(err)
	}
	return b
}

// bmc is a BMC for a test: package redfish's Service over a MemoryBackend, served by httptest,
// optionally behind a vendor wrapper that changes what it says, and a log of the requests.
type bmc struct {
	backend *redfish.MemoryBackend
	srv     *httptest.Server
	log     *requestLog
	// certPool trusts the server's certificate (https only).
	certPool *x509.CertPool
}

// bmcOptions say how newBMC serves.
type bmcOptions struct {
	https bool
	// vendor wraps the real service: how a vendor's BMC differs from ours.
	vendor func(next http.Handler) http.Handler
}

func newBMC(t *testing.T, b *redfish.MemoryBackend, opt bmcOptions) *bmc {
	t.Helper()
	var h http.Handler = &redfish.Service{Backend: b}
	if opt.vendor != nil {
		h = opt.vendor(h)
	}
	log := &requestLog{}
	srv := httptest.NewUnstartedServer(log.wrap(h))
	// The server's own complaints (a TLS handshake a test's client refused) go to the test's log.
	srv.Config.ErrorLog = stdlog.New(testLogWriter{t}, "BMC: ", 0)
	m := &bmc{backend: b, srv: srv, log: log}
	if opt.https {
		dir := t.TempDir()
		cert, err := redfish.EnsureCertificate(dir, []string{"127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		pem, err := os.ReadFile(filepath.Join(dir, redfish.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		m.certPool = x509.NewCertPool()
		if !m.certPool.AppendCertsFromPEM(pem) {
			t.Fatal("no certificate in " + redfish.CertFile)
		}
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return m
}

// config is a client configuration for the BMC with fast retries (the tests' BMCs answer at once).
func (m *bmc) config() redfishclient.Config {
	return redfishclient.Config{
		Endpoint: m.srv.URL, Username: user, Password: password, RootCAs: m.certPool,
		RequestTimeout: 10 * time.Second, Attempts: 4, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
	}
}

func (m *bmc) client(t *testing.T) *redfishclient.Client {
	t.Helper()
	c, err := redfishclient.New(m.config())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// system finds the BMC's only system.
func (m *bmc) system(t *testing.T) *redfishclient.System {
	t.Helper()
	sys, err := m.client(t).System(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	return sys
}

// requestLog records the requests a handler got: "METHOD path status", and the bodies.
type requestLog struct {
	mu      sync.Mutex
	entries []logEntry
}

type logEntry struct {
	method, path, ifMatch string
	status                int
	body                  string
}

func (l logEntry) String() string { return fmt.Sprintf("%s %s %d", l.method, l.path, l.status) }

func (l *requestLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		r.Body = io.NopCloser(bytes.NewReader(body))
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.entries = append(l.entries, logEntry{method: r.Method, path: r.URL.Path, ifMatch: r.Header.Get("If-Match"), status: sw.status, body: string(body)})
	})
}

// all returns the requests so far.
func (l *requestLog) all() []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.entries)
}

// changes returns the requests that change something (not GET), as "METHOD path status".
func (l *requestLog) changes() []string {
	var out []string
	for _, e := range l.all() {
		if e.method != http.MethodGet {
			out = append(out, e.String())
		}
	}
	return out
}

// count returns how many requests had this method and path.
func (l *requestLog) count(method, path string) int {
	n := 0
	for _, e := range l.all() {
		if e.method == method && e.path == path {
			n++
		}
	}
	return n
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// Hijack lets a vendor wrapper drop the connection through the log.
func (w *statusWriter) Hijack() (c net.Conn, rw *bufio.ReadWriter, err error) {
	return w.ResponseWriter.(http.Hijacker).Hijack()
}

// rewriteJSON is a vendor wrapper that serves the real service's answer to a GET of path after
// edit changed its JSON object.
func rewriteJSON(next http.Handler, path string, edit func(obj map[string]any)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != path {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		var obj map[string]any
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &obj) != nil {
			panic(fmt.Sprintf("rewriteJSON %s: the service answered %d %s", path, rec.Code, rec.Body))
		}
		edit(obj)
		writeJSON(w, http.StatusOK, obj)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// redfishError writes a Redfish error body with one message.
func redfishError(w http.ResponseWriter, status int, id, msg string, related ...string) {
	info := map[string]any{"MessageId": "Base.1.16." + id, "Message": msg}
	if len(related) > 0 {
		info["RelatedProperties"] = related
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"code": "Base.1.16." + id, "message": msg, "@Message.ExtendedInfo": []any{info},
	}})
}

// wantError fails t unless err is an error whose text contains every one of parts.
func wantError(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one saying %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
	if strings.Contains(err.Error(), password) {
		t.Errorf("error %q holds the password", err)
	}
}

func readAll(r *http.Request) ([]byte, error) { return io.ReadAll(io.LimitReader(r.Body, 1<<20)) }

func contains(list []string, s string) bool { return slices.Contains(list, s) }

// testLogWriter writes to the test's log.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
