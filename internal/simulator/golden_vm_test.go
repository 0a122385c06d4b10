package simulator_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/ipam"
)

// goldenReport is what the per-instance user-data prints: what the golden image holds, how often
// the installation ran on this disk, and the identity cloud-init made for this instance.
var goldenReport = regexp.MustCompile(`STARGATE-GOLDEN host=(\S+) golden=(\S+) runs=(\d+) machine-id=(\S+)`)

// TestGoldenImagesWithQEMU bakes golden images with real VMs (TCG): two repaves at once share one
// bake and boot its image with their own identity; a later repave reuses it without baking; a
// broken installation fails its repave with the bake's console and caches nothing; a changed
// installation bakes again. Bakes leave no VM, directory, tap or address behind.
func TestGoldenImagesWithQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs under TCG (minutes); skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	image := guestImage(t)
	h := newSimHarness(t, "sggold-br0")
	ctx := context.Background()
	c := h.env.Client
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Create(ctx, testenv.Namespace(ns)))
	mem := resourceQ("1536Mi")
	for _, name := range []string{"g1", "g2"} {
		must(c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: stargatev1.ServerSpec{CPUs: 1, Memory: &mem}}))
	}
	installation := func(content, runcmd string) string {
		return "#cloud-config\nwrite_files:\n  - path: /etc/stargate-golden\n    content: \"" + content + "\\n\"\nruncmd:\n  - " + runcmd + "\n"
	}
	const countRun = `[sh, -c, 'echo run >> /var/lib/stargate-bake-runs']`
	perInstance := "#cloud-config\nruncmd:\n  - [sh, -c, 'echo \"STARGATE-GOLDEN host=$(hostname) golden=$(cat /etc/stargate-golden) " +
		"runs=$(wc -l < /var/lib/stargate-bake-runs) machine-id=$(cat /etc/machine-id)\" > /dev/ttyS0']\n"
	profile := func(name, inst string) *stargatev1.ProvisioningProfile {
		return &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image},
				Installation: &stargatev1.Installation{CloudInit: inst}, CloudInit: perInstance}}
	}
	must(c.Create(ctx, profile("golden", installation("baked-A", countRun))))
	must(c.Create(ctx, profile("broken-bake", installation("never", `[sh, -c, 'echo STARGATE-BAKE-BROKEN; exit 7']`))))

	start := func(name, server, prof string) {
		t.Helper()
		must(c.Create(ctx, &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: stargatev1.OperationSpec{
			Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: server},
			ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: prof}}}))
	}
	// wait waits for Operations running at the same time to finish, with the phases wanted, and
	// returns them and whether each one's ImageReady was ever seen Baking.
	type result struct {
		op     *stargatev1.Operation
		baking bool
	}
	wait := func(want map[string]stargatev1.OperationPhase) map[string]*result {
		t.Helper()
		got := map[string]*result{}
		for name := range want {
			got[name] = &result{op: &stargatev1.Operation{}}
		}
		for deadline := time.Now().Add(15 * time.Minute); ; time.Sleep(time.Second) {
			final := 0
			for name, r := range got {
				if r.op.Status.Phase.IsFinal() {
					final++
					continue
				}
				must(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, r.op))
				if cond := meta.FindStatusCondition(r.op.Status.Conditions, stargatev1.ConditionImageReady); cond != nil && cond.Reason == "Baking" {
					r.baking = true
				}
			}
			if final == len(got) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not finished after 15m: %v", want)
			}
		}
		for name, r := range got {
			img := meta.FindStatusCondition(r.op.Status.Conditions, stargatev1.ConditionImageReady)
			t.Logf("%s: %s after %s; ImageReady %s: %s", name, r.op.Status.Phase, r.op.Status.CompletionTime.Sub(r.op.CreationTimestamp.Time).Round(time.Second),
				img.Reason, firstLine(img.Message))
			for _, step := range r.op.Status.Timeline {
				t.Logf("  timeline %-20s %s", step.Name, step.Duration.Duration)
			}
			if r.op.Status.Phase != want[name] {
				t.Fatalf("%s: phase %s, want %s: %s", name, r.op.Status.Phase, want[name], r.op.Status.Message)
			}
		}
		return got
	}
	report := func(server string) []string {
		t.Helper()
		b, _ := os.ReadFile(filepath.Join(h.p.VMDir(client.ObjectKey{Namespace: ns, Name: server}), filenames.ConsoleFile))
		m := goldenReport.FindStringSubmatch(string(b))
		if m == nil {
			t.Fatalf("%s: the per-instance user-data did not report; console:\n%s", server, tail(string(b), 30))
		}
		return m[1:]
	}
	goldenFiles := func() []string {
		files, _ := filepath.Glob(filepath.Join(h.cfg.WorkDir, filenames.GoldenDir, "*.qcow2"))
		return files
	}

	// 1. Two repaves need the same golden image at once: one bake, both boot it as themselves.
	start("g1-a", "g1", "golden")
	start("g2-a", "g2", "golden")
	first := wait(map[string]stargatev1.OperationPhase{"g1-a": stargatev1.OperationSucceeded, "g2-a": stargatev1.OperationSucceeded})
	for name, r := range first {
		img := meta.FindStatusCondition(r.op.Status.Conditions, stargatev1.ConditionImageReady)
		if !r.baking || img.Reason != "GoldenImage" || !strings.Contains(img.Message, "baked in") {
			t.Errorf("%s: ImageReady seen Baking %v, then %s: %s; want Baking, then GoldenImage baked in ...", name, r.baking, img.Reason, img.Message)
		}
	}
	if n := simulator.BakesStarted(h.p); n != 1 {
		t.Errorf("%d bakes for two repaves of one installation, want 1", n)
	}
	r1, r2 := report("g1"), report("g2")
	for _, r := range [][]string{r1, r2} {
		if r[1] != "baked-A" || r[2] != "1" {
			t.Errorf("instance report %v: want the baked file and the installation run once (in the bake), not again", r)
		}
	}
	if r1[0] != "g1" || r2[0] != "g2" || r1[3] == r2[3] || len(r1[3]) != 32 {
		t.Errorf("instances must have their own hostname and machine-id: %v, %v", r1, r2)
	}
	if files := goldenFiles(); len(files) != 1 {
		t.Errorf("golden images %v, want 1", files)
	}

	// 2. At once: a repave reuses the golden image (no bake), and a broken installation fails to bake.
	start("g1-b", "g1", "golden")
	start("g2-b", "g2", "broken-bake")
	second := wait(map[string]stargatev1.OperationPhase{"g1-b": stargatev1.OperationSucceeded, "g2-b": stargatev1.OperationFailed})
	reused := second["g1-b"]
	if img := meta.FindStatusCondition(reused.op.Status.Conditions, stargatev1.ConditionImageReady); reused.baking ||
		img.Reason != "GoldenImage" || strings.Contains(img.Message, "baked in") {
		t.Errorf("the reuse baked (%v) or says %s: %s", reused.baking, img.Reason, img.Message)
	}
	if r := report("g1"); r[1] != "baked-A" || r[2] != "1" || r[3] == r1[3] {
		t.Errorf("reused golden image: report %v (first %v): want the baked file, one run, a new machine-id", r, r1)
	}
	failed := second["g2-b"].op
	img := meta.FindStatusCondition(failed.Status.Conditions, stargatev1.ConditionImageReady)
	if img.Reason != "BakeFailed" || !strings.Contains(failed.Status.Message, "STARGATE-BAKE-BROKEN") ||
		!strings.Contains(failed.Status.Message, "serial console") {
		t.Errorf("failed bake: ImageReady %s, message %q: want BakeFailed with the bake's console", img.Reason, failed.Status.Message)
	}
	if n := simulator.BakesStarted(h.p); n != 2 {
		t.Errorf("%d bakes, want 2 (the first and the broken one)", n)
	}
	if files := goldenFiles(); len(files) != 1 {
		t.Errorf("golden images %v after a failed bake, want still 1", files)
	}

	// 3. A changed installation bakes again. With the image cache bounded to (almost) nothing, the
	// bake's prune may remove what no disk needs (the OS image, fetched again when needed), never
	// the old golden image, which g2's disk (from step 1) still overlays, nor the new one.
	h.halt()
	h.cfg.ImageCacheSize = 1
	h.start()
	p := &stargatev1.ProvisioningProfile{}
	must(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "golden"}, p))
	p.Spec.Installation.CloudInit = installation("baked-B", countRun)
	must(c.Update(ctx, p))
	start("g1-c", "g1", "golden")
	if third := wait(map[string]stargatev1.OperationPhase{"g1-c": stargatev1.OperationSucceeded}); !third["g1-c"].baking {
		t.Error("a changed installation did not bake again")
	}
	if r := report("g1"); r[1] != "baked-B" || r[2] != "1" {
		t.Errorf("after the change: report %v, want baked-B, one run", r)
	}
	if files := goldenFiles(); len(files) != 2 {
		t.Errorf("golden images %v, want 2 (the new one, and the one g2's disk needs)", files)
	}

	// Bakes leave nothing behind: no directory, tap or address of theirs.
	if dirs, _ := os.ReadDir(filepath.Join(h.cfg.WorkDir, filenames.BakesDir)); len(dirs) != 0 {
		t.Errorf("bake directories left: %v", dirs)
	}
	if taps, _ := hostnet.Taps(); len(taps) != 2 {
		t.Errorf("taps %v, want the two Servers' only", taps)
	}
	pool := &ipam.Pool{Dir: filepath.Join(h.cfg.WorkDir, filenames.IPAMDir, "sggold-br0")}
	if all, _ := pool.Allocations(); len(all) != 2 {
		t.Errorf("addresses %v, want the two Servers' only", all)
	}
	// Deleting the Servers releases their VMs, taps and addresses (the package's other tests share
	// this network namespace: nothing may be left for them).
	for _, s := range []string{"g1", "g2"} {
		must(c.Delete(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: s, Namespace: ns}}))
	}
	for _, s := range []string{"g1", "g2"} {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
			err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: s}, &stargatev1.Server{})
			if err != nil && client.IgnoreNotFound(err) == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Server %s not deleted within 2m: %v", s, err)
			}
		}
	}
	if taps, _ := hostnet.Taps(); len(taps) != 0 {
		t.Errorf("taps %v left after the Servers were deleted", taps)
	}
}
