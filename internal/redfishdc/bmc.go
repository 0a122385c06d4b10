package redfishdc

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/redfishclient"
)

// ErrBMCNotAllowed is returned for a BMC address outside the networks the operator allows.
var ErrBMCNotAllowed = errors.New("not in a BMC network this controller may reach (--bmc-networks)")

// errConfig marks a mistake in a Server's objects (spec, Secrets) that retrying cannot fix.
var errConfig = errors.New("configuration")

// configError is a mistake in a Server's objects, with the reason its Operation fails with.
type configError struct {
	reason string
	msg    string
}

func (e *configError) Error() string        { return e.msg }
func (e *configError) Is(target error) bool { return target == errConfig }

func refuse(reason, format string, args ...any) error {
	return &configError{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// checkBMCAddress is redfishclient's CheckAddress: every connection (the first, after a BMC
// reset, after a redirect) goes only to an allowed network.
func (p *Provider) checkBMCAddress(ap netip.AddrPort) error {
	if !p.bmcAllowed(ap.Addr()) {
		return fmt.Errorf("%s: %w", ap.Addr(), ErrBMCNotAllowed)
	}
	return nil
}

func (p *Provider) bmcAllowed(a netip.Addr) bool {
	a = a.Unmap()
	return slices.ContainsFunc(p.cfg.BMCNetworks, func(n netip.Prefix) bool { return n.Contains(a) })
}

// bmcKey identifies the BMC system a Server names, for finding two Servers on one system:
// scheme, host and port as a client connects to them, and the system id.
func bmcKey(spec *stargatev1.BMCSpec) string {
	u, err := url.Parse(spec.Address)
	if err != nil {
		return spec.Address
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
	}
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.Unmap().String()
	}
	return net.JoinHostPort(host, port) + "/" + spec.SystemID
}

// server reads a Server this provider drives, with the checks every use needs.
func (p *Provider) server(ctx context.Context, key types.NamespacedName) (*stargatev1.Server, error) {
	s := &stargatev1.Server{}
	if err := p.cfg.Reader.Get(ctx, key, s); err != nil {
		return nil, fmt.Errorf("reading Server %s: %w", key, err)
	}
	if !s.Spec.DrivesBMC() {
		return nil, refuse("NoBMCAddress", "Server %s has no spec.bmc.address: this Redfish datacenter drives a server only through its BMC", key.Name)
	}
	if err := p.checkUniqueSystem(ctx, s); err != nil {
		return nil, err
	}
	return s, nil
}

// checkUniqueSystem refuses a Server whose BMC system another Server (any namespace this
// controller sees) named first: two tenants must not drive one machine. The older Server keeps it
// (creation time, then namespace/name), so the answer does not depend on who asked first.
func (p *Provider) checkUniqueSystem(ctx context.Context, s *stargatev1.Server) error {
	var all stargatev1.ServerList
	if err := p.cfg.Reader.List(ctx, &all); err != nil {
		return fmt.Errorf("listing Servers: %w", err)
	}
	key := bmcKey(s.Spec.BMC)
	for i := range all.Items {
		o := &all.Items[i]
		if o.UID == s.UID || !o.Spec.DrivesBMC() || bmcKey(o.Spec.BMC) != key || !o.DeletionTimestamp.IsZero() {
			continue
		}
		if older(o, s) {
			return refuse("BMCSystemTaken", "Server %s/%s names the same BMC system (%s, system %q) and was created first: "+
				"one machine cannot be two Servers; correct spec.bmc.address or spec.bmc.systemID", o.Namespace, o.Name, s.Spec.BMC.Address, s.Spec.BMC.SystemID)
		}
	}
	return nil
}

func older(a, b *stargatev1.Server) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

// connect returns a client for the Server's BMC and its System. Credentials come only from the
// basic-auth Secret the Server names, in its namespace.
func (p *Provider) connect(ctx context.Context, s *stargatev1.Server) (*redfishclient.System, error) {
	user, password, err := p.credentials(ctx, s)
	if err != nil {
		return nil, err
	}
	cfg := p.cfg.BMCClient
	cfg.Endpoint, cfg.Username, cfg.Password = s.Spec.BMC.Address, user, password
	cfg.CheckAddress = p.checkBMCAddress
	cfg.InsecureSkipVerify = s.Spec.BMC.InsecureSkipVerify
	if ref := s.Spec.BMC.CASecretRef; ref != nil && !cfg.InsecureSkipVerify {
		pool, err := p.caPool(ctx, s.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	// An address written as an IP is refused before any connection, with a clear reason; a name
	// is checked on every connection by CheckAddress.
	if u, err := url.Parse(s.Spec.BMC.Address); err == nil {
		if a, err := netip.ParseAddr(u.Hostname()); err == nil && !p.bmcAllowed(a) {
			return nil, refuse("BMCNotAllowed", "spec.bmc.address %s: %s %v", s.Spec.BMC.Address, a, ErrBMCNotAllowed)
		}
	}
	c, err := redfishclient.New(cfg)
	if err != nil {
		return nil, refuse("InvalidBMCAddress", "spec.bmc.address: %v", err)
	}
	sys, err := c.System(ctx, s.Spec.BMC.SystemID)
	if err != nil {
		if errors.Is(err, ErrBMCNotAllowed) {
			return nil, refuse("BMCNotAllowed", "spec.bmc.address %s: %v", s.Spec.BMC.Address, err)
		}
		return nil, fmt.Errorf("BMC %s: %w", s.Spec.BMC.Address, err)
	}
	if err := p.claim(ctx, s, sys); err != nil {
		return nil, err
	}
	return sys, nil
}

// claim records that s drives the system its BMC resolved, and refuses s when an older Server
// drives it already under another name (its Id, its UUID, or "the only system"), which the check
// of the specs cannot see.
func (p *Provider) claim(ctx context.Context, s *stargatev1.Server, sys *redfishclient.System) error {
	resolved := bmcKey(&stargatev1.BMCSpec{Address: s.Spec.BMC.Address}) + sys.Path
	me := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	p.mu.Lock()
	holder, held := p.claims[resolved]
	if !held || holder == me {
		p.claims[resolved] = me
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	other := &stargatev1.Server{}
	err := p.cfg.Reader.Get(ctx, holder, other)
	switch {
	case apierrors.IsNotFound(err) || (err == nil && (!other.DeletionTimestamp.IsZero() || !other.Spec.DrivesBMC())):
		// The holder is gone or drives no BMC any more: the system is free.
	case err != nil:
		return fmt.Errorf("reading Server %s, which drives the same BMC system: %w", holder, err)
	case older(other, s):
		return refuse("BMCSystemTaken", "Server %s/%s drives the same BMC system (%s%s) and was created first: "+
			"one machine cannot be two Servers; correct spec.bmc.address or spec.bmc.systemID", other.Namespace, other.Name, s.Spec.BMC.Address, sys.Path)
	}
	p.mu.Lock()
	p.claims[resolved] = me
	p.mu.Unlock()
	return nil
}

func (p *Provider) credentials(ctx context.Context, s *stargatev1.Server) (user, password string, err error) {
	name := s.Spec.BMC.CredentialsSecretRef.Name
	sec := &corev1.Secret{}
	if err := p.cfg.SecretReader.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: name}, sec); err != nil {
		return "", "", refuse("BMCCredentials", "reading the BMC credentials Secret %s/%s: %v", s.Namespace, name, err)
	}
	if sec.Type != stargatev1.BMCCredentialsSecretType {
		return "", "", refuse("BMCCredentials", "Secret %s/%s has type %q; the BMC credentials must be of type %s",
			s.Namespace, name, sec.Type, stargatev1.BMCCredentialsSecretType)
	}
	user, password = string(sec.Data[corev1.BasicAuthUsernameKey]), string(sec.Data[corev1.BasicAuthPasswordKey])
	if user == "" {
		return "", "", refuse("BMCCredentials", "Secret %s/%s has no username", s.Namespace, name)
	}
	return user, password, nil
}

func (p *Provider) caPool(ctx context.Context, namespace, name string) (*x509.CertPool, error) {
	sec := &corev1.Secret{}
	if err := p.cfg.SecretReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, sec); err != nil {
		return nil, refuse("BMCCA", "reading the BMC CA Secret %s/%s: %v", namespace, name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(sec.Data[stargatev1.BMCCASecretKey]) {
		return nil, refuse("BMCCA", "Secret %s/%s holds no PEM certificate under %s", namespace, name, stargatev1.BMCCASecretKey)
	}
	return pool, nil
}
