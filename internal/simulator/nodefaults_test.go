package simulator

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// A node fault silences the kubelet only once it struck (its Node was Ready): KubeletStops for
// good, NodeFlapping every other period; what the tap makes follows, with the installation's
// other faults kept. (The real consequence, a Node going NotReady and Ready again, is proven by
// hack/e2e.sh with a real kubelet and control plane.)
func TestNodeFaultSchedule(t *testing.T) {
	api := []netip.AddrPort{netip.MustParseAddrPort("192.168.100.1:6443")}
	since := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return since.Add(d) }
	waiting := &nodeFault{Type: stargatev1.FaultKubeletStops, APIServer: api}
	if waiting.silenced(at(time.Hour)) {
		t.Error("a node fault whose Node was never Ready silences the kubelet")
	}
	stops := &nodeFault{Type: stargatev1.FaultKubeletStops, APIServer: api, Since: &since}
	flap := &nodeFault{Type: stargatev1.FaultNodeFlapping, Every: time.Minute, APIServer: api, Since: &since}
	for _, c := range []struct {
		f     *nodeFault
		after time.Duration
		want  bool
	}{
		{stops, 0, true}, {stops, 59 * time.Minute, true},
		{flap, 0, true}, {flap, 59 * time.Second, true}, {flap, 61 * time.Second, false},
		{flap, 119 * time.Second, false}, {flap, 121 * time.Second, true},
	} {
		if got := c.f.silenced(at(c.after)); got != c.want {
			t.Errorf("%s %s after it struck: silenced %v, want %v", c.f.Type, c.after, got, c.want)
		}
	}
	n := networkFaults{NoDNS: true, Node: flap}
	if got := n.atTap(at(time.Second)); !got.NoDNS || !slices.Equal(got.Silenced, api) {
		t.Errorf("in a silence the tap makes %+v, want the API server silenced and no DNS", got)
	}
	if got := n.atTap(at(90 * time.Second)); !got.NoDNS || got.Silenced != nil {
		t.Errorf("between silences the tap makes %+v, want only no DNS", got)
	}
}

// readyCluster sees every Node Ready and tells nobody: enough to say node faults are supported.
type readyCluster struct{}

func (readyCluster) NodeReady(context.Context, string, netip.Addr) (bool, error) { return true, nil }
func (readyCluster) Warn(context.Context, types.NamespacedName, string, string)  {}

// KubeletStops wins over NodeFlapping; faults at other steps or invalid ones are no node fault.
func TestNodeFaultOf(t *testing.T) {
	d := &metav1.Duration{Duration: time.Minute}
	one := ptr.To[int32](1)
	flap := stargatev1.Fault{Name: "flap", Type: stargatev1.FaultNodeFlapping, At: stargatev1.FaultAtRunning, FirstN: one, Duration: d}
	stops := stargatev1.Fault{Name: "stops", Type: stargatev1.FaultKubeletStops, At: stargatev1.FaultAtRunning, FirstN: one}
	hang := stargatev1.Fault{Name: "hang", Type: stargatev1.FaultHang, At: stargatev1.ConditionGuestReady, FirstN: one, Duration: d}
	noDuration := flap
	noDuration.Duration = nil
	if f, ok := nodeFaultOf([]stargatev1.Fault{hang, flap, stops}); !ok || f.Name != "stops" {
		t.Errorf("picked %v %v, want stops", f.Name, ok)
	}
	if f, ok := nodeFaultOf([]stargatev1.Fault{hang, flap}); !ok || f.Name != "flap" {
		t.Errorf("picked %v %v, want flap", f.Name, ok)
	}
	if f, ok := nodeFaultOf([]stargatev1.Fault{hang, noDuration}); ok {
		t.Errorf("picked %v from faults with no valid node fault", f.Name)
	}
}

// Node faults are supported only where they can be made: nft, a view of Nodes and the API
// server's address.
func TestNodeFaultsNeedNodesNFTAndTheAPIServer(t *testing.T) {
	var ready Cluster = readyCluster{}
	for _, c := range []struct {
		p    *Provider
		want bool
	}{
		{&Provider{nft: true, cluster: ready, cfg: Config{APIServer: "https://10.0.0.1:6443"}}, true},
		{&Provider{nft: false, cluster: ready, cfg: Config{APIServer: "https://10.0.0.1:6443"}}, false},
		{&Provider{nft: true, cfg: Config{APIServer: "https://10.0.0.1:6443"}}, false}, // no view of the cluster
		{&Provider{nft: true, cluster: ready}, false},
	} {
		for _, typ := range []stargatev1.FaultType{stargatev1.FaultKubeletStops, stargatev1.FaultNodeFlapping} {
			if got := c.p.SupportsFault(typ, stargatev1.FaultAtRunning); got != c.want {
				t.Errorf("%s with nft %v, node readiness %v, API server %q: supported %v, want %v",
					typ, c.p.nft, c.p.cluster != nil, c.p.cfg.APIServer, got, c.want)
			}
		}
		if c.p.SupportsFault(stargatev1.FaultKubeletStops, stargatev1.ConditionGuestReady) {
			t.Error("KubeletStops is supported at GuestReady")
		}
	}
}
