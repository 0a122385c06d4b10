package ipam

import "net/netip"

// NthAddr is the n-th address after the subnet's own (network) address.
func NthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// LastUsable is the subnet's last address before its broadcast address.
func LastUsable(p netip.Prefix) netip.Addr {
	bits := p.Addr().BitLen() - p.Bits()
	a := p.Masked().Addr().As16()
	// Set the host bits (the last `bits` of the 128), then step back over the broadcast address.
	for i := 15; bits > 0; i-- {
		n := min(bits, 8)
		a[i] |= byte(1<<n - 1)
		bits -= n
	}
	last := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		last = last.Unmap()
	}
	return last.Prev()
}
