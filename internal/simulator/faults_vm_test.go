package simulator_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/qemu"
)

// faultRig is one Server of a harness, repaved by Operations while FaultInjections come and go.
type faultRig struct {
	t      *testing.T
	h      *simHarness
	c      client.Client
	server string
}

func newFaultRig(t *testing.T, bridge, server string, opts ...func(*simulator.Config)) *faultRig {
	image := guestImage(t)
	h := newSimHarness(t, bridge, opts...)
	r := &faultRig{t: t, h: h, c: h.env.Client, server: server}
	ctx := context.Background()
	mem, disk := resourceQ("1536Mi"), resourceQ("4Gi")
	r.must(r.c.Create(ctx, testenv.Namespace(ns)))
	r.must(r.c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: server, Namespace: ns},
		Spec: stargatev1.ServerSpec{CPUs: 1, Memory: &mem, Disk: &disk}}))
	r.must(r.c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: ns},
		Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image},
			CloudInit: "#cloud-config\nruncmd:\n  - [sh, -c, 'echo STARGATE-HELLO > /dev/ttyS0']\n"}}))
	return r
}

// setProfile changes the rig's profile.
func (r *faultRig) setProfile(change func(*stargatev1.ProvisioningProfileSpec)) {
	r.t.Helper()
	ctx := context.Background()
	var pp stargatev1.ProvisioningProfile
	r.must(r.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hello"}, &pp))
	change(&pp.Spec)
	r.must(r.c.Update(ctx, &pp))
}

func (r *faultRig) must(err error) {
	r.t.Helper()
	if err != nil {
		r.t.Fatal(err)
	}
}

func (r *faultRig) vmDir() string {
	return r.h.p.VMDir(client.ObjectKey{Namespace: ns, Name: r.server})
}

// inject creates a FaultInjection of the faults (each on the first Operation only) and waits until
// this host reports it injects them all, so that the next Operation meets it.
func (r *faultRig) inject(name string, fs ...stargatev1.Fault) *stargatev1.FaultInjection {
	r.t.Helper()
	ctx := context.Background()
	for i := range fs {
		fs[i].FirstN = ptr.To[int32](1)
	}
	fi := &stargatev1.FaultInjection{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: stargatev1.FaultInjectionSpec{Faults: fs}}
	r.must(r.c.Create(ctx, fi))
	waitInjecting(r.t, r.c, fi)
	return fi
}

// waitInjecting waits until the one host of the test reports that it injects all of fi's faults.
func waitInjecting(t *testing.T, c client.Client, fi *stargatev1.FaultInjection) {
	t.Helper()
	must := mustFor(t)
	waitFor(t, fi.Name+" to be Ready on this host", time.Minute, func() bool {
		must(c.Get(context.Background(), client.ObjectKeyFromObject(fi), fi))
		return len(fi.Status.Hosts) == 1 && meta.IsStatusConditionTrue(fi.Status.Hosts[0].Conditions, stargatev1.ConditionReady)
	})
}

// repave runs a repave (spec.timeout timeout) to its end; midway runs every poll while it runs.
func (r *faultRig) repave(name string, timeout time.Duration, want stargatev1.OperationPhase, midway func()) *stargatev1.Operation {
	r.t.Helper()
	start := time.Now()
	op := r.startRepave(name, timeout)
	waitFor(r.t, name+" to finish", timeout+time.Minute, func() bool {
		r.must(r.c.Get(context.Background(), client.ObjectKeyFromObject(op), op))
		if !op.Status.Phase.IsFinal() && midway != nil {
			midway()
		}
		return op.Status.Phase.IsFinal()
	})
	r.t.Logf("%s: %s after %s: %s", name, op.Status.Phase, time.Since(start).Round(time.Second), op.Status.Message)
	for _, c := range op.Status.Conditions {
		r.t.Logf("  %-15s %-7s %-15s %s %s", c.Type, c.Status, c.Reason, c.LastTransitionTime.Format(time.TimeOnly), firstLine(c.Message))
	}
	if op.Status.Phase != want {
		r.t.Fatalf("%s: phase %s, want %s", name, op.Status.Phase, want)
	}
	return op
}

// startRepave creates a repave Operation of the rig's Server and profile.
func (r *faultRig) startRepave(name string, timeout time.Duration) *stargatev1.Operation {
	r.t.Helper()
	op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: r.server},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "hello"}, Timeout: &metav1.Duration{Duration: timeout}}}
	r.must(r.c.Create(context.Background(), op))
	return op
}

// TestMachineFaultsWithQEMU: first, network faults fail a repave (networkFaultsRepave). Then a
// Hang stops the VM (QMP stop, seen paused) for its duration and the repave still succeeds (its guest, with the network faults gone, reaches the
// API server), its timeline showing the gap; a skewed clock and a throttled disk are on
// QEMU's command line, the skew in the guest's own clock too. Then a PowerLoss once cloud-init runs
// kills QEMU, and the repave fails as for any VM that dies while booting. Last, a KernelCrash panics
// the guest's kernel, and the repave fails at once with the panic line (KernelPanic). Disk write
// errors are TestFaultScenarioWithQEMU's, the rehearsal over six Servers.
func TestMachineFaultsWithQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs under TCG (minutes); skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	r := newFaultRig(t, "sgmach-br0", "mach-1")
	networkGone := networkFaultsRepave(t, r) // netfaults_vm_test.go: the first repave, failed
	const hang, skew = 20 * time.Second, 30 * time.Minute
	fi := r.inject("machine", stargatev1.Fault{Name: "hang", Type: stargatev1.FaultHang, At: stargatev1.ConditionVMRunning,
		Duration: &metav1.Duration{Duration: hang}},
		stargatev1.Fault{Name: "skew", Type: stargatev1.FaultClockSkew, At: stargatev1.ConditionVMRunning, Duration: &metav1.Duration{Duration: skew}},
		stargatev1.Fault{Name: "slow", Type: stargatev1.FaultDiskSlow, At: stargatev1.ConditionVMRunning, BytesPerSecond: ptr.To[int64](50 << 20)})

	qmp, err := qemu.QMPSocketPath(filepath.Join(r.h.cfg.WorkDir, filenames.RunDir), r.vmDir())
	r.must(err)
	var paused bool
	var cmdline string
	op := r.repave("hung", 12*time.Minute, stargatev1.OperationSucceeded, func() {
		if _, err := os.Stat(filepath.Join(r.vmDir(), filenames.HangFile)); err == nil && !paused {
			state, err := qemu.VMs{}.RunState(qmp)
			t.Logf("QMP query-status during the hang: %q %v", state, err)
			paused = state == "paused"
			cmdline = qemuCmdline(t, r.vmDir())
		}
	})
	networkGone() // the network faults' FaultInjection deleted, this repave reached the API server
	if !paused {
		t.Error("the VM was never seen paused during its hang")
	}
	for _, want := range []string{"throttling.bps-total=52428800", "-rtc base="} {
		if !strings.Contains(cmdline, want) {
			t.Errorf("QEMU's command line lacks %q: %s", want, cmdline)
		}
	}
	if _, err := os.Stat(filepath.Join(r.vmDir(), filenames.HangFile)); !os.IsNotExist(err) {
		t.Errorf("the hang is still recorded after the repave: %v", err)
	}
	// firmware-and-loader is the guest's kernel start (its clock, skewed) less QEMU's start (the
	// host's): the hang and the skew are both in it.
	var firmware time.Duration
	for _, s := range op.Status.Timeline {
		t.Logf("  timeline %-20s %s", s.Name, s.Duration.Duration)
		if s.Name == "firmware-and-loader" {
			firmware = s.Duration.Duration
		}
	}
	if firmware < skew+hang {
		t.Errorf("firmware-and-loader %s, want at least the skew and the hang (%s)", firmware, skew+hang)
	}

	r.must(r.c.Delete(context.Background(), fi))
	r.inject("unplug", stargatev1.Fault{Name: "power", Type: stargatev1.FaultPowerLoss, At: stargatev1.ConditionGuestReady})
	op = r.repave("unplugged", 12*time.Minute, stargatev1.OperationFailed, nil)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionVMRunning); c == nil || c.Reason != "VMExited" {
		t.Errorf("VMRunning after the power loss: %+v", c)
	}
	if n := countQEMU(t, r.h.cfg.WorkDir); n != 0 {
		t.Errorf("%d QEMU processes after the power loss", n)
	}

	// A kernel crash as cloud-init's final stage starts: a real panic, seen on the console, and the
	// repave fails at once with it (KernelPanic), not at its timeout.
	r.inject("crash", stargatev1.Fault{Name: "panic", Type: stargatev1.FaultKernelCrash, At: stargatev1.ConditionGuestReady})
	op = r.repave("panicked", 12*time.Minute, stargatev1.OperationFailed, nil)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionGuestReady)
	if c == nil || c.Reason != "KernelPanic" || !strings.Contains(c.Message, "Kernel panic - not syncing: sysrq triggered crash") {
		t.Errorf("GuestReady after the kernel crash: %+v", c)
	}
	if !meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionVMRunning) {
		t.Error("VMRunning is not True after the kernel crash: the VM ran, its guest panicked")
	}
}
