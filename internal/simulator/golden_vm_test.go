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

// TestGoldenImagesWithQEMU bakes golden images with real VMs (TCG). A repave never waits for a
// bake: with no golden image it installs the profile itself (its installation, then its
// per-instance user-data) and the golden image is baked in the background; a later repave boots
// the image, with its own identity, and runs only the per-instance user-data; a broken profile (a
// failing installation and a failing runcmd) fails its repave with cloud-init's errors and the
// guest's console, the Server says Error, and its bake caches nothing; a damaged golden image is
// removed, the repave installs the stock way and the image is baked again. Bakes leave no VM,
// directory, tap or address behind. (That a changed installation is another golden image is
// TestGoldenKey's.)
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
	must := mustFor(t)
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
	// An installation whose module fails (not a runcmd: a runcmd script fails only by its last
	// command, and the stock way appends the per-instance commands after the installation's), so
	// the repave and the bake both see cloud-init fail; and a per-instance runcmd that fails.
	broken := profile("broken-bake", "#cloud-config\nwrite_files:\n  - path: /proc/STARGATE-BAKE-BROKEN/file\n    content: never\n")
	broken.Spec.CloudInit = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo STARGATE-ABOUT-TO-FAIL; exit 3']\n"
	must(c.Create(ctx, broken))

	start := func(name, server, prof string) {
		t.Helper()
		must(c.Create(ctx, &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: stargatev1.OperationSpec{
			Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: server},
			ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: prof}}}))
	}
	// wait waits for Operations running at the same time to finish, with the phases wanted, and
	// returns them with their ImageReady condition.
	wait := func(want map[string]stargatev1.OperationPhase) map[string]*stargatev1.Operation {
		t.Helper()
		got := map[string]*stargatev1.Operation{}
		for name := range want {
			op := &stargatev1.Operation{}
			waitFor(t, name+" to finish", 15*time.Minute, func() bool {
				must(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, op))
				return op.Status.Phase.IsFinal()
			})
			img := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageReady)
			t.Logf("%s: %s after %s; ImageReady %s: %s", name, op.Status.Phase, op.Status.CompletionTime.Sub(op.CreationTimestamp.Time).Round(time.Second),
				img.Reason, firstLine(img.Message))
			if op.Status.Phase != want[name] {
				t.Fatalf("%s: phase %s, want %s: %s", name, op.Status.Phase, want[name], op.Status.Message)
			}
			got[name] = op
		}
		return got
	}
	imageReady := func(op *stargatev1.Operation) *metav1.Condition {
		return meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageReady)
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
	bakesEnded := func() {
		t.Helper()
		waitFor(t, "the background bakes to end", 15*time.Minute, func() bool {
			dirs, _ := os.ReadDir(filepath.Join(h.cfg.WorkDir, filenames.BakesDir))
			return simulator.BakesRunning(h.p) == 0 && len(dirs) == 0
		})
	}
	// The stock way: the repave ran the installation itself, and says the golden image is baked.
	stock := func(op *stargatev1.Operation, why string) {
		t.Helper()
		if img := imageReady(op); img.Reason != "Cached" || !strings.Contains(img.Message, "runs the profile's installation itself") ||
			!strings.Contains(img.Message, why) {
			t.Errorf("%s: ImageReady %s: %s; want Cached, installing the stock way, %q", op.Name, img.Reason, img.Message, why)
		}
	}

	// 1. No golden image yet: the repave does not wait; the bake runs in the background once its
	// guest is up (it does not compete with it for the CPUs). (That repaves of one installation
	// at once share one bake is TestStartBakeWaitsForRoom's: a bake is queued once per key.)
	start("g1-a", "g1", "golden")
	stock(wait(map[string]stargatev1.OperationPhase{"g1-a": stargatev1.OperationSucceeded})["g1-a"], "baked in the background")
	r1 := report("g1")
	if r1[0] != "g1" || r1[1] != "baked-A" || r1[2] != "1" || len(r1[3]) != 32 {
		t.Errorf("instance report %v: want its hostname, the installation's file, its runcmd run once (before the per-instance "+
			"user-data) and a machine-id", r1)
	}
	bakesEnded()
	if n := simulator.BakesStarted(h.p); n != 1 {
		t.Errorf("%d bakes, want 1", n)
	}
	if files := goldenFiles(); len(files) != 1 {
		t.Fatalf("golden images %v, want 1", files)
	}
	goldenA := goldenFiles()[0]

	// 2. At once: a repave boots the golden image (no bake), and a broken installation fails its
	// repave with the guest's console while its background bake fails and caches nothing.
	start("g1-b", "g1", "golden")
	start("g2-b", "g2", "broken-bake")
	second := wait(map[string]stargatev1.OperationPhase{"g1-b": stargatev1.OperationSucceeded, "g2-b": stargatev1.OperationFailed})
	if img := imageReady(second["g1-b"]); img.Reason != "GoldenImage" {
		t.Errorf("the reuse says %s: %s, want GoldenImage", img.Reason, img.Message)
	}
	if r := report("g1"); r[0] != "g1" || r[1] != "baked-A" || r[2] != "1" || r[3] == r1[3] || len(r[3]) != 32 {
		t.Errorf("golden image booted: report %v (first %v): want its hostname, the baked file, one run (in the bake), a new machine-id", r, r1)
	}
	failed := second["g2-b"]
	guest := meta.FindStatusCondition(failed.Status.Conditions, stargatev1.ConditionGuestReady)
	for _, want := range []string{"cloud-init finished with errors", "write-files", "serial console", "STARGATE-ABOUT-TO-FAIL"} {
		if !strings.Contains(failed.Status.Message, want) || guest == nil || guest.Reason != "CloudInitFailed" {
			t.Errorf("broken profile: GuestReady %+v, message %q: want CloudInitFailed with %q "+
				"(cloud-init's errors naming the failed module, the console with the runcmd's output)", guest, failed.Status.Message, want)
		}
	}
	waitFor(t, "Server g2 to say Error", 30*time.Second, func() bool {
		s := &stargatev1.Server{}
		must(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "g2"}, s))
		return s.Status.State == stargatev1.ServerError
	})
	bakesEnded()
	if n := simulator.BakesStarted(h.p); n != 2 {
		t.Errorf("%d bakes, want 2 (the first and the broken one)", n)
	}
	if files := goldenFiles(); len(files) != 1 {
		t.Errorf("golden images %v after a failed bake, want still 1", files)
	}

	// 3. A damaged golden image is removed: the repave installs the stock way, says why, and the
	// image is baked again. With the image cache bounded to (almost) nothing, the bake's prune
	// keeps its own image and the OS image the disks overlay.
	h.halt()
	h.cfg.ImageCacheSize = 1
	h.start()
	must(os.WriteFile(goldenA, []byte("damaged"), 0o600))
	start("g2-c", "g2", "golden")
	third := wait(map[string]stargatev1.OperationPhase{"g2-c": stargatev1.OperationSucceeded})
	stock(third["g2-c"], "GoldenImageDamaged: golden image "+strings.TrimPrefix(filepath.Base(goldenA), ns+".")[:16])
	if r := report("g2"); r[1] != "baked-A" || r[2] != "1" {
		t.Errorf("after the damage: report %v, want baked-A, one run", r)
	}
	bakesEnded()
	if n := simulator.BakesStarted(h.p); n != 1 {
		t.Errorf("%d bakes since the restart, want 1 (the damaged image again)", n)
	}
	if files := goldenFiles(); len(files) != 1 || files[0] != goldenA {
		t.Errorf("golden images %v, want %s baked again", files, goldenA)
	}
	if entries, _ := os.ReadDir(filepath.Join(h.cfg.WorkDir, filenames.ImagesDir)); len(entries) == 0 {
		t.Error("the OS image the disks overlay was pruned")
	}

	// Bakes leave nothing behind: no directory, tap or address of theirs.
	if taps, _ := hostnet.Taps(); len(taps) != 2 {
		t.Errorf("taps %v, want the two Servers' only", taps)
	}
	pool := &ipam.Pool{Dir: filepath.Join(h.cfg.WorkDir, filenames.IPAMDir, "sggold-br0")}
	if all, _ := pool.Allocations(); len(all) != 2 {
		t.Errorf("addresses %v, want the two Servers' only", all)
	}
}
