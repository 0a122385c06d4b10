package simulator_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// The shape of every VM of BenchmarkRepaveVsHandQEMU, by Stargate or by hand.
const (
	handCPUs     = 2
	handMemMiB   = 1536
	handDiskSize = "4Gi"
	handUserData = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo bench > /dev/ttyS0']\n"
)

// BenchmarkRepaveVsHandQEMU compares, per iteration (root, guest image, TCG; use -benchtime=1x),
// (a) a repave through the controller, from the Operation's creation until it says Succeeded,
// with (b) the same QEMU command line started by hand (qemu.Cmdline, same VM shape, an overlay on
// the same cached base, a seed from the same pkg/cloudinit functions, a tap on the same bridge),
// from QEMU's start until the readiness line is on the console. The order alternates, and each VM
// is gone before the next one boots. ratio = stargate / hand; the goal is ≤ 1.05.
func BenchmarkRepaveVsHandQEMU(b *testing.B) {
	netnstest.Require(b)
	image := guestImage(b)
	testreq.Command(b, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	h := newSimHarness(b, "sgvs-br0")
	ctx := context.Background()
	c := h.env.Client
	if err := c.Create(ctx, testenv.Namespace(ns)); err != nil {
		b.Fatal(err)
	}
	url := "file://" + image
	if err := c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec: stargatev1.ProvisioningProfileSpec{CloudInit: handUserData, Image: stargatev1.ImageSource{URL: url}}}); err != nil {
		b.Fatal(err)
	}
	// The image is cached before the clock runs, as it is for every repave but a host's first.
	cached, err := (&imagecache.Cache{Dir: filepath.Join(h.cfg.WorkDir, filenames.ImagesDir), FileDirs: h.cfg.Images.FileDirs}).Fetch(ctx, url, "", nil)
	if err != nil {
		b.Fatalf("caching the guest image: %v", err)
	}
	var stargate, hand []time.Duration
	i := 0
	for b.Loop() {
		i++
		runA := func() { stargate = append(stargate, benchRepave(b, h, fmt.Sprintf("s%d", i))) }
		runB := func() { hand = append(hand, benchHandQEMU(b, h, cached.Path, i)) }
		if i%2 == 1 {
			runA()
			runB()
		} else {
			runB()
			runA()
		}
	}
	a, m := median(stargate), median(hand)
	b.ReportMetric(a.Seconds(), "stargate-s/op")
	b.ReportMetric(m.Seconds(), "hand-s/op")
	b.ReportMetric(a.Seconds()/m.Seconds(), "ratio")
}

// benchRepave repaves a new Server through the controller, then deletes it (its VM goes).
func benchRepave(b *testing.B, h *simHarness, name string) time.Duration {
	ctx := context.Background()
	c := h.env.Client
	mem, disk := resourceQ(fmt.Sprintf("%dMi", handMemMiB)), resourceQ(handDiskSize)
	srv := &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: stargatev1.ServerSpec{CPUs: handCPUs, Memory: &mem, Disk: &disk}}
	if err := c.Create(ctx, srv); err != nil {
		b.Fatal(err)
	}
	op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "op-" + name, Namespace: ns}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: name},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p"}}}
	start := time.Now()
	if err := c.Create(ctx, op); err != nil {
		b.Fatal(err)
	}
	// Polled often: the poll's own delay must not count against Stargate.
	for deadline := time.Now().Add(12 * time.Minute); !op.Status.Phase.IsFinal(); time.Sleep(50 * time.Millisecond) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(op), op); err != nil || time.Now().After(deadline) {
			b.Fatalf("operation: %v %s", err, op.Status.Message)
		}
	}
	took := time.Since(start)
	if op.Status.Phase != stargatev1.OperationSucceeded {
		b.Fatalf("repave failed: %s", op.Status.Message)
	}
	var steps []string
	for _, s := range op.Status.Timeline {
		steps = append(steps, fmt.Sprintf("%s=%.1fs", s.Name, s.Duration.Seconds()))
	}
	b.Logf("stargate %s: %.1fs; timeline %s", name, took.Seconds(), strings.Join(steps, " "))
	if err := c.Delete(ctx, srv); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(srv), srv); client.IgnoreNotFound(err) == nil && err != nil {
			return took
		}
		if time.Now().After(deadline) {
			b.Fatalf("server %s not deleted", name)
		}
	}
}

// benchHandQEMU boots the same VM without Stargate and removes everything it made.
func benchHandQEMU(b *testing.B, h *simHarness, base string, i int) time.Duration {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "handvm-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	id := fmt.Sprintf("bench/hand-%d", i)
	tap, mac := hostnet.TapName(id), hostnet.MACAddress(id)
	network, err := hostnet.New(h.cfg.Network)
	if err != nil {
		b.Fatal(err)
	}
	if err := network.EnsureTap(tap); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := network.DeleteTap(tap); err != nil {
			b.Error(err)
		}
	}()
	disk := resourceQ(handDiskSize)
	if err := qemu.CreateOverlay(ctx, base, filepath.Join(dir, filenames.DiskFile), disk.Value()); err != nil {
		b.Fatal(err)
	}
	instanceID := fmt.Sprintf("hand-%d-%d", i, time.Now().UnixNano())
	// The last address of the pool: the provider hands out the lowest free one first.
	if err := cloudinit.WriteNoCloudISO(filepath.Join(dir, filenames.SeedFile), cloudinit.Config{
		InstanceID: instanceID, Hostname: fmt.Sprintf("hand-%d", i), UserData: []byte(handUserData),
		VendorData: cloudinit.ReadinessVendorData(instanceID),
		Network: &cloudinit.GuestNetwork{MAC: mac, Address: netip.MustParsePrefix("192.168.100.254/24"),
			Gateway: h.cfg.Network.Gateway.Addr(), DNS: h.cfg.DNS},
	}); err != nil {
		b.Fatal(err)
	}
	spec := qemu.VMSpec{Name: "hand", Dir: dir, QMPSocket: filepath.Join(dir, "qmp"), CPUs: handCPUs, MemoryMiB: handMemMiB,
		MAC: mac, Tap: tap, Accel: qemu.AccelTCG}
	console := filepath.Join(dir, filenames.ConsoleFile)
	start := time.Now()
	if out, err := exec.Command("qemu-system-x86_64", qemu.Cmdline(spec)...).CombinedOutput(); err != nil {
		b.Fatalf("starting QEMU by hand: %v: %s", err, out)
	}
	defer func() {
		if err := (qemu.VMs{}).Stop(ctx, dir, spec.QMPSocket, 0); err != nil {
			b.Error(err)
		}
	}()
	for deadline := time.Now().Add(12 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		out, _ := os.ReadFile(console)
		if r := cloudinit.ParseGuestResult(out, instanceID); r.Done {
			took := time.Since(start)
			var steps []string
			if !r.KernelStart.IsZero() {
				steps = append(steps, fmt.Sprintf("firmware-and-loader=%.1fs", r.KernelStart.Sub(start).Seconds()))
			}
			for _, s := range r.Timeline {
				steps = append(steps, fmt.Sprintf("%s=%.1fs", s.Name, s.Duration.Seconds()))
			}
			b.Logf("hand %d: %.1fs; timeline %s", i, took.Seconds(), strings.Join(steps, " "))
			if len(r.Errors) > 0 {
				b.Fatalf("cloud-init errors in the hand-started guest: %v", r.Errors)
			}
			return took
		}
		if time.Now().After(deadline) {
			b.Fatalf("the hand-started guest did not finish in 12m:\n%s", cloudinit.ConsoleTail(out, 25, 3000))
		}
	}
}

// median is the middle duration (of an even count, the upper of the two in the middle).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
