package redfish

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Files EnsureCertificate keeps in its directory.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// Lifetimes of the self-signed certificate: it is made valid for certLifetime and made anew once
// less than certRenewBefore is left.
const (
	certLifetime    = 2 * 365 * 24 * time.Hour
	certRenewBefore = 30 * 24 * time.Hour
)

// EnsureCertificate returns the self-signed TLS certificate kept in dir for hosts (DNS names and
// IP addresses, its subject alternative names), creating it when there is none. The one there is
// reused across restarts, so that clients that pinned it keep trusting it, unless it is
// unreadable, expires within 30 days, does not name exactly hosts, or its key file is readable by
// others: then a new one replaces it. dir is created 0700 (and made 0700 if it exists); the key
// (ECDSA P-256, PKCS #8) is written 0600. Both files are replaced atomically.
func EnsureCertificate(dir string, hosts []string) (tls.Certificate, error) {
	dns, ips, err := splitHosts(hosts)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if cert, ok := loadCertificate(certPath, keyPath, dns, ips, time.Now()); ok {
		return cert, nil
	}
	certPEM, keyPEM, err := newCertificate(dns, ips, time.Now())
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, err
	}
	// The key first: a crash between the two leaves a pair that does not match, which the next
	// call replaces.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return cert, nil
}

// splitHosts sorts hosts into DNS names (lower-case) and IP addresses, each sorted and without
// duplicates.
func splitHosts(hosts []string) (dns []string, ips []net.IP, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("redfish certificate: no hosts")
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if h == "" || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r > '~' || r == '/' }) {
			return nil, nil, fmt.Errorf("redfish certificate: invalid host %q", h)
		}
		dns = append(dns, h)
	}
	slices.Sort(dns)
	ips = canonicalIPs(ips)
	return slices.Compact(dns), ips, nil
}

// canonicalIPs returns ips in 16-byte form, sorted, without duplicates.
func canonicalIPs(ips []net.IP) []net.IP {
	out := make([]net.IP, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.To16())
	}
	slices.SortFunc(out, func(a, b net.IP) int { return strings.Compare(string(a), string(b)) })
	return slices.CompactFunc(out, net.IP.Equal)
}

// loadCertificate returns the pair in certPath and keyPath when it can be reused for dns and ips
// at now.
func loadCertificate(certPath, keyPath string, dns []string, ips []net.IP, now time.Time) (tls.Certificate, bool) {
	fi, err := os.Lstat(keyPath)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 {
		return tls.Certificate{}, false
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, false
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, false
		}
	}
	gotDNS := slices.Clone(leaf.DNSNames)
	slices.Sort(gotDNS)
	if now.Before(leaf.NotBefore) || now.Add(certRenewBefore).After(leaf.NotAfter) ||
		!slices.Equal(gotDNS, dns) || !slices.EqualFunc(canonicalIPs(leaf.IPAddresses), ips, net.IP.Equal) {
		return tls.Certificate{}, false
	}
	return cert, true
}

// newCertificate makes a self-signed server certificate for dns and ips and its key, PEM-encoded.
func newCertificate(dns []string, ips []net.IP, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	cn := "stargate-bmc"
	if len(dns) > 0 {
		cn = dns[0]
	} else if len(ips) > 0 {
		cn = ips[0].String()
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Stargate simulated BMC"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certLifetime),
		// A leaf, not a CA: clients that pin it (Python's requests with verify=<this file>, Go
		// with it in RootCAs, curl --cacert) trust it as it is, and it can sign nothing.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// writeFileAtomic writes data to path with perm: to a temporary file in the same directory,
// synced, then renamed over path (which replaces a symlink there, never its target).
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
