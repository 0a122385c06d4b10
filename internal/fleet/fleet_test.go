package fleet_test

import (
	"context"
	"testing"
	"time"
)

// TestFleetOf2000Servers is make test's gate on fleet scale (correctness only; numbers are the
// benchmark's): the controller takes 2,000 Servers, runs 200 repaves over them, 100 at a time,
// books no Server twice, and once nothing happens writes nothing to Servers, Operations or
// Events.
func TestFleetOf2000Servers(t *testing.T) {
	if testing.Short() {
		t.Skip("fleet test skipped in -short mode")
	}
	f := startFleet(t, 0)
	took := f.grow(2000)
	res := f.run(200, 100)
	t.Logf("2,000 Servers owned in %s; 200 repaves, 100 in flight: %.0f ops/s, p50 %s, p99 %s",
		took.Round(time.Millisecond), float64(res.ops)/res.elapsed.Seconds(), res.percentile(0.5), res.percentile(0.99))
	if n := f.dc.Overlaps(); n != 0 {
		t.Errorf("%d repaves started on a Server whose previous repave was unfinished", n)
	}
	total := 0
	for i := range 2000 {
		total += f.dc.Repaves(f.ns, serverName(i))
	}
	if total != 200 {
		t.Errorf("the datacenter installed %d times, want 200 (one per Operation)", total)
	}
	// Let the last status writes land, then watch: nothing may change while nothing happens.
	time.Sleep(5 * time.Second)
	writes, err := f.objectWrites(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for kind, n := range writes {
		if n != 0 {
			t.Errorf("%d writes to %ss in 20 s of a fleet where nothing happened", n, kind)
		}
	}
	_ = context.Background()
}
