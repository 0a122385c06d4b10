package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testreq"
)

func TestFaultScript(t *testing.T) {
	got := faultScript("sg-abc", TapFaults{LossPercent: 20, NoDNS: true,
		Unreachable: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:6443")},
		Silenced:    []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:443")}})
	want := `table netdev stargate-faults-sg-abc {}
delete table netdev stargate-faults-sg-abc
table netdev stargate-faults-sg-abc {
	chain from-vm {
		type filter hook ingress device "sg-abc" priority -500; policy accept;
		meta l4proto { tcp, udp } th dport 53 counter drop comment "NoDNS"
		ip daddr 10.0.0.1 tcp dport 6443 counter reject with icmp type host-unreachable comment "NoRouteTo 10.0.0.1:6443"
		ip daddr 10.0.0.2 tcp dport 443 counter drop comment "Silenced 10.0.0.2:443"
		numgen random mod 100 < 20 counter drop comment "NetworkLoss 20%"
	}
	chain to-vm {
		type filter hook egress device "sg-abc" priority -500; policy accept;
		numgen random mod 100 < 20 counter drop comment "NetworkLoss 20%"
	}
}
`
	if got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
	if got := faultScript("sg-abc", TapFaults{}); got != "table netdev stargate-faults-sg-abc {}\ndelete table netdev stargate-faults-sg-abc\n" {
		t.Errorf("no faults: %q", got)
	}
}

// Hostile or broken values never reach nft: only Stargate's taps, IPv4 destinations with a port,
// percentages.
func TestSetTapFaultsRefusesWhatIsNotOurs(t *testing.T) {
	for _, c := range []struct {
		tap string
		f   TapFaults
	}{
		{"eth0", TapFaults{NoDNS: true}},
		{"lo", TapFaults{}},
		{`sg-a" }; flush ruleset; #`, TapFaults{NoDNS: true}},
		{"sg-abcdefghijklmnop", TapFaults{NoDNS: true}},
		{"sg-abc", TapFaults{LossPercent: 101}},
		{"sg-abc", TapFaults{LossPercent: -1}},
		{"sg-abc", TapFaults{Unreachable: []netip.AddrPort{netip.MustParseAddrPort("[::1]:6443")}}},
		{"sg-abc", TapFaults{Silenced: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:0")}}},
		{"sg-abc", TapFaults{Unreachable: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:0")}}},
	} {
		if err := SetTapFaults(c.tap, c.f); err == nil {
			t.Errorf("SetTapFaults(%q, %+v) accepted", c.tap, c.f)
		}
	}
}

// faultLab is a bridge with a "VM" on tap sg-fltest: a veth whose other end is in a network
// namespace of its own (the guest), 10.77.0.2, the host being 10.77.0.1. A veth rather than a
// QEMU tap: the faults hook the host-side device by name, whatever drives its other end, and the
// guest's side runs ping and bash here in seconds (the simulator's VM test shows a real guest).
type faultLab struct {
	t     *testing.T
	guest string
}

const labTap = "sg-fltest"

func newFaultLab(t *testing.T) *faultLab {
	netnstest.Require(t)
	if _, err := exec.LookPath("nft"); err != nil {
		testreq.Need(t, "nft (nftables) for injected network faults", "apt-get install nftables (make deps)")
	}
	n, err := New(Config{Bridge: "sgflt-br0", Gateway: netip.MustParsePrefix("10.77.0.1/24")})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ensure(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Teardown() })
	l := &faultLab{t: t, guest: fmt.Sprintf("sgfltguest-%d", os.Getpid())}
	l.ip("netns", "add", l.guest)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", l.guest).Run() })
	l.ip("link", "add", labTap, "type", "veth", "peer", "name", "g0", "netns", l.guest)
	t.Cleanup(func() { _ = n.DeleteTap(labTap) })
	l.ip("link", "set", labTap, "master", "sgflt-br0", "up")
	l.ip("netns", "exec", l.guest, "ip", "addr", "add", "10.77.0.2/24", "dev", "g0")
	l.ip("netns", "exec", l.guest, "ip", "link", "set", "g0", "up")
	l.ip("netns", "exec", l.guest, "ip", "link", "set", "lo", "up")
	return l
}

func (l *faultLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
}

// inGuest runs a command in the guest's namespace and returns its combined output.
func (l *faultLab) inGuest(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.guest}, args...)...).CombinedOutput()
	return string(out), err
}

var lossRE = regexp.MustCompile(`(\d+) received`)

// pings sends n pings to the host, returning how many came back.
func (l *faultLab) pings(n int) int {
	l.t.Helper()
	out, _ := l.inGuest("ping", "-n", "-c", strconv.Itoa(n), "-i", "0.05", "-W", "1", "10.77.0.1")
	m := lossRE.FindStringSubmatch(out)
	if m == nil {
		l.t.Fatalf("ping printed no count:\n%s", out)
	}
	got, _ := strconv.Atoi(m[1])
	return got
}

// dial opens a TCP connection from the guest to the host's port, returning bash's error text.
func (l *faultLab) dial(port int) string {
	out, _ := l.inGuest("timeout", "3", "bash", "-c", fmt.Sprintf("</dev/tcp/10.77.0.1/%d && echo connected", port))
	return strings.TrimSpace(out)
}

func (l *faultLab) set(f TapFaults) {
	l.t.Helper()
	if err := SetTapFaults(labTap, f); err != nil {
		l.t.Fatal(err)
	}
}

// TestTapFaultsStrikeOnlyTheirVM: each fault is real for the VM behind the tap (its pings lost,
// its DNS dropped, its connections to the API server refused as unreachable), setting them again
// changes nothing, and clearing them leaves no table.
func TestTapFaultsStrikeOnlyTheirVM(t *testing.T) {
	l := newFaultLab(t)
	for _, port := range []string{"53", "6443"} {
		ln, err := net.Listen("tcp", "10.77.0.1:"+port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
	}
	if got := l.pings(5); got != 5 {
		t.Fatalf("without faults %d of 5 pings came back", got)
	}
	if out := l.dial(6443); out != "connected" {
		t.Fatalf("without faults the API server port: %s", out)
	}

	// Nothing of the host's but the tap's own table changes: no other table, no iptables rule.
	tablesBefore, iptablesBefore := nftTables(t), iptablesSave(t)
	api := netip.MustParseAddrPort("10.77.0.1:6443")
	faults := TapFaults{NoDNS: true, Unreachable: []netip.AddrPort{api}}
	l.set(faults)
	if got, want := nftTables(t), tablesBefore+"table netdev "+faultTable(labTap)+"\n"; got != want {
		t.Errorf("nft tables with the faults:\n%s\nwant:\n%s", got, want)
	}
	l.set(faults) // again, as after a restart: one table, one set of rules
	if out, _ := exec.Command("nft", "list", "table", "netdev", faultTable(labTap)).CombinedOutput(); strings.Count(string(out), `comment "NoDNS"`) != 1 {
		t.Errorf("want one NoDNS rule after setting the faults twice:\n%s", out)
	}
	if out := l.dial(6443); !strings.Contains(out, "No route to host") {
		t.Errorf("NoRouteToAPIServer: the guest's connection got %q, want No route to host", out)
	}
	start := time.Now()
	if out := l.dial(53); out == "connected" || time.Since(start) < 2*time.Second {
		t.Errorf("NoDNS: a connection to port 53 got %q after %s, want a timeout", out, time.Since(start))
	}
	if got := l.pings(3); got != 3 {
		t.Errorf("NoDNS and NoRouteToAPIServer lost pings too: %d of 3", got)
	}

	// Replaced by a set without them, the earlier faults are gone (checked without loss, which
	// could fail a TCP handshake by chance). Silenced: the API server's port goes quiet (the
	// guest's connection times out, as a kubelet's status updates stop arriving), DNS answers.
	l.set(TapFaults{Silenced: []netip.AddrPort{api}})
	if out := l.dial(53); out != "connected" {
		t.Errorf("the earlier faults outlived their replacement: port 53 got %q", out)
	}
	start = time.Now()
	if out := l.dial(6443); out == "connected" || strings.Contains(out, "No route") || time.Since(start) < 2*time.Second {
		t.Errorf("Silenced: a connection to the API server port got %q after %s, want a timeout", out, time.Since(start))
	}
	l.set(TapFaults{})
	if out := l.dial(6443); out != "connected" {
		t.Errorf("the API server port after the silence ended: %q", out)
	}

	l.set(TapFaults{LossPercent: 50})
	if got := l.pings(40); got == 0 || got > 36 {
		t.Errorf("NetworkLoss 50%% both ways: %d of 40 pings came back, want some but far from all", got)
	}

	l.set(TapFaults{Partition: true})
	if got := l.pings(5); got != 0 {
		t.Errorf("NetworkPartition: %d of 5 pings came back", got)
	}

	l.set(TapFaults{})
	if taps, err := FaultTaps(); err != nil || len(taps) != 0 {
		t.Errorf("fault tables after clearing: %v %v", taps, err)
	}
	if got := nftTables(t); got != tablesBefore {
		t.Errorf("nft tables after clearing:\n%s\nwant as before:\n%s", got, tablesBefore)
	}
	if got := iptablesSave(t); stripCounters(got) != stripCounters(iptablesBefore) {
		t.Errorf("iptables changed by the faults:\n%s\nbefore:\n%s", got, iptablesBefore)
	}
	if got := l.pings(5); got != 5 {
		t.Errorf("after clearing, %d of 5 pings came back", got)
	}
}

// ClearTapFaults removes a tap's faults (and is nothing to do without them); a tap deleted with
// its faults takes them along.
func TestTapFaultsGoWithTheTapAndClearTapFaults(t *testing.T) {
	l := newFaultLab(t)
	l.set(TapFaults{Partition: true})
	if taps, err := FaultTaps(); err != nil || len(taps) != 1 || taps[0] != labTap {
		t.Fatalf("fault taps %v %v, want [%s]", taps, err, labTap)
	}
	for range 2 { // the second finds nothing to clear
		if err := ClearTapFaults(labTap); err != nil {
			t.Fatalf("ClearTapFaults: %v", err)
		}
	}
	if got := l.pings(3); got != 3 {
		t.Errorf("after ClearTapFaults %d of 3 pings came back", got)
	}
	l.set(TapFaults{NoDNS: true})
	n, _ := New(Config{Bridge: "sgflt-br0", Gateway: netip.MustParsePrefix("10.77.0.1/24")})
	if err := n.DeleteTap(labTap); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(labTap); err == nil {
		t.Error("the tap is still there")
	}
	if taps, err := FaultTaps(); err != nil || len(taps) != 0 {
		t.Errorf("fault tables after the tap's deletion: %v %v", taps, err)
	}
}

// nftTables lists the network namespace's nftables tables, one line each.
func nftTables(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v: %s", err, out)
	}
	return string(out)
}

// stripCounters drops iptables-save's comment lines and packet counters, which traffic changes.
func stripCounters(dump string) string {
	var keep []string
	for _, l := range strings.Split(dump, "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(l, ""))
		}
	}
	return strings.Join(keep, "\n")
}
