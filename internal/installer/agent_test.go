package installer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"stargate.io/stargate/pkg/installspec"
)

func TestRunFailsClearlyWithoutAUsableSpec(t *testing.T) {
	dir := t.TempDir()
	invalid := filepath.Join(dir, "install.json")
	if err := os.WriteFile(invalid, []byte(`{"apiVersion":"installer.stargate.io/v1","image":{"url":"file:///etc/shadow"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.json"), "second initrd"},
		{invalid, "image.url must be an http or https URL"},
	} {
		var console strings.Builder
		a := &Agent{ConfigPath: tc.path, ModulesDir: dir, Console: &console}
		err := a.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(console.String(), "FAILED: ") {
			t.Errorf("Run with %s = %v, console %q; want an error containing %q, printed", tc.path, err, console.String(), tc.want)
		}
		if a.FailureReported {
			t.Errorf("Run with %s claims its failure was reported, but there was nobody to report to", tc.path)
		}
	}
}

func TestReporter(t *testing.T) {
	var calls atomic.Int32
	var gotAuth atomic.Value
	status := atomic.Int32{}
	status.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		gotAuth.Store(r.Header.Get("Authorization"))
		if _, err := installspec.DecodeReport(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	var logged []string
	rp := &Reporter{Client: srv.Client(), URL: srv.URL, Token: strings.Repeat("x", 32), Attempts: 3,
		Log: func(f string, a ...any) { logged = append(logged, f) }}

	// A server error is retried up to Attempts times, then logged.
	err := rp.Send(context.Background(), installspec.Report{Phase: installspec.PhaseBooted, Message: strings.Repeat("m", 10000)})
	if err == nil || calls.Load() != 3 || len(logged) != 1 {
		t.Errorf("Send against a failing server = %v after %d calls, %d log lines; want an error after 3 calls, logged once", err, calls.Load(), len(logged))
	}
	if gotAuth.Load() != "Bearer "+rp.Token {
		t.Errorf("Authorization = %q", gotAuth.Load())
	}
	// Progress is not worth retrying.
	calls.Store(0)
	_ = rp.Send(context.Background(), installspec.Report{Phase: installspec.PhaseWriting, BytesWritten: 1})
	if calls.Load() != 1 {
		t.Errorf("a Writing report was sent %d times, want once", calls.Load())
	}
	// 410 Gone ends the install at once.
	calls.Store(0)
	status.Store(http.StatusGone)
	if err := rp.Send(context.Background(), installspec.Report{Phase: installspec.PhaseWritten}); !errors.Is(err, ErrOperationOver) || calls.Load() != 1 {
		t.Errorf("Send when the Operation is over = %v after %d calls, want ErrOperationOver at once", err, calls.Load())
	}
	status.Store(http.StatusNoContent)
	if err := rp.Send(context.Background(), installspec.Report{Phase: installspec.PhaseDone}); err != nil {
		t.Errorf("Send = %v", err)
	}
}

func TestHTTPClientTrustsOnlyTheBundle(t *testing.T) {
	image, sum := testImage(1 << 20)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "/image.raw", http.StatusFound)
			return
		}
		_, _ = w.Write(image)
	}))
	defer srv.Close()
	serverCA := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	otherCA := selfSignedCA(t) // httptest's TLS servers all share one certificate: make another

	write := func(ca, path string) error {
		client, err := httpClient(ca)
		if err != nil {
			return err
		}
		w := &ImageWriter{Source: ImageSource{Client: client, URL: srv.URL + path, ChunkedSHA256: sum}, Capacity: 4 << 20,
			Backoff: func(int) time.Duration { return 0 }}
		_, err = w.Write(context.Background(), tempDevice(t, 4<<20))
		return err
	}
	if err := write(serverCA, "/image.raw"); err != nil {
		t.Errorf("with the server's CA: %v", err)
	}
	if err := write(otherCA, "/image.raw"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("with another CA = %v, want a certificate error", err)
	}
	if err := write(serverCA, "/redirect"); err == nil || !strings.Contains(err.Error(), "redirects are not followed") {
		t.Errorf("through a redirect = %v, want it refused", err)
	}
	if _, err := httpClient("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"); err == nil {
		t.Error("httpClient accepted a bundle without a usable certificate")
	}
}

func selfSignedCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "another CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestOperationOverStopsTheWrite: when the controller answers a progress report with 410 Gone,
// the write stops (the image server is still sending), what was written is wiped, and the error
// says the Operation is over.
func TestOperationOverStopsTheWrite(t *testing.T) {
	image, sum := testImage(24 << 20)
	mux := http.NewServeMux()
	mux.HandleFunc("/image.raw", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(image)))
		_, _ = w.Write(image[:8<<20])
		w.(http.Flusher).Flush()
		// The rest never comes: only stopping the write on the 410 ends the download.
		<-r.Context().Done()
	})
	var failedReports atomic.Int32
	mux.HandleFunc("/callback", func(w http.ResponseWriter, r *http.Request) {
		rep, err := installspec.DecodeReport(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if rep.Phase == installspec.PhaseFailed {
			failedReports.Add(1)
		}
		w.WriteHeader(http.StatusGone)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	dir := t.TempDir()
	diskPath := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(diskPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(diskPath, 64<<20); err != nil {
		t.Fatal(err)
	}
	a := &Agent{SysRoot: dir, WorkDir: dir, Console: io.Discard}
	spec := &installspec.Spec{Image: installspec.Image{URL: srv.URL + "/image.raw", ChunkedSHA256: sum}}
	reporter := &Reporter{Client: srv.Client(), URL: srv.URL + "/callback", Token: strings.Repeat("t", 32), Log: t.Logf}
	err := a.install(context.Background(), spec, Disk{Name: "vdz", Path: diskPath, SizeBytes: 64 << 20}, srv.Client(), reporter)
	if !errors.Is(err, ErrOperationOver) {
		t.Fatalf("install = %v, want ErrOperationOver", err)
	}
	if failedReports.Load() != 0 {
		t.Error("a Failed report was sent for an Operation that is over")
	}
	assertZeros(t, diskPath, 1<<20)
}
