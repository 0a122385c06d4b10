package simulator_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

func TestMain(m *testing.M) { os.Exit(netnstest.Main(m)) }

const ns = "dc-simulator"

// TestRepaveWithQEMU drives real repaves end to end: Operation → QEMU VM under TCG → cloud-init
// from our seed → Server ready with an address that answers; a second repave of the same Server
// (same IP, new instance); a power cycle; then deleting the Server leaves no VM, tap, file or
// address behind. (A repave whose user-data fails is TestGoldenImagesWithQEMU's broken profile:
// its runcmd fails there, in a boot that test needs anyway.)
func TestRepaveWithQEMU(t *testing.T) {
	// -short is the user's choice to leave out slow tests, so it stays a plain skip (CI never passes -short);
	// a missing requirement fails in CI (package testreq).
	if testing.Short() {
		t.Skip("boots a VM under TCG (minutes); skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	image := guestImage(t)
	h := newSimHarness(t, "sgsim-br0")
	env, work := h.env, h.cfg.WorkDir
	vmDir := func() string { return h.p.VMDir(client.ObjectKey{Namespace: ns, Name: "worker-1"}) }
	ctx := context.Background()
	c := env.Client
	must := mustFor(t)
	must(c.Create(ctx, testenv.Namespace(ns)))
	mem, disk := resourceQ("1536Mi"), resourceQ("4Gi")
	must(c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "worker-1", Namespace: ns},
		Spec: stargatev1.ServerSpec{CPUs: 2, Memory: &mem, Disk: &disk}}))
	profile := func(name, runcmd string) *stargatev1.ProvisioningProfile {
		return &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image},
				CloudInit: "#cloud-config\nruncmd:\n  - " + runcmd + "\n"}}
	}
	must(c.Create(ctx, profile("hello", `[sh, -c, 'echo STARGATE-HELLO $(hostname) > /dev/ttyS0']`)))

	runOp := func(name, prof string, want stargatev1.OperationPhase, midway func()) *stargatev1.Operation {
		t.Helper()
		start := time.Now()
		must(c.Create(ctx, &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: stargatev1.OperationSpec{
			Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: "worker-1"},
			ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: prof}}}))
		op := &stargatev1.Operation{}
		waitFor(t, name+" to finish", 12*time.Minute, func() bool {
			must(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, op))
			if !op.Status.Phase.IsFinal() && midway != nil && meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionVMRunning) {
				midway()
				midway = nil
			}
			return op.Status.Phase.IsFinal()
		})
		t.Logf("%s: %s after %s: %s", name, op.Status.Phase, time.Since(start).Round(time.Second), firstLine(op.Status.Message))
		for _, cond := range op.Status.Conditions {
			t.Logf("  %-15s %-7s %s", cond.Type, cond.Status, cond.LastTransitionTime.Format(time.TimeOnly))
		}
		if op.Status.Phase != want {
			t.Fatalf("%s: phase %s, want %s: %s", name, op.Status.Phase, want, op.Status.Message)
		}
		return op
	}
	server := func() *stargatev1.Server {
		s := &stargatev1.Server{}
		must(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "worker-1"}, s))
		return s
	}
	// The Server's status is recorded by its own reconciler, a moment after the Operation's.
	waitServer := func(ok func(stargatev1.ServerStatus) bool) *stargatev1.Server {
		t.Helper()
		var s *stargatev1.Server
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if s = server(); ok(s.Status) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("server status: %+v", s.Status)
			}
		}
	}
	ping := func(ip string) {
		t.Helper()
		if out, err := exec.Command("ping", "-c", "3", "-W", "2", ip).CombinedOutput(); err != nil {
			t.Errorf("server does not answer on %s: %v\n%s", ip, err, out)
		}
	}
	console := func() string {
		b, _ := os.ReadFile(filepath.Join(vmDir(), filenames.ConsoleFile))
		return string(b)
	}

	// 1. First repave.
	op1 := runOp("repave-1", "hello", stargatev1.OperationSucceeded, nil)
	for _, cond := range []string{stargatev1.ConditionImageReady, stargatev1.ConditionCloudInitReady, stargatev1.ConditionNetworkReady,
		stargatev1.ConditionVMRunning, stargatev1.ConditionGuestReady, stargatev1.ConditionSucceeded} {
		if !meta.IsStatusConditionTrue(op1.Status.Conditions, cond) {
			t.Errorf("repave-1: condition %s not True", cond)
		}
	}
	// The guest reported its own boot: at least the kernel and every cloud-init stage.
	steps := map[string]time.Duration{}
	for _, step := range op1.Status.Timeline {
		steps[step.Name] = step.Duration.Duration
		t.Logf("  timeline %-20s %s", step.Name, step.Duration.Duration)
	}
	for _, name := range []string{"kernel", "cloud-init-local", "cloud-init-network", "cloud-init-config", "cloud-init-final"} {
		if d, ok := steps[name]; !ok || d <= 0 {
			t.Errorf("repave-1: timeline step %s missing or zero: %v", name, op1.Status.Timeline)
		}
	}
	s := waitServer(func(st stargatev1.ServerStatus) bool { return st.State == stargatev1.ServerReady && st.IPAddress != "" })
	firstIP, firstInstance := s.Status.IPAddress, s.Status.InstanceID
	ping(firstIP)
	if !strings.Contains(console(), "STARGATE-HELLO worker-1") {
		t.Errorf("user-data did not run in the guest (hostname from meta-data)")
	}

	// 2. Second repave of the same server: fresh install, same address, one VM, one tap — with the
	// simulator restarted while the new VM boots (its in-memory state is lost; the host's is not).
	runOp("repave-2", "hello", stargatev1.OperationSucceeded, h.restart)
	s = waitServer(func(st stargatev1.ServerStatus) bool { return st.LastOperation == "repave-2" })
	if s.Status.IPAddress != firstIP || s.Status.InstanceID == firstInstance || s.Status.LastOperation != "repave-2" {
		t.Errorf("after repave-2: ip %s (want %s), instance %s (want a new one), last op %s", s.Status.IPAddress, firstIP, s.Status.InstanceID, s.Status.LastOperation)
	}
	ping(firstIP)
	if n := countQEMU(t, work); n != 1 {
		t.Errorf("%d QEMU processes for the work dir, want 1", n)
	}
	if taps, _ := hostnet.Taps(); len(taps) != 1 {
		t.Errorf("taps %v, want exactly one", taps)
	}

	// 2b. Power over QMP: a powerOff (ACPI button, forced after the grace period) stops the VM and
	// keeps disk, address and MAC; a powerOn boots the same installation again.
	runPower := func(name string, kind stargatev1.OperationType) *stargatev1.Operation {
		t.Helper()
		op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: stargatev1.OperationSpec{
			Operation: kind, ServerRef: stargatev1.LocalObjectReference{Name: "worker-1"}}}
		if kind == stargatev1.OperationPowerOff {
			op.Spec.GracePeriod = &metav1.Duration{Duration: 20 * time.Second} // the offline image ignores the ACPI button: forced
		}
		must(c.Create(ctx, op))
		waitFor(t, name+" to finish", 5*time.Minute, func() bool {
			must(c.Get(ctx, client.ObjectKeyFromObject(op), op))
			return op.Status.Phase.IsFinal()
		})
		if op.Status.Phase != stargatev1.OperationSucceeded {
			t.Fatalf("%s: %s: %s", name, op.Status.Phase, op.Status.Message)
		}
		t.Logf("%s: %s", name, op.Status.Message)
		return op
	}
	runPower("power-off", stargatev1.OperationPowerOff)
	if n := countQEMU(t, work); n != 0 {
		t.Errorf("%d QEMU processes after powerOff, want 0", n)
	}
	waitServer(func(st stargatev1.ServerStatus) bool {
		return st.PowerState == stargatev1.PowerOff && st.State == stargatev1.ServerReady
	})
	runPower("power-on", stargatev1.OperationPowerOn)
	if n := countQEMU(t, work); n != 1 {
		t.Errorf("%d QEMU processes after powerOn, want 1", n)
	}
	s = waitServer(func(st stargatev1.ServerStatus) bool { return st.PowerState == stargatev1.PowerOn })
	if s.Status.IPAddress != firstIP || s.Status.InstanceID != server().Status.InstanceID {
		t.Errorf("after a power cycle: %+v", s.Status)
	}
	for deadline := time.Now().Add(4 * time.Minute); ; time.Sleep(5 * time.Second) { // the guest boots again under TCG
		if exec.Command("ping", "-c", "1", "-W", "2", firstIP).Run() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the powered-on server does not answer on %s\n%s", firstIP, console())
		}
	}

	// 3. Delete the server: nothing may remain.
	must(c.Delete(ctx, server()))
	waitFor(t, "the Server's deletion", 2*time.Minute, func() bool {
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "worker-1"}, &stargatev1.Server{})
		return client.IgnoreNotFound(err) == nil && err != nil
	})
	if n := countQEMU(t, work); n != 0 {
		t.Errorf("%d QEMU processes left", n)
	}
	if taps, _ := hostnet.Taps(); len(taps) != 0 {
		t.Errorf("taps left: %v", taps)
	}
	if entries, _ := os.ReadDir(filepath.Join(work, "vms")); len(entries) != 0 {
		t.Errorf("VM directories left: %v", entries)
	}
	pool := &ipam.Pool{Dir: filepath.Join(work, "ipam", "sgsim-br0"), First: netip.MustParseAddr("192.168.100.11"), Last: netip.MustParseAddr("192.168.100.254")}
	if all, _ := pool.Allocations(); len(all) != 0 {
		t.Errorf("addresses left: %v", all)
	}
}

// simHarness is envtest (inside this test's network namespace, on its loopback) plus a simulator
// "process": a provider on its own bridge and a controller manager. restart replaces both, as a
// crashed and restarted simulator would (nothing in memory survives; the host state does).
type simHarness struct {
	t    testing.TB
	env  *testenv.Env
	cfg  simulator.Config
	p    *simulator.Provider
	stop context.CancelFunc
	done chan struct{}
}

func (h *simHarness) start() {
	h.t.Helper()
	p, err := simulator.New(h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(h.env.Config, ctrl.Options{Scheme: h.env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := controller.Setup(mgr, p, controller.Options{PollInterval: 2 * time.Second}, controller.NewMetrics(prometheus.NewRegistry())); err != nil {
		h.t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	h.p, h.stop, h.done = p, stop, make(chan struct{})
	go func() { defer close(h.done); _ = mgr.Start(ctx) }()
}

func (h *simHarness) halt() {
	h.stop()
	<-h.done
}

func (h *simHarness) restart() {
	h.halt()
	h.start()
}

// startSimulator starts envtest, a simulator provider on its own bridge, and the controller;
// everything stops with the test.
func startSimulator(t testing.TB, bridge string) (*testenv.Env, *simulator.Provider, string) {
	h := newSimHarness(t, bridge)
	return h.env, h.p, h.cfg.WorkDir
}

// newSimHarness starts the harness; opts change its simulator's Config first (another subnet, say).
func newSimHarness(t testing.TB, bridge string, opts ...func(*simulator.Config)) *simHarness {
	t.Helper()
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	ctrl.SetLogger(logr.Discard())
	// file:// images only from a directory of the test's own and the guest image's.
	imageDirs := []string{t.TempDir()}
	if image := os.Getenv("STARGATE_GUEST_IMAGE"); image != "" {
		imageDirs = append(imageDirs, filepath.Dir(image))
	}
	h := &simHarness{t: t, env: env, cfg: simulator.Config{
		WorkDir: t.TempDir(), Accel: qemu.AccelTCG, BootTimeout: 8 * time.Minute, Log: logr.Discard(),
		Network: hostnet.Config{Bridge: bridge, Gateway: netip.MustParsePrefix("192.168.100.1/24"), NAT: true},
		Images:  simulator.ImagePolicy{FileDirs: imageDirs},
	}}
	for _, opt := range opts {
		opt(&h.cfg)
	}
	h.start()
	t.Cleanup(func() {
		h.halt()
		if err := h.p.Teardown(); err != nil {
			t.Error(err)
		}
	})
	return h
}

// TestRepaveFailsClearlyOnBadImage: an image that does not exist, does not match its checksum,
// lies outside the allowed image directories or is not a disk image fails the repave at
// ImageReady with a reason a user can act on, before any VM is made.
func TestRepaveFailsClearlyOnBadImage(t *testing.T) {
	netnstest.Require(t)
	h := newSimHarness(t, "sgimg-br0")
	env, work, srcDir := h.env, h.cfg.WorkDir, h.cfg.Images.FileDirs[0]
	ctx := context.Background()
	c := env.Client
	if err := c.Create(ctx, testenv.Namespace(ns)); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(srcDir, "tiny.img")
	if err := os.WriteFile(img, []byte("not really an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, url, checksum, reason, msg string }{
		{"missing", "file://" + srcDir + "/nonexistent.img", "", "ImageNotFound", "nonexistent"},
		{"mismatch", "file://" + img, "sha256:" + strings.Repeat("0", 64), "ChecksumMismatch", "checksum"},
		{"shadow", "file:///etc/shadow", "", "ImageSourceNotAllowed", "--image-dir"},
		{"text", "file://" + img, "", "UnsupportedImage", "not a disk image"},
	}
	for _, tc := range cases {
		if err := c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "s-" + tc.name, Namespace: ns}}); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "p-" + tc.name, Namespace: ns},
			Spec: stargatev1.ProvisioningProfileSpec{CloudInit: "#cloud-config\n{}\n", Image: stargatev1.ImageSource{URL: tc.url, Checksum: tc.checksum}}}); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "op-" + tc.name, Namespace: ns}, Spec: stargatev1.OperationSpec{
			Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: "s-" + tc.name},
			ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p-" + tc.name}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range cases {
		op := &stargatev1.Operation{}
		waitFor(t, "op-"+tc.name+" to finish", time.Minute, func() bool {
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "op-" + tc.name}, op); err != nil {
				t.Fatal(err)
			}
			return op.Status.Phase.IsFinal()
		})
		if op.Status.Phase != stargatev1.OperationFailed {
			t.Fatalf("%s: phase %s, want Failed: %s", tc.name, op.Status.Phase, op.Status.Message)
		}
		cond := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageReady)
		if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != tc.reason || !strings.Contains(op.Status.Message, tc.msg) {
			t.Errorf("%s: ImageReady %+v, message %q; want reason %s mentioning %q", tc.name, cond, op.Status.Message, tc.reason, tc.msg)
		}
	}
	if n := countQEMU(t, work); n != 0 {
		t.Errorf("%d VMs started for bad images", n)
	}
}

// countQEMU counts QEMU processes whose command line mentions dir.
func countQEMU(t testing.TB, dir string) int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", "qemu-system-x86_64.*"+dir).Output()
	return len(strings.Fields(string(out)))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func resourceQ(s string) resource.Quantity { return resource.MustParse(s) }

// mustFor returns the check a test makes of each setup call: stop the test on an error.
func mustFor(t testing.TB) func(error) {
	return func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkRepaveControllerShare runs one real repave per iteration (root, guest image, TCG; use
// -benchtime=1x) and reports the controller's share of it: the time from the Operation's creation
// until the VM runs (image, seed, network, disk, QEMU start), plus the time from cloud-init's end
// until the Operation says Succeeded. Everything else is the guest booting.
func BenchmarkRepaveControllerShare(b *testing.B) {
	netnstest.Require(b)
	image := guestImage(b)
	env, _, _ := startSimulator(b, "sgbench-br0")
	ctx := context.Background()
	c := env.Client
	if err := c.Create(ctx, testenv.Namespace(ns)); err != nil {
		b.Fatal(err)
	}
	mem := resourceQ("1536Mi")
	if err := c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec: stargatev1.ProvisioningProfileSpec{CloudInit: "#cloud-config\n{}\n", Image: stargatev1.ImageSource{URL: "file://" + image}}}); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		i++
		name := fmt.Sprintf("s%d", i)
		if err := c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: stargatev1.ServerSpec{Memory: &mem}}); err != nil {
			b.Fatal(err)
		}
		op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "op-" + name, Namespace: ns}, Spec: stargatev1.OperationSpec{
			Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: name},
			ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p"}}}
		if err := c.Create(ctx, op); err != nil {
			b.Fatal(err)
		}
		for deadline := time.Now().Add(12 * time.Minute); !op.Status.Phase.IsFinal(); time.Sleep(time.Second) {
			if err := c.Get(ctx, client.ObjectKeyFromObject(op), op); err != nil || time.Now().After(deadline) {
				b.Fatalf("operation: %v %s", err, op.Status.Message)
			}
		}
		if op.Status.Phase != stargatev1.OperationSucceeded {
			b.Fatalf("repave failed: %s", op.Status.Message)
		}
		at := func(t string) time.Time {
			return meta.FindStatusCondition(op.Status.Conditions, t).LastTransitionTime.Time
		}
		host := at(stargatev1.ConditionVMRunning).Sub(op.CreationTimestamp.Time)
		tail := at(stargatev1.ConditionSucceeded).Sub(at(stargatev1.ConditionGuestReady))
		b.ReportMetric((host + tail).Seconds(), "controller-s/op")
		b.ReportMetric(op.Status.CompletionTime.Sub(op.CreationTimestamp.Time).Seconds(), "repave-s/op")
	}
}

// guestImage returns the offline guest image that `make test` builds and passes in
// STARGATE_GUEST_IMAGE; without it the test skips, or fails where tests may not skip (testreq).
func guestImage(t testing.TB) string {
	t.Helper()
	image := os.Getenv("STARGATE_GUEST_IMAGE")
	if image == "" {
		testreq.Need(t, "STARGATE_GUEST_IMAGE (the offline Debian guest image)",
			"run the tests as root with `sudo make test`, which builds the image (make guest-image) and sets it")
	}
	return image
}
