package simulator_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
)

// After kill -9 with network faults in force, the simulator starting again (its garbage
// collection) leaves exactly the recorded faults of the VMs it keeps — a partition that ended
// while it was down is lifted, a node fault that struck still silences the kubelet — and removes every other fault table of its taps; another
// simulator's taps (another bridge) are not touched.
func TestNetworkFaultsAfterKill9(t *testing.T) {
	p, mine, work := newGCHost(t, "sgnfgc-br0", "192.168.78.1/24")
	other, err := hostnet.New(hostnet.Config{Bridge: "sgnfgc-br1", Gateway: netip.MustParsePrefix("192.168.79.1/24")})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*hostnet.Network{mine, other} {
		if err := n.Ensure(); err != nil {
			t.Fatal(err)
		}
	}
	kept := types.NamespacedName{Namespace: "team-a", Name: "kept"}
	ghost := types.NamespacedName{Namespace: "team-a", Name: "ghost"}
	keptTap, ghostTap, otherTap := hostnet.TapName("team-a/kept"), hostnet.TapName("team-a/ghost"), hostnet.TapName("team-z/elsewhere")
	t.Cleanup(func() {
		_ = other.DeleteTap(otherTap)
		_ = other.Teardown()
	})
	for _, tap := range []string{keptTap, ghostTap} {
		if err := mine.EnsureTap(tap); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.EnsureTap(otherTap); err != nil {
		t.Fatal(err)
	}
	layout := simulator.Layout{WorkDir: work}
	for _, s := range []types.NamespacedName{kept, ghost} {
		if err := os.MkdirAll(layout.VMDir(s), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// What the killed simulator had made: the kept VM's partition (ended since) and its missing
	// DNS, recorded; the ghost's loss; the other simulator's VM's partition.
	ended := time.Now().Add(-time.Minute)
	// Its kubelet silenced by a KubeletStops that struck (its Node was Ready) before the kill.
	struck := time.Now().Add(-2 * time.Minute)
	record, _ := json.Marshal(map[string]any{"noDNS": true, "partitionUntil": ended, "notes": []string{"dns", "cut"},
		"node": map[string]any{"name": "kubelet", "type": "KubeletStops", "node": "kept", "ip": "192.168.78.11",
			"apiServer": []string{"192.168.78.1:6443"}, "since": struck}, "silenced": true})
	if err := os.WriteFile(filepath.Join(layout.VMDir(kept), filenames.NetworkFaultsFile), record, 0o600); err != nil {
		t.Fatal(err)
	}
	for tap, f := range map[string]hostnet.TapFaults{keptTap: {NoDNS: true, Partition: true}, ghostTap: {LossPercent: 50}, otherTap: {Partition: true}} {
		if err := hostnet.SetTapFaults(tap, f); err != nil {
			t.Fatal(err)
		}
	}

	exists := func(_ context.Context, s types.NamespacedName) (bool, error) { return s == kept, nil }
	if err := p.CollectGarbage(context.Background(), exists, func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	taps, err := hostnet.FaultTaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(taps) != 2 || !strings.Contains(strings.Join(taps, " "), keptTap) || !strings.Contains(strings.Join(taps, " "), otherTap) {
		t.Errorf("fault tables of %v, want exactly the kept VM's %s and the other simulator's %s", taps, keptTap, otherTap)
	}
	keptTable := nftTable(t, keptTap)
	if !strings.Contains(keptTable, `"NoDNS"`) || strings.Contains(keptTable, "NetworkPartition") ||
		!strings.Contains(keptTable, `"Silenced 192.168.78.1:6443"`) {
		t.Errorf("the kept VM's faults after the restart, want its DNS dropped, its kubelet still silenced and its ended partition lifted:\n%s", keptTable)
	}
	if !strings.Contains(nftTable(t, otherTap), "NetworkPartition") {
		t.Error("the other simulator's VM lost its partition")
	}
}
