package fleet_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// realisticStep is a mock repave step lasting as long as the simulator's guest steps take on
// average: the five steps of a repave then last 60 s, about a TCG repave of the worker profile.
const realisticStep = 12 * time.Second

// BenchmarkFleet grows one fleet (one controller process, the mock datacenter) through 500, 2,000
// and 10,000 Servers (STARGATE_FLEET_SIZES overrides, e.g. "500,2000") and at each size runs
// repaves with 100 and with 1,000 in flight: steps of no time (3× the in-flight count of
// Operations, in a closed loop) and steps of realistic length (one wave). It then repaves every
// Server once and measures the idle cost of the whole fleet for a minute. Every run reports
// Operations/s, creation→Succeeded p50/p95/p99, the controller's API requests per Operation by
// verb and its CPU seconds per Operation; each size reports the controller's memory per 1,000
// Servers. STARGATE_FLEET_FLAGS adds flags to the controller; its pprof address is
// logged at the start; STARGATE_FLEET_PROFILES=dir writes a CPU profile of the API server
// during each run, and the controller's heap profile at each size, there. `make bench` runs it; the README's fleet table comes from it.
func BenchmarkFleet(b *testing.B) {
	sizes := []int{500, 2000, 10000}
	if v := os.Getenv("STARGATE_FLEET_SIZES"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("STARGATE_FLEET_SIZES=%q: want sizes such as 500,2000", v)
			}
			sizes = append(sizes, n)
		}
	}
	f := startFleet(b, 0, strings.Fields(os.Getenv("STARGATE_FLEET_FLAGS"))...)
	for _, size := range sizes {
		f.t = b
		added := size - f.servers
		took := f.grow(size)
		b.Logf("fleet of %d Servers: the %d new ones owned in %s (%.0f Servers/s)", size, added, took.Round(time.Second), float64(added)/took.Seconds())
		for _, step := range []time.Duration{0, realisticStep} {
			for _, inflight := range []int{100, 1000} {
				name := fmt.Sprintf("servers=%d/inflight=%d/step=%s", size, inflight, step)
				b.Run(name, func(b *testing.B) {
					f.dc.SetStepDelay(step)
					ops := 3 * inflight
					if step > 0 {
						ops = inflight
					}
					for b.Loop() {
						f.t = b
						if dir := os.Getenv("STARGATE_FLEET_PROFILES"); dir != "" {
							go profileDuring(b, filepath.Join(dir, strings.ReplaceAll(name, "/", "_")+".apiserver.pprof"))
						}
						res := f.run(ops, inflight)
						report(b, res)
					}
				})
			}
		}
		f.t = b
		s := f.memory(os.Getenv("STARGATE_FLEET_PROFILES"), fmt.Sprintf("servers=%d", size))
		b.Run(fmt.Sprintf("servers=%d/memory", size), func(b *testing.B) {
			for b.Loop() {
				b.ReportMetric(s.rss/float64(1<<20), "MiB-rss")
				b.ReportMetric(s.heap/float64(1<<20), "MiB-heap")
				b.ReportMetric(s.rss/float64(1<<20)/float64(size)*1000, "MiB-rss/1000servers")
				b.ReportMetric(0, "ns/op")
			}
		})
	}
	// Every Server installed once, then nothing happens.
	f.t = b
	f.dc.SetStepDelay(0)
	res := f.run(f.servers, 1000)
	b.Run(fmt.Sprintf("servers=%d/all-once/inflight=1000/step=0", f.servers), func(b *testing.B) {
		for b.Loop() {
			report(b, res)
		}
	})
	time.Sleep(10 * time.Second) // the last status writes land
	before := f.sample()
	writes, err := f.objectWrites(time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	after := f.sample()
	idle := after.at.Sub(before.at).Seconds()
	b.Run(fmt.Sprintf("servers=%d/idle", f.servers), func(b *testing.B) {
		for b.Loop() {
			b.ReportMetric((after.writes()-before.writes())/idle, "api-writes/s")
			b.ReportMetric(float64(writes["Server"]+writes["Operation"]+writes["Event"])/idle, "object-writes/s")
			b.ReportMetric((after.requests["GET"]-before.requests["GET"])/idle, "api-gets/s")
			b.ReportMetric(100*(after.cpu-before.cpu)/idle, "%cpu")
			b.ReportMetric(0, "ns/op")
		}
	})
}

// profileDuring profiles the API server for 20 s from 5 s into a run.
func profileDuring(b *testing.B, path string) {
	time.Sleep(5 * time.Second)
	if err := profileAPIServer(path, 20*time.Second); err != nil {
		b.Logf("profiling the API server: %v", err)
	}
}

// report turns one run into benchmark metrics.
func report(b *testing.B, res runResult) {
	ops := float64(res.ops)
	b.ReportMetric(ops/res.elapsed.Seconds(), "ops/s")
	b.ReportMetric(res.percentile(0.50).Seconds(), "p50-s")
	b.ReportMetric(res.percentile(0.95).Seconds(), "p95-s")
	b.ReportMetric(res.percentile(0.99).Seconds(), "p99-s")
	for _, verb := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		b.ReportMetric((res.after.requests[verb]-res.before.requests[verb])/ops, verb+"/op")
	}
	b.ReportMetric(1000*(res.after.cpu-res.before.cpu)/ops, "cpu-ms/op")
	b.ReportMetric(0, "ns/op") // the run's own numbers above are what counts
}
