package simulator_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/consolelog"
	"stargate.io/stargate/pkg/filenames"
)

// TestConsoleCapWithQEMU boots one real guest whose user-data starts a loop printing numbered
// lines to its serial console, in the background, for ever, under a 1 MiB --console-size. The
// repave succeeds (the readiness line is seen amid the flood, with the guest's timeline); while
// the guest goes on printing, the console's disk use stays within the size, its head is the
// boot, its end the newest line, and the readiness line, dropped from the console with the
// middle, is still found by a fresh reader (the markers file), as a restarted simulator reads it.
func TestConsoleCapWithQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG (minutes); skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	image := guestImage(t)
	const size = consolelog.MinSize
	h := newSimHarness(t, "sgcons-br0", func(c *simulator.Config) {
		c.Network.Gateway = netip.MustParsePrefix("192.168.81.1/24") // this test's own subnet
		c.ConsoleSize = size
	})
	ctx, c := context.Background(), h.env.Client
	must := mustFor(t)
	must(c.Create(ctx, testenv.Namespace(ns)))
	mem, disk := resourceQ("1536Mi"), resourceQ("4Gi")
	must(c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "chatty", Namespace: ns},
		Spec: stargatev1.ServerSpec{CPUs: 2, Memory: &mem, Disk: &disk}}))
	// A transient unit outlives cloud-init's runcmd, so the readiness line comes amid the flood.
	flood := `[systemd-run, --unit=stargate-flood, --no-block, sh, -c, 'i=0; while :; do i=$((i+1)); echo "FLOOD $i ` +
		strings.Repeat("x", 90) + `"; done > /dev/ttyS0']`
	must(c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "chatty", Namespace: ns},
		Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image},
			CloudInit: "#cloud-config\nruncmd:\n  - " + flood + "\n"}}))
	server := client.ObjectKey{Namespace: ns, Name: "chatty"}
	// Whatever happens, the VM is stopped (its network namespace goes with the test); the end of
	// the test releases it through the controller first.
	t.Cleanup(func() { _ = h.p.Release(context.Background(), server) })
	dir := h.p.VMDir(server)
	console := filepath.Join(dir, filenames.ConsoleFile)

	// The console's disk use and apparent size, sampled from the start.
	type sample struct {
		at         time.Duration
		used, size int64
	}
	var (
		mu      sync.Mutex
		samples []sample
	)
	start := time.Now()
	sampling, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if fi, err := os.Stat(console); err == nil {
				mu.Lock()
				samples = append(samples, sample{time.Since(start), consolelog.DiskUsage(console), fi.Size()})
				mu.Unlock()
			}
			select {
			case <-sampling.Done():
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { stopSampling(); <-sampled }()
	last := func() sample {
		mu.Lock()
		defer mu.Unlock()
		if len(samples) == 0 {
			return sample{}
		}
		return samples[len(samples)-1]
	}

	op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "repave-chatty", Namespace: ns}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: "chatty"},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "chatty"}}}
	must(c.Create(ctx, op))
	waitFor(t, "the repave to finish", 12*time.Minute, func() bool {
		must(c.Get(ctx, client.ObjectKeyFromObject(op), op))
		return op.Status.Phase.IsFinal()
	})
	at := last()
	t.Logf("repave %s after %s: %s; console then: %d bytes written, %d on disk", op.Status.Phase, time.Since(start).Round(time.Second),
		firstLine(op.Status.Message), at.size, at.used)
	if op.Status.Phase != stargatev1.OperationSucceeded {
		t.Fatalf("the flooding guest's repave failed: %s", op.Status.Message)
	}
	steps := map[string]bool{}
	for _, s := range op.Status.Timeline {
		steps[s.Name] = true
	}
	for _, name := range []string{"firmware-and-loader", "kernel", "cloud-init-final"} {
		if !steps[name] {
			t.Errorf("timeline step %s missing: %v", name, op.Status.Timeline)
		}
	}

	// Let it print until it wrote six times the size, or for three more minutes.
	for deadline := time.Now().Add(3 * time.Minute); last().size < 6*size && time.Now().Before(deadline); {
		time.Sleep(time.Second)
	}
	stopSampling()
	<-sampled
	var maxUsed sample
	for i, s := range samples {
		if s.used > maxUsed.used {
			maxUsed = s
		}
		if i%50 == 0 || i == len(samples)-1 {
			t.Logf("  at %4.0fs: %8d bytes written, %7d on disk", s.at.Seconds(), s.size, s.used)
		}
	}
	// What the guest writes in a window of two passes and a half, at its fastest: the slack of the
	// cap (a pass may find the Server's lock taken by a repave poll and leave it to the next; the
	// sampler may look just before a pass).
	end, burst := samples[len(samples)-1], int64(0)
	for i, j := 0, 0; j < len(samples); j++ {
		for samples[j].at-samples[i].at > 2500*time.Millisecond {
			i++
		}
		burst = max(burst, samples[j].size-samples[i].size)
	}
	t.Logf("the guest wrote %d bytes, at most %d within 2.5s; most on disk %d bytes at %.0fs (size %d)",
		end.size, burst, maxUsed.used, maxUsed.at.Seconds(), size)
	if end.size < 4*size {
		t.Fatalf("the guest wrote only %d bytes: too little to prove the cap", end.size)
	}
	if slack := burst + 2*4096; maxUsed.used > size+slack {
		t.Errorf("the console took %d bytes on disk, more than its size %d plus %d", maxUsed.used, size, slack)
	}

	// The guest may still be printing: what the file held before the read is the least the read
	// must reach.
	raw, _ := os.ReadFile(console) // whole, holes and all: small enough here
	log := consolelog.ForVM(dir, size, cloudinit.IsMarkerLine)
	view, err := log.Read()
	must(err)
	if len(view) > size+consolelog.MaxMarkers {
		t.Errorf("reading the console took %d bytes", len(view))
	}
	if i := bytes.Index(view, []byte("Linux version")); i < 0 || i > 64<<10 {
		t.Errorf("the console's head is not the boot (kernel banner at %d)", i)
	}
	floods := regexp.MustCompile(`FLOOD (\d+) `).FindAllSubmatch(view, -1)
	newest := regexp.MustCompile(`FLOOD (\d+) `).FindAllSubmatch(raw, -1)
	lastFlood := func(m [][][]byte) int {
		n, _ := strconv.Atoi(string(m[len(m)-1][1]))
		return n
	}
	if len(floods) == 0 || len(newest) == 0 || lastFlood(floods) < lastFlood(newest) {
		t.Error("the console read does not reach the newest line written before it")
	} else if n := lastFlood(floods); n <= len(floods) {
		t.Errorf("the console read holds FLOOD lines up to %d, %d of them: nothing was dropped", n, len(floods))
	}
	id, _ := os.ReadFile(filepath.Join(dir, filenames.InstanceIDFile))
	if !cloudinit.ParseGuestResult(view, strings.TrimSpace(string(id))).Done {
		t.Error("a fresh reader of the console does not find the readiness line")
	}
	markers, _ := os.ReadFile(log.Markers)
	if !bytes.Contains(markers, []byte("STARGATE-READY ")) || bytes.Contains(raw, []byte("STARGATE-READY ")) {
		t.Errorf("the readiness line should be dropped from the console (in it: %v) and kept in the markers (%q)",
			bytes.Contains(raw, []byte("STARGATE-READY ")), markers)
	}

	// Deleting the Server releases the VM, its directory (console and markers) and tap.
	must(c.Delete(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: server.Name, Namespace: ns}}))
	waitFor(t, "the Server to be deleted", 2*time.Minute, func() bool {
		err := c.Get(ctx, server, &stargatev1.Server{})
		return err != nil && client.IgnoreNotFound(err) == nil
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("VM directory left: %v", err)
	}
}
