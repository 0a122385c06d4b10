package redfishdc

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// AddressPool is the datacenter's own addresses (--address-pool), for Servers whose spec.network
// gives a MAC and no address: the installer and the installed OS get one of First..Last with
// Subnet's prefix length, and the pool's gateway and DNS unless the Server names its own.
type AddressPool struct {
	Subnet      netip.Prefix
	First, Last netip.Addr
	Gateway     netip.Addr // optional
	DNS         []netip.Addr
}

// Validate checks that the range lies in the subnet and the gateway outside the range.
func (a *AddressPool) Validate() error {
	if !a.Subnet.IsValid() || !a.Subnet.Addr().Is4() || a.Subnet.Bits() == 0 || a.Subnet.Bits() > 30 {
		return fmt.Errorf("address pool subnet %s: want an IPv4 subnet such as 10.20.0.0/24", a.Subnet)
	}
	if !a.Subnet.Contains(a.First) || !a.Subnet.Contains(a.Last) || a.Last.Less(a.First) {
		return fmt.Errorf("address pool range %s-%s is not inside %s", a.First, a.Last, a.Subnet)
	}
	if a.Gateway.IsValid() && (!a.Subnet.Contains(a.Gateway) || (a.First.Compare(a.Gateway) <= 0 && a.Gateway.Compare(a.Last) <= 0)) {
		return fmt.Errorf("address pool gateway %s must be in %s and outside the range %s-%s", a.Gateway, a.Subnet, a.First, a.Last)
	}
	return nil
}

// effectiveNetwork is the network a repave of s installs: its spec.network, with the address (and
// the gateway and DNS it does not name) from the pool when it names no address. The address is
// kept for the Server across repaves; p.mu must not be held.
func (p *Provider) effectiveNetwork(ctx context.Context, s *stargatev1.Server) (stargatev1.StaticNetwork, error) {
	n := *s.Spec.Network.DeepCopy()
	if n.Address != "" {
		return n, nil
	}
	pool := p.cfg.AddressPool
	if pool == nil {
		return n, refuse("NoAddress", "Server %s: spec.network has no address and this datacenter has no address pool "+
			"(--address-pool): give spec.network.address, or ask the operator for a pool", s.Name)
	}
	addr, err := p.allocate(ctx, s)
	if err != nil {
		return n, err
	}
	n.Address = netip.PrefixFrom(addr, pool.Subnet.Bits()).String()
	if n.Gateway == "" && pool.Gateway.IsValid() {
		n.Gateway = pool.Gateway.String()
	}
	if len(n.DNS) == 0 {
		for _, d := range pool.DNS {
			n.DNS = append(n.DNS, d.String())
		}
	}
	return n, nil
}

// allocate returns s's address from the pool: the one its status shows (a repave keeps it) unless
// another Server uses it, else the lowest free one. An address is used by a Server that names it
// in spec.network.address or shows it in status.ipAddress, and by this process's allocations not
// yet in any status; the choice is recorded in p.allocated under p.mu, so two repaves never get one.
func (p *Provider) allocate(ctx context.Context, s *stargatev1.Server) (netip.Addr, error) {
	pool := p.cfg.AddressPool
	var servers stargatev1.ServerList
	if err := p.cfg.Reader.List(ctx, &servers); err != nil {
		return netip.Addr{}, fmt.Errorf("listing Servers for the address pool: %w", err)
	}
	self := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	used := map[netip.Addr]bool{}
	for i := range servers.Items {
		o := &servers.Items[i]
		if o.Namespace == s.Namespace && o.Name == s.Name {
			continue
		}
		if o.Spec.Network != nil && o.Spec.Network.Address != "" {
			addr, _, _ := strings.Cut(o.Spec.Network.Address, "/")
			if a, err := netip.ParseAddr(addr); err == nil {
				used[a] = true
			}
		}
		if a, err := netip.ParseAddr(o.Status.IPAddress); err == nil {
			used[a] = true
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, a := range p.allocated {
		if key != self {
			used[a] = true
		}
	}
	take := func(a netip.Addr) netip.Addr {
		p.allocated[self] = a
		return a
	}
	inRange := func(a netip.Addr) bool { return pool.First.Compare(a) <= 0 && a.Compare(pool.Last) <= 0 }
	if a, err := netip.ParseAddr(s.Status.IPAddress); err == nil && inRange(a) && !used[a] {
		return take(a), nil
	}
	if a, ok := p.allocated[self]; ok && inRange(a) && !used[a] {
		return a, nil
	}
	for a := pool.First; inRange(a); a = a.Next() {
		if !used[a] {
			return take(a), nil
		}
	}
	return netip.Addr{}, refuse("AddressPoolExhausted", "Server %s: every address of the pool %s-%s is in use: free one (delete a Server) "+
		"or give spec.network.address", s.Name, pool.First, pool.Last)
}

// releaseAddress forgets key's allocation; p.mu is held.
func (p *Provider) releaseAddress(key types.NamespacedName) {
	delete(p.allocated, key)
}
