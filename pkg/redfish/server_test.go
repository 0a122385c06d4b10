package redfish_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"stargate.io/stargate/pkg/redfish"
)

// serve runs srv on a loopback port until the test ends, and returns its address and a function
// that stops it and returns what Serve returned.
func serve(t *testing.T, srv *redfish.Server) (addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context was cancelled")
			return nil
		}
	})
	t.Cleanup(func() { _ = stop() })
	return ln.Addr().String(), stop
}

func TestServerServesHTTPSAndShutsDown(t *testing.T) {
	dir := t.TempDir()
	cert, err := redfish.EnsureCertificate(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, &redfish.Server{Handler: &redfish.Service{Backend: newBackend(t)}, Certificate: &cert})

	pemData, err := os.ReadFile(filepath.Join(dir, redfish.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemData)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	t.Cleanup(client.CloseIdleConnections)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+addr+"/redfish/v1/Systems/server-a", nil)
	req.SetBasicAuth("admin-a", "secret-a")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("HTTPS with the pinned certificate: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}

	// Plain HTTP to the TLS port gets nowhere.
	if resp, err := http.Get("http://" + addr + "/redfish/v1/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP served on the HTTPS server")
		}
	}

	if err := stop(); err != nil {
		t.Errorf("Serve returned %v after shutdown, want nil", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("still listening after shutdown")
	}
}

func TestServerPlainHTTPOnlyWhenAsked(t *testing.T) {
	h := &redfish.Service{Backend: newBackend(t)}
	for _, srv := range []*redfish.Server{
		{Handler: h},
		{Handler: h, Certificate: &tls.Certificate{}, PlainHTTP: true},
		{Certificate: &tls.Certificate{}},
	} {
		if err := srv.ListenAndServe(t.Context(), "127.0.0.1:0"); err == nil {
			t.Errorf("%+v served", srv)
		}
	}

	addr, stop := serve(t, &redfish.Server{Handler: h, PlainHTTP: true})
	resp, err := http.Get("http://" + addr + "/redfish/v1/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("plain HTTP: status %d", resp.StatusCode)
	}
	if err := stop(); err != nil {
		t.Errorf("Serve returned %v after shutdown, want nil", err)
	}
}
