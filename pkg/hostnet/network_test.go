package hostnet

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"stargate.io/stargate/internal/netnstest"
)

func iptablesSave(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("iptables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	return string(out)
}

func TestNetworkSetupIsIdempotentAndTeardownIsExact(t *testing.T) {
	netnstest.Require(t)
	before := iptablesSave(t)
	n, err := New(Config{Bridge: "sgtest-br0", Gateway: netip.MustParsePrefix("192.168.100.1/24"), NAT: true})
	if err != nil {
		t.Fatal(err)
	}
	// Twice, as after a crash or a restart.
	for i := range 2 {
		if err := n.Ensure(); err != nil {
			t.Fatalf("Ensure #%d: %v", i+1, err)
		}
	}
	br, err := netlink.LinkByName("sgtest-br0")
	if err != nil {
		t.Fatal(err)
	}
	if br.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
		t.Error("bridge is not up")
	}
	addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.100.1/24" {
		t.Errorf("bridge addresses %v, want exactly 192.168.100.1/24", addrs)
	}
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "1" {
		t.Error("IPv4 forwarding is off")
	}
	rules := iptablesSave(t)
	for _, want := range []string{
		"-A POSTROUTING -m comment --comment \"stargate: VM NAT\" -j STARGATE-POSTROUTING",
		"-A STARGATE-POSTROUTING -s 192.168.100.0/24 ! -o sgtest-br0 -m comment --comment \"stargate: masquerade VM traffic leaving the host\" -j MASQUERADE",
		"-A FORWARD -m comment --comment \"stargate: VM forwarding\" -j STARGATE-FORWARD",
		"-A STARGATE-FORWARD -i sgtest-br0",
	} {
		if strings.Count(rules, want) != 1 {
			t.Errorf("want exactly one rule %q in:\n%s", want, rules)
		}
	}

	tap := TapName("ns/vm")
	for range 2 {
		if err := n.EnsureTap(tap); err != nil {
			t.Fatal(err)
		}
	}
	link, err := netlink.LinkByName(tap)
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		t.Error("tap is not attached to the bridge")
	}
	if taps, _ := Taps(); len(taps) != 1 || taps[0] != tap {
		t.Errorf("Taps() = %v, want [%s]", taps, tap)
	}
	for range 2 {
		if err := n.DeleteTap(tap); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := n.Teardown(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := netlink.LinkByName("sgtest-br0"); err == nil {
		t.Error("bridge still exists after teardown")
	}
	if taps, _ := Taps(); len(taps) != 0 {
		t.Errorf("taps left: %v", taps)
	}
	if after := iptablesSave(t); stripComments(after) != stripComments(before) {
		t.Errorf("iptables differ after teardown:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// stripComments keeps only iptables-save's rule lines: tables and built-in chains that iptables
// creates empty on first use, timestamps and counters are not ours to remove.
func stripComments(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "-") && !strings.HasPrefix(l, ":STARGATE") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Bridge: "", Gateway: netip.MustParsePrefix("192.168.100.1/24")},
		{Bridge: "a-very-long-bridge-name", Gateway: netip.MustParsePrefix("192.168.100.1/24")},
		{Bridge: "br", Gateway: netip.MustParsePrefix("fd00::1/64")},
		{Bridge: "br", Gateway: netip.MustParsePrefix("192.168.100.1/32")},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
