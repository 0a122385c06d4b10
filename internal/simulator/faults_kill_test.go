package simulator_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
)

// TestKill9WithActiveFaults: the real simulator binary is killed with SIGKILL while a VM has
// injected faults in force — a partition and no DNS at its tap, a throttled disk in its QEMU — and
// its Server is deleted while it is down. Started again, it releases the VM, and nothing of the
// faults is left: no fault table, no tap, no QEMU, no scratch download. Only QEMU is started; the
// guest need not boot.
func TestKill9WithActiveFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU; skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	image := guestImage(t)
	testreq.Command(t, "nft", "apt-get install -y nftables")
	rig := newBinaryRig(t)
	tmp, simBin, kubeconfig := rig.tmp, rig.simBin, rig.kubeconfig
	c, ctx := rig.env.Client, context.Background()
	must := mustFor(t)
	work := filepath.Join(tmp, "work")
	flags := []string{"--kubeconfig", kubeconfig, "--work-dir", work, "--bridge", "sgk9-br0", "--gateway", "192.168.122.1/24",
		"--no-nat", "--accel", "tcg", "--image-dir", filepath.Dir(image), "--host-id", "kill9-faults",
		"--metrics-bind-address", "0", "--health-probe-bind-address", "0", "--poll-interval", "1s"}
	sim := &simProcess{t: t, bin: simBin, args: flags, path: os.Getenv("PATH"), logFile: filepath.Join(tmp, "simulator.log")}
	t.Cleanup(func() {
		sim.kill()
		if out, err := exec.Command(simBin, append([]string{"--teardown"}, flags...)...).CombinedOutput(); err != nil {
			t.Errorf("simulator --teardown: %v\n%s", err, out)
		}
		if t.Failed() {
			log, _ := os.ReadFile(sim.logFile)
			t.Logf("simulator log:\n%s", tail(string(log), 60))
		}
	})

	const kns = "kill9"
	mem, disk := resourceQ("1Gi"), resourceQ("4Gi")
	must(c.Create(ctx, testenv.Namespace(kns)))
	must(c.Create(ctx, testenv.Namespace("stargate-system"))) // the host Lease's (--lease-namespace)
	server := &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "s1", Namespace: kns},
		Spec: stargatev1.ServerSpec{CPUs: 1, Memory: &mem, Disk: &disk}}
	must(c.Create(ctx, server))
	must(c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: kns},
		Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image}, CloudInit: "#cloud-config\n"}}))
	one := ptr.To[int32](1)
	must(c.Create(ctx, &stargatev1.FaultInjection{ObjectMeta: metav1.ObjectMeta{Name: "storm", Namespace: kns},
		Spec: stargatev1.FaultInjectionSpec{Faults: []stargatev1.Fault{
			{Name: "cut", Type: stargatev1.FaultNetworkPartition, At: stargatev1.ConditionVMRunning, FirstN: one, Duration: &metav1.Duration{Duration: time.Hour}},
			{Name: "dns", Type: stargatev1.FaultNoDNS, At: stargatev1.ConditionVMRunning, FirstN: one},
			{Name: "slow", Type: stargatev1.FaultDiskSlow, At: stargatev1.ConditionVMRunning, FirstN: one, BytesPerSecond: ptr.To[int64](20 << 20)},
		}}}))
	sim.start()
	waitFor(t, "the FaultInjection to be Ready on the host", time.Minute, func() bool {
		var fi stargatev1.FaultInjection
		must(c.Get(ctx, client.ObjectKey{Namespace: kns, Name: "storm"}, &fi))
		return len(fi.Status.Hosts) == 1 && meta.IsStatusConditionTrue(fi.Status.Hosts[0].Conditions, stargatev1.ConditionReady)
	})
	must(c.Create(ctx, &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "r1", Namespace: kns}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: "s1"},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "hello"}}}))
	tap := hostnet.TapName(kns + "/s1")
	waitFor(t, "the faults in force", 5*time.Minute, func() bool {
		table := nftTable(t, tap)
		return strings.Contains(table, "NetworkPartition") && strings.Contains(table, "NoDNS")
	})
	vmDir := simulatorPaths(t, simBin, work, kns, "s1")["vm_dir"]
	if cmd := qemuCmdline(t, vmDir); !strings.Contains(cmd, "throttling.bps-total=20971520") {
		t.Errorf("the throttled disk is not on QEMU's command line: %s", cmd)
	}

	sim.kill()
	must(c.Delete(ctx, server)) // its finalizer keeps it until the simulator is back
	if table := nftTable(t, tap); table == "" {
		t.Fatal("the faults went with the killed process: they belong to the VM, which still runs")
	}
	sim.start()
	waitFor(t, "the Server to be released and gone", 3*time.Minute, func() bool {
		return apierrors.IsNotFound(c.Get(ctx, client.ObjectKeyFromObject(server), &stargatev1.Server{}))
	})
	if taps, err := hostnet.FaultTaps(); err != nil || len(taps) != 0 {
		t.Errorf("fault tables after the restart: %v %v", taps, err)
	}
	if taps, err := hostnet.Taps(); err != nil || len(taps) != 0 {
		t.Errorf("taps after the restart: %v %v", taps, err)
	}
	if n := countQEMU(t, work); n != 0 {
		t.Errorf("%d QEMU processes after the restart", n)
	}
	if _, err := os.Stat(filepath.Join(work, filenames.FaultFetchesDir)); !os.IsNotExist(err) {
		t.Errorf("scratch downloads after the restart: %v", err)
	}
}

// binaryRig is the real simulator binary built for a test, with a real API server and a
// kubeconfig for it, in a temp directory of the test's: what the tests that kill or run two
// simulator processes start from.
type binaryRig struct {
	env         *testenv.Env
	tmp, simBin string
	kubeconfig  string
}

func newBinaryRig(t testing.TB) *binaryRig {
	t.Helper()
	goBin := testreq.Command(t, "go", "install Go")
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	r := &binaryRig{env: env, tmp: t.TempDir()}
	r.simBin, r.kubeconfig = filepath.Join(r.tmp, "simulator"), filepath.Join(r.tmp, "kubeconfig")
	build := exec.Command(goBin, "build", "-o", r.simBin, "./cmd/simulator")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the simulator: %v\n%s", err, out)
	}
	if err := env.WriteKubeconfig(r.kubeconfig, ""); err != nil {
		t.Fatal(err)
	}
	return r
}
