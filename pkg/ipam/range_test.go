package ipam

import (
	"net/netip"
	"testing"
)

func TestRangeHelpers(t *testing.T) {
	for _, c := range []struct{ prefix, nth11, last string }{
		{"192.168.100.1/24", "192.168.100.11", "192.168.100.254"},
		{"10.20.0.0/16", "10.20.0.11", "10.20.255.254"},
		{"10.0.0.64/27", "10.0.0.75", "10.0.0.94"},
	} {
		p := netip.MustParsePrefix(c.prefix)
		if got := NthAddr(p, 11).String(); got != c.nth11 {
			t.Errorf("NthAddr(%s, 11) = %s, want %s", p, got, c.nth11)
		}
		if got := LastUsable(p).String(); got != c.last {
			t.Errorf("LastUsable(%s) = %s, want %s", p, got, c.last)
		}
	}
}
