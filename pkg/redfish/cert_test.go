package redfish

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// leaf parses a certificate's leaf.
func leaf(t *testing.T, c tls.Certificate) *x509.Certificate {
	t.Helper()
	l, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestEnsureCertificateCreatesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "work", "redfish-tls")
	cert, err := EnsureCertificate(dir, []string{"bmc.example", "127.0.0.1", "::1", "LOCALHOST"})
	if err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("dir mode %o, want 700", m)
	}
	if m := mode(t, filepath.Join(dir, KeyFile)); m != 0o600 {
		t.Errorf("key mode %o, want 600", m)
	}
	if m := mode(t, filepath.Join(dir, CertFile)); m&0o077 != 0o044 {
		t.Errorf("cert mode %o, want 644", m)
	}
	l := leaf(t, cert)
	if !slices.Equal(l.DNSNames, []string{"bmc.example", "localhost"}) || len(l.IPAddresses) != 2 {
		t.Errorf("SANs %v %v", l.DNSNames, l.IPAddresses)
	}
	if l.IsCA || l.KeyUsage&x509.KeyUsageCertSign != 0 || !slices.Equal(l.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("certificate may sign others or is not for servers: CA %v usage %v ext %v", l.IsCA, l.KeyUsage, l.ExtKeyUsage)
	}
	// A client that pins the file trusts the certificate for every name it was made for.
	pemData, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemData)
	for _, name := range []string{"bmc.example", "localhost", "127.0.0.1", "::1"} {
		if _, err := l.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if _, err := l.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.example"}); err == nil {
		t.Error("certificate verified for a name it was not made for")
	}

	// A directory that exists with a wider mode is narrowed.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureCertificate(dir, []string{"bmc.example"}); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("dir mode %o after reuse, want 700", m)
	}
}

func TestEnsureCertificateReusesAndRenews(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"localhost", "10.0.0.1"}
	first, err := EnsureCertificate(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	same := func(a, b tls.Certificate) bool { return bytes.Equal(a.Certificate[0], b.Certificate[0]) }

	// Another call (a restart), with the hosts in another order and spelling: the same certificate.
	again, err := EnsureCertificate(dir, []string{"10.0.0.1", "LocalHost.", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if !same(first, again) {
		t.Error("certificate not reused for the same hosts")
	}

	// Other hosts: a new certificate, for them, which the next call reuses.
	moved, err := EnsureCertificate(dir, []string{"localhost", "10.0.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	if same(first, moved) {
		t.Fatal("certificate reused although the hosts changed")
	}
	if ips := leaf(t, moved).IPAddresses; len(ips) != 1 || !ips[0].Equal(net.ParseIP("10.0.0.2")) {
		t.Errorf("new certificate's IPs %v", ips)
	}
	if again, _ := EnsureCertificate(dir, []string{"localhost", "10.0.0.2"}); !same(moved, again) {
		t.Error("new certificate not reused")
	}

	renewed := func(what string, prepare func()) {
		t.Helper()
		before, err := EnsureCertificate(dir, hosts)
		if err != nil {
			t.Fatal(err)
		}
		prepare()
		after, err := EnsureCertificate(dir, hosts)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if same(before, after) {
			t.Errorf("%s: certificate reused", what)
		}
		if m := mode(t, filepath.Join(dir, KeyFile)); m != 0o600 {
			t.Errorf("%s: key mode %o", what, m)
		}
	}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	renewed("expiring", func() {
		dns, ips, _ := splitHosts(hosts)
		certPEM, keyPEM, err := newCertificate(dns, ips, time.Now().Add(-certLifetime+24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		write(CertFile, certPEM)
		write(KeyFile, keyPEM)
	})
	renewed("key readable by others", func() {
		if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	renewed("corrupt certificate", func() { write(CertFile, []byte("not a certificate")) })
	renewed("key of another certificate", func() {
		dns, ips, _ := splitHosts(hosts)
		_, keyPEM, err := newCertificate(dns, ips, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		write(KeyFile, keyPEM)
	})
	renewed("key missing", func() {
		if err := os.Remove(filepath.Join(dir, KeyFile)); err != nil {
			t.Fatal(err)
		}
	})

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("dir holds %d files, want the certificate and the key (no temporary files)", len(entries))
	}
}

func TestEnsureCertificateRefusesBadHosts(t *testing.T) {
	for _, hosts := range [][]string{nil, {""}, {"a b"}, {"a/b"}, {"bmc\n.example"}} {
		if _, err := EnsureCertificate(t.TempDir(), hosts); err == nil {
			t.Errorf("hosts %q accepted", hosts)
		}
	}
}
