package simulator

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/imagecache"
)

// The API server as guests reach it: its own address, or, when it is on this host's loopback,
// the bridge's gateway; the port from the URL, or the scheme's.
func TestAPIServerDestinations(t *testing.T) {
	gw := netip.MustParsePrefix("192.168.100.1/24")
	for in, want := range map[string]string{
		"https://127.0.0.1:6443": "192.168.100.1:6443",
		"https://[::1]:6443":     "192.168.100.1:6443",
		"https://localhost:6443": "192.168.100.1:6443",
		"https://10.1.2.3":       "10.1.2.3:443",
		"http://10.1.2.3":        "10.1.2.3:80",
		"10.1.2.3:6443":          "10.1.2.3:6443",
	} {
		p := &Provider{cfg: Config{APIServer: in}}
		p.cfg.Network.Gateway = gw
		got, err := p.apiServerDestinations()
		if err != nil || len(got) != 1 || got[0].String() != want {
			t.Errorf("%s: %v %v, want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "https://[2001:db8::1]:6443", "https://10.1.2.3:0"} {
		p := &Provider{cfg: Config{APIServer: in}}
		p.cfg.Network.Gateway = gw
		if got, err := p.apiServerDestinations(); err == nil {
			t.Errorf("%q: %v, want an error", in, got)
		}
	}
}

// Faults merge: the longest delay and loss win, a partition ends at the latest end, the API
// server's destinations are added once; the notes say what was made, or why not.
func TestAddNetworkFault(t *testing.T) {
	p := &Provider{cfg: Config{APIServer: "https://10.1.2.3:6443"}}
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	var n networkFaults
	d := func(x time.Duration) *metav1.Duration { return &metav1.Duration{Duration: x} }
	for _, f := range []stargatev1.Fault{
		{Name: "a", Type: stargatev1.FaultNetworkLatency, Duration: d(time.Second)},
		{Name: "b", Type: stargatev1.FaultNetworkLatency, Duration: d(time.Hour)}, // capped
		{Name: "c", Type: stargatev1.FaultNetworkLoss, Percent: ptr.To[int32](30)},
		{Name: "d", Type: stargatev1.FaultNetworkLoss, Percent: ptr.To[int32](10)},
		{Name: "e", Type: stargatev1.FaultNetworkPartition, Duration: d(time.Minute)},
		{Name: "f", Type: stargatev1.FaultNetworkPartition, Duration: d(time.Second)},
		{Name: "g", Type: stargatev1.FaultNoRouteToAPIServer},
		{Name: "h", Type: stargatev1.FaultNoRouteToAPIServer},
		{Name: "i", Type: stargatev1.FaultNoDNS},
	} {
		n.Notes = append(n.Notes, p.addNetworkFault(&n, f, now))
	}
	if n.Delay != 30*time.Second || n.LossPercent != 30 || !n.NoDNS || !n.PartitionUntil.Equal(now.Add(time.Minute)) ||
		!slices.Equal(n.Unreachable, []netip.AddrPort{netip.MustParseAddrPort("10.1.2.3:6443")}) {
		t.Errorf("merged faults %+v", n)
	}
	if !n.atTap(now).Partition || n.atTap(now.Add(time.Minute)).Partition {
		t.Errorf("the partition is not in force exactly until its end: %+v", n)
	}
	if want := (hostnet.TapFaults{LossPercent: 30, NoDNS: true, Unreachable: n.Unreachable}); !tapFaultsEqual(n.atTap(now.Add(time.Hour)), want) {
		t.Errorf("after the partition: %+v, want %+v", n.atTap(now.Add(time.Hour)), want)
	}
	none := &Provider{}
	if note := none.addNetworkFault(&n, stargatev1.Fault{Name: "x", Type: stargatev1.FaultNoRouteToAPIServer}, now); !strings.Contains(note, "x not injected") {
		t.Errorf("a host that does not know its API server: %q", note)
	}
}

func tapFaultsEqual(a, b hostnet.TapFaults) bool {
	return a.LossPercent == b.LossPercent && a.Partition == b.Partition && a.NoDNS == b.NoDNS && slices.Equal(a.Unreachable, b.Unreachable)
}

// The image faults' readers: the server error replaces the body, truncation ends it at half its
// size, corruption flips one byte per MiB from the middle on, and the slow reader keeps its rate.
func TestInterceptImage(t *testing.T) {
	data := make([]byte, 3<<20)
	open := func() io.ReadCloser { return io.NopCloser(bytes.NewReader(data)) }
	size := int64(len(data))
	f := func(typ stargatev1.FaultType) []stargatev1.Fault {
		return []stargatev1.Fault{{Name: "f", Type: typ, BytesPerSecond: ptr.To[int64](1 << 20), FailedTries: ptr.To[int32](2)}}
	}
	for tried, want := range []bool{true, true, false} {
		_, _, err := interceptImage("http://mirror/x", f(stargatev1.FaultImageServerError), tried, open(), size, nil)
		if fails := err != nil; fails != want || (fails && (!errors.Is(err, imagecache.ErrServerError) ||
			err.Error() != "downloading http://mirror/x: unexpected HTTP 503 Service Unavailable")) {
			t.Errorf("server error of failedTries 2, try %d: %v", tried+1, err)
		}
	}
	body, _, _ := interceptImage("u", f(stargatev1.FaultImageTruncated), 0, open(), size, nil)
	if got, _ := io.ReadAll(body); len(got) != len(data)/2 {
		t.Errorf("truncated to %d bytes, want %d", len(got), len(data)/2)
	}
	body, _, _ = interceptImage("u", f(stargatev1.FaultImageCorrupted), 0, open(), size, nil)
	got, _ := io.ReadAll(body)
	var flipped []int
	for i, b := range got {
		if b != 0 {
			flipped = append(flipped, i)
		}
	}
	if want := []int{len(data) / 2, len(data)/2 + 1<<20}; !slices.Equal(flipped, want) {
		t.Errorf("corrupted bytes at %v, want %v", flipped, want)
	}
	start := time.Now()
	body, _, _ = interceptImage("u", f(stargatev1.FaultImageSlow), 0, io.NopCloser(bytes.NewReader(data[:1<<20])), 1<<20, nil)
	if got, _ := io.ReadAll(body); len(got) != 1<<20 || time.Since(start) < 700*time.Millisecond {
		t.Errorf("1 MiB at 1 MiB/s: %d bytes in %s", len(got), time.Since(start))
	}
	if _, _, err := interceptImage("u", f(stargatev1.FaultImageSlow), 0, nil, 0, io.ErrUnexpectedEOF); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("an open error must pass through: %v", err)
	}
}
