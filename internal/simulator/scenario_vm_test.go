package simulator_test

import (
	"context"
	"fmt"
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
	"stargate.io/stargate/internal/faults"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
)

// TestFaultScenarioWithQEMU is the rehearsal of issue #19 with real guests: a FaultInjection
// selects six Servers by label and gives each repave a disk write error with probability 0.5.
// Each repave fails or succeeds as its draw says (the draw is the controller's, from the two
// objects' UIDs, so the test knows it). The failed ones fail as any guest whose disk stops taking
// writes does (QEMU blkdebug): the kernel logs the I/O errors, the root file system stays
// read-only, every stage of cloud-init crashes on it, and the repave fails at once (not at its
// spec.timeout) with CloudInitCrashed, quoting the exception and the kernel's error lines; the
// FaultInjection counts them. With the FaultInjection deleted, the failed Servers are repaved again,
// as an operator rehearsing recovery would, and all succeed on a clean disk (no blkdebug rules or
// option left): every Server ends Ready.
// It is also the simulator's test of DiskWriteError with real guests (TestMachineFaultsWithQEMU has
// the other machine faults). The statistics over many Servers are
// TestFaultScenarioHalfTheRepavesFailThenAllSucceed's, on the mock datacenter.
func TestFaultScenarioWithQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs under TCG (minutes); skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	const servers = 6
	image := guestImage(t)
	h := newSimHarness(t, "sgscen-br0")
	ctx := context.Background()
	c := h.env.Client
	must := mustFor(t)
	must(c.Create(ctx, testenv.Namespace(ns)))
	mem, disk := resourceQ("1Gi"), resourceQ("4Gi")
	for i := range servers {
		must(c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%d", i), Namespace: ns,
			Labels: map[string]string{"rehearsal": "disks"}}, Spec: stargatev1.ServerSpec{CPUs: 1, Memory: &mem, Disk: &disk}}))
	}
	must(c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: ns},
		Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image},
			CloudInit: "#cloud-config\nruncmd:\n  - [sh, -c, 'echo STARGATE-HELLO > /dev/ttyS0']\n"}}))
	fi := &stargatev1.FaultInjection{ObjectMeta: metav1.ObjectMeta{Name: "half-the-disks", Namespace: ns},
		Spec: stargatev1.FaultInjectionSpec{Selector: metav1.LabelSelector{MatchLabels: map[string]string{"rehearsal": "disks"}},
			Faults: []stargatev1.Fault{{Name: "disk", Type: stargatev1.FaultDiskWriteError, At: stargatev1.ConditionVMRunning,
				Probability: ptr.To("0.5"), AfterOperations: ptr.To[int64](0)}}}}
	must(c.Create(ctx, fi))
	waitInjecting(t, c, fi)

	vmDir := func(server string) string { return h.p.VMDir(client.ObjectKey{Namespace: ns, Name: server}) }
	repaveAll := func(round string, servers []string) map[string]*stargatev1.Operation {
		t.Helper()
		ops := map[string]*stargatev1.Operation{}
		for _, s := range servers {
			op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: round + "-" + s, Namespace: ns}, Spec: stargatev1.OperationSpec{
				Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: s},
				ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "hello"}, Timeout: &metav1.Duration{Duration: 10 * time.Minute}}}
			must(c.Create(ctx, op))
			ops[s] = op
		}
		for _, s := range servers {
			op := ops[s]
			waitFor(t, op.Name+" to finish", 12*time.Minute, func() bool {
				must(c.Get(ctx, client.ObjectKeyFromObject(op), op))
				return op.Status.Phase.IsFinal()
			})
			t.Logf("%s: %s after %s: %s", op.Name, op.Status.Phase, op.Status.CompletionTime.Sub(op.CreationTimestamp.Time).Round(time.Second),
				firstLine(op.Status.Message))
		}
		return ops
	}

	all := make([]string, servers)
	for i := range all {
		all[i] = fmt.Sprintf("s%d", i)
	}
	var failed []string
	check := func(s string, op *stargatev1.Operation) {
		t.Helper()
		if !faults.Draw(fi.UID, op.UID, "disk", 0.5) {
			if op.Status.Phase != stargatev1.OperationSucceeded || len(op.Status.Faults) != 0 {
				t.Errorf("%s did not draw the disk error: phase %s, faults %+v; want Succeeded without faults", op.Name, op.Status.Phase, op.Status.Faults)
			}
			return
		}
		failed = append(failed, s)
		if op.Status.Phase != stargatev1.OperationFailed {
			t.Errorf("%s drew the disk error: phase %s, want Failed", op.Name, op.Status.Phase)
		}
		if problem := crashedOnReadOnlyRoot(op); problem != "" {
			t.Errorf("%s drew the disk error: %s", op.Name, problem)
		}
		if len(op.Status.Faults) != 1 || op.Status.Faults[0].Fault.Name != "disk" {
			t.Errorf("%s: faults recorded %+v, want the disk error", op.Name, op.Status.Faults)
		}
		console, err := os.ReadFile(filepath.Join(vmDir(s), filenames.ConsoleFile))
		must(err)
		if !strings.Contains(string(console), "I/O error, dev vda") || !strings.Contains(string(console), "(WRITE)") {
			t.Errorf("%s: the guest's kernel logged no write I/O error on its disk:\n%s", op.Name, tail(string(console), 30))
		}
		if _, err := os.Stat(filepath.Join(vmDir(s), filenames.BlkdebugFile)); err != nil {
			t.Errorf("%s: blkdebug rules: %v", op.Name, err)
		}
	}
	for s, op := range repaveAll("r1", all) {
		check(s, op)
	}
	// One in 64 times no repave draws the error; s0 is then repaved until one does (a new
	// Operation, a new draw), so that what a failed repave shows is always checked here.
	for i := 0; len(failed) == 0 && i < 8; i++ {
		check("s0", repaveAll(fmt.Sprintf("r1-again%d", i), []string{"s0"})["s0"])
	}
	if len(failed) == 0 {
		t.Fatal("no repave drew the disk error in 14 draws with probability 0.5")
	}
	t.Logf("%d of %d repaves drew the disk error: %v", len(failed), servers, failed)
	waitFor(t, "the FaultInjection to count its injections", time.Minute, func() bool {
		must(c.Get(ctx, client.ObjectKeyFromObject(fi), fi))
		return len(fi.Status.Hosts) == 1 && fi.Status.Hosts[0].Injected == int64(len(failed))
	})

	// Recovery: the injection deleted, the failed Servers repaved again.
	must(c.Delete(ctx, fi))
	waitFor(t, "the FaultInjection to be gone", time.Minute, func() bool {
		return c.Get(ctx, client.ObjectKeyFromObject(fi), &stargatev1.FaultInjection{}) != nil
	})
	for s, op := range repaveAll("r2", failed) {
		if op.Status.Phase != stargatev1.OperationSucceeded || len(op.Status.Faults) != 0 {
			t.Errorf("%s after the FaultInjection was deleted: phase %s (%s), faults %+v; want Succeeded without faults",
				op.Name, op.Status.Phase, op.Status.Message, op.Status.Faults)
		}
		if _, err := os.Stat(filepath.Join(vmDir(s), filenames.BlkdebugFile)); !os.IsNotExist(err) {
			t.Errorf("%s: blkdebug rules after the FaultInjection was deleted: %v", op.Name, err)
		}
		if cmd := qemuCmdline(t, vmDir(s)); strings.Contains(cmd, "blkdebug") {
			t.Errorf("%s: the repave after the FaultInjection was deleted has blkdebug: %s", op.Name, cmd)
		}
	}
	for _, s := range all {
		waitFor(t, s+" to be Ready", time.Minute, func() bool {
			var srv stargatev1.Server
			must(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: s}, &srv))
			return srv.Status.State == stargatev1.ServerReady
		})
	}
}

// crashedOnReadOnlyRoot says what is wrong with the GuestReady condition of a repave whose disk
// failed every write from power-on ("" if nothing): it must be CloudInitCrashed, quoting the
// exception (the root file system stayed read-only) and the kernel's I/O errors, and the lines
// said to be the kernel's must not be cloud-init's own.
func crashedOnReadOnlyRoot(op *stargatev1.Operation) string {
	guest := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionGuestReady)
	const kernelSaid = "the guest's kernel reported: "
	if guest == nil || guest.Reason != "CloudInitCrashed" || !strings.Contains(guest.Message, "Read-only file system") ||
		!strings.Contains(guest.Message, kernelSaid) || !strings.Contains(guest.Message, "I/O error") {
		return fmt.Sprintf("GuestReady %+v; want CloudInitCrashed with the exception and the kernel's I/O errors", guest)
	}
	_, kernel, _ := strings.Cut(guest.Message, kernelSaid)
	if kernel, _, _ = strings.Cut(kernel, "\n"); strings.Contains(kernel, cloudinit.StatusMarker) || strings.Contains(kernel, "cloud-init[") {
		return "the kernel's lines quote cloud-init's own: " + kernel
	}
	return ""
}
