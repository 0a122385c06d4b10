package simulator_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

func TestOneSimulatorPerWorkDir(t *testing.T) {
	dir := t.TempDir()
	release, err := simulator.LockWorkDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = simulator.LockWorkDir(dir)
	if err == nil || !strings.Contains(err.Error(), "another simulator (pid ") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second simulator on one work dir: %v, want an error naming the first", err)
	}
	release()
	again, err := simulator.LockWorkDir(dir)
	if err != nil {
		t.Fatalf("after the first one stopped: %v", err)
	}
	again()
}

// After a crash, the simulator releases what it holds for Servers that no longer exist — and
// only that: a kept Server's VM directory, address and tap, and other namespaces, stay.
func TestGarbageOfDeletedServersIsCollected(t *testing.T) {
	p, net, work := newGCHost(t, "sggc-br0", "192.168.77.1/24")
	cfg := simulator.Config{Network: net.Config()}
	layout := simulator.Layout{WorkDir: work}
	kept := types.NamespacedName{Namespace: "team-a", Name: "kept"}
	ghost := types.NamespacedName{Namespace: "team-a", Name: "ghost"}
	elsewhere := types.NamespacedName{Namespace: "team-b", Name: "ghost"}
	for _, s := range []types.NamespacedName{kept, ghost, elsewhere} {
		dir := layout.VMDir(s)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filenames.SeedFile), []byte("seed"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := net.EnsureTap(hostnet.TapName(s.Namespace + "/" + s.Name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := net.EnsureTap(hostnet.TapName("team-a/orphan-tap")); err != nil {
		t.Fatal(err)
	}
	pool := &ipam.Pool{Dir: filepath.Join(layout.IPAMDir(), cfg.Network.Bridge),
		First: netip.MustParseAddr("192.168.77.11"), Last: netip.MustParseAddr("192.168.77.254")}
	for _, owner := range []string{"team-a/kept", "team-a/ghost", "team-a/no-vm-dir", "team-b/ghost"} {
		if _, err := pool.Allocate(owner); err != nil {
			t.Fatal(err)
		}
	}
	// A bake a crash interrupted: its directory, tap and address go; its golden image is baked again.
	bakeKey := strings.Repeat("ab", 32)
	bakeDir := filepath.Join(layout.BakesDir(), bakeKey)
	if err := os.MkdirAll(bakeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bakeDir, filenames.DiskFile), []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	flattening := filepath.Join(layout.GoldenDir(), "."+bakeKey+".qcow2.tmp-123")
	if err := os.WriteFile(flattening, []byte("half a golden image"), 0o600); err != nil {
		t.Fatal(err)
	}
	bakeOwner := "bake:" + bakeKey[:16]
	if err := net.EnsureTap(hostnet.TapName(bakeOwner)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Allocate(bakeOwner); err != nil {
		t.Fatal(err)
	}
	exists := func(_ context.Context, s types.NamespacedName) (bool, error) { return s == kept, nil }
	inScope := func(ns string) bool { return ns == "team-a" }
	if err := p.CollectGarbage(context.Background(), exists, inScope); err != nil {
		t.Fatal(err)
	}
	for s, want := range map[types.NamespacedName]bool{kept: true, ghost: false, elsewhere: true} {
		if _, err := os.Stat(layout.VMDir(s)); (err == nil) != want {
			t.Errorf("VM directory of %s exists=%v, want %v", s, err == nil, want)
		}
	}
	for _, left := range []string{bakeDir, flattening} {
		if _, err := os.Stat(left); !os.IsNotExist(err) {
			t.Errorf("the interrupted bake's %s is still there: %v", left, err)
		}
	}
	taps, err := net.BridgeTaps()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{hostnet.TapName("team-a/kept"), hostnet.TapName("team-b/ghost")}
	if len(taps) != 2 || !slices.Contains(taps, want[0]) || !slices.Contains(taps, want[1]) {
		t.Errorf("taps left %v, want exactly %v (kept and out of scope)", taps, want)
	}
	allocs, err := pool.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	for _, o := range allocs {
		owners = append(owners, o)
	}
	slices.Sort(owners)
	if !slices.Equal(owners, []string{"team-a/kept", "team-b/ghost"}) {
		t.Errorf("addresses left for %v, want team-a/kept and team-b/ghost", owners)
	}
}

// newGCHost is a simulator provider (not started) with its own work directory and bridge, for a
// garbage collection test; its taps and bridge go with the test (the test binary's other tests
// share this network namespace).
func newGCHost(t *testing.T, bridge, gateway string) (*simulator.Provider, *hostnet.Network, string) {
	netnstest.Require(t)
	work := t.TempDir()
	cfg := simulator.Config{WorkDir: work, Accel: qemu.AccelTCG, Log: logr.Discard(), BootTimeout: time.Minute,
		Network: hostnet.Config{Bridge: bridge, Gateway: netip.MustParsePrefix(gateway)}}
	p, err := simulator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	net, err := hostnet.New(cfg.Network)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		taps, _ := net.BridgeTaps()
		for _, tap := range taps {
			_ = net.DeleteTap(tap)
		}
		_ = p.Teardown()
	})
	return p, net, work
}
