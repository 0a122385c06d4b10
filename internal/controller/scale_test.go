package controller_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
)

// runMany creates ops Operations spread over servers Servers (all at once, so Operations on one
// Server compete) and waits until every one succeeded.
func runMany(t testing.TB, h *harness, servers, ops int, timeout time.Duration) {
	ctx := context.Background()
	create := func(obj client.Object) {
		obj.SetNamespace(h.ns)
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatalf("creating %s: %v", obj.GetName(), err)
		}
	}
	create(profile("p", okUserData))
	for i := range servers {
		create(server(fmt.Sprintf("s%d", i)))
	}
	for i := range ops {
		create(repave(fmt.Sprintf("op%d", i), fmt.Sprintf("s%d", i%servers), "p"))
	}
	deadline := time.Now().Add(timeout)
	for {
		var list stargatev1.OperationList
		if err := env.Client.List(ctx, &list, client.InNamespace(h.ns)); err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, op := range list.Items {
			switch op.Status.Phase {
			case stargatev1.OperationSucceeded:
				done++
			case stargatev1.OperationFailed:
				t.Fatalf("operation %s failed: %s", op.Name, op.Status.Message)
			}
		}
		if done == ops {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d operations succeeded within %s", done, ops, timeout)
		}
		time.Sleep(100 * time.Millisecond) // polling the apiserver
	}
}

func TestManyOperationsNoServerDoubleBooked(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test skipped in -short mode")
	}
	h := newHarness(t, 5*time.Millisecond, controller.Options{MaxConcurrentReconciles: 8})
	const servers, ops = 50, 200
	runMany(t, h, servers, ops, 3*time.Minute)
	if n := h.dc.Overlaps(); n != 0 {
		t.Errorf("%d repaves started on a server whose previous repave was unfinished", n)
	}
	for i := range servers {
		if n := h.dc.Repaves(h.ns, fmt.Sprintf("s%d", i)); n != ops/servers {
			t.Errorf("server s%d installed %d times, want %d", i, n, ops/servers)
		}
	}
}

// BenchmarkMockThroughput reports how many Operations per second the controller completes with
// the mock datacenter (steps take no time), 500 Operations over 100 Servers per iteration.
func BenchmarkMockThroughput(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		h := newHarness(b, 0, controller.Options{MaxConcurrentReconciles: 8})
		b.StartTimer()
		start := time.Now()
		runMany(b, h, 100, 500, 10*time.Minute)
		b.ReportMetric(500/time.Since(start).Seconds(), "ops/s")
		b.StopTimer()
		h.stop()
		b.StartTimer()
	}
}

// BenchmarkQueuedBehindMaxParallel reports how long Operations wait from creation to Running when
// 100 are queued behind --max-parallel 2 (mock datacenter, 20 ms steps): the mean, the last one,
// and the controller's overhead per start beyond the capacity-bound minimum.
func BenchmarkQueuedBehindMaxParallel(b *testing.B) {
	const ops, parallel, step = 100, 2, 20 * time.Millisecond
	for b.Loop() {
		b.StopTimer()
		h := newHarness(b, step, controller.Options{MaxParallel: parallel, MaxConcurrentReconciles: 8, PollInterval: 10 * time.Millisecond})
		b.StartTimer()
		runMany(b, h, ops, ops, 10*time.Minute)
		b.StopTimer()
		var list stargatev1.OperationList
		if err := env.Client.List(context.Background(), &list, client.InNamespace(h.ns)); err != nil {
			b.Fatal(err)
		}
		var total, last time.Duration
		for _, op := range list.Items {
			wait := op.Status.StartTime.Sub(op.CreationTimestamp.Time)
			total += wait
			last = max(last, wait)
		}
		// Each repave takes len(steps)*step on the datacenter; with `parallel` at once the last
		// start can come no sooner than this.
		floor := time.Duration(ops/parallel-1) * time.Duration(len(stargatev1.RepaveSteps)) * step
		b.ReportMetric(total.Seconds()/ops, "s-to-running-mean")
		b.ReportMetric(last.Seconds(), "s-to-running-last")
		b.ReportMetric((last-floor).Seconds()/float64(ops/parallel), "s-overhead/start")
		h.stop()
		b.StartTimer()
	}
}
