package simulator_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testenv"
)

// TestTwoSimulatorsHandOverWithQEMU runs two real simulator binaries, each with its own host id,
// bridge and work directory, against one API server, with overlapping selectors: one VM for the
// Server; its owner killed (SIGKILL, its VM lives on) shows HostLost within the grace period and
// the other host starts nothing; a duplicate of the live host refuses to start; an evacuation
// lets the other host repave it; the old host, restarted, destroys its stale VM: one VM in total.
// host-a runs in this test's network namespace, host-b in one of its own joined by a veth.
func TestTwoSimulatorsHandOverWithQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two VMs under TCG (minutes); skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return
	}
	netnstest.Require(t)
	image := guestImage(t)
	ctx := context.Background()
	rig := newBinaryRig(t)
	env, tmp, simBin, kubeconfig := rig.env, rig.tmp, rig.simBin, rig.kubeconfig
	c := env.Client
	must := mustFor(t)
	// host-b runs in a network namespace of its own, as on another machine (tap names derive from
	// the Server, so two hosts cannot share one namespace), joined to this one by a veth; it reaches
	// the API server (on this namespace's loopback) through a TCP relay on the veth's address.
	nsB := fmt.Sprintf("sgtwohosts-%d", os.Getpid())
	ipCmd := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ipCmd("netns", "add", nsB)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", nsB).Run() })
	ipCmd("link", "add", "sgtwo0", "type", "veth", "peer", "name", "sgtwo1")
	ipCmd("link", "set", "sgtwo1", "netns", nsB)
	ipCmd("addr", "add", "10.251.0.1/30", "dev", "sgtwo0")
	ipCmd("link", "set", "sgtwo0", "up")
	ipCmd("netns", "exec", nsB, "ip", "addr", "add", "10.251.0.2/30", "dev", "sgtwo1")
	ipCmd("netns", "exec", nsB, "ip", "link", "set", "sgtwo1", "up")
	ipCmd("netns", "exec", nsB, "ip", "link", "set", "lo", "up")
	api, err := url.Parse(env.Config.Host)
	must(err)
	relay := relayTo(t, "10.251.0.1:0", api.Host)
	kubeconfigB := filepath.Join(tmp, "kubeconfig-b")
	must(env.WriteKubeconfig(kubeconfigB, "https://"+relay))

	flags := func(id, bridge, gateway string) []string {
		return []string{"--kubeconfig", kubeconfig, "--work-dir", filepath.Join(tmp, id), "--bridge", bridge, "--gateway", gateway,
			"--no-nat", "--accel", "tcg", "--image-dir", filepath.Dir(image), "--host-id", id, "--server-selector", "dc=x",
			"--metrics-bind-address", "0", "--health-probe-bind-address", "0", "--poll-interval", "1s", "--boot-timeout", "8m",
			"--lease-renew-interval", "1s", "--host-grace-period", "6s", "--max-parallel", "1"}
	}
	hostA := flags("host-a", "sgha-br0", "192.168.123.1/24")
	hostB := append(flags("host-b", "sghb-br0", "192.168.124.1/24"), "--kubeconfig", kubeconfigB)
	a := &simProcess{t: t, bin: simBin, args: hostA, path: os.Getenv("PATH"), logFile: filepath.Join(tmp, "host-a.log")}
	// `ip netns exec` execs the simulator: the process killed is the simulator itself.
	b := &simProcess{t: t, bin: "ip", args: append([]string{"netns", "exec", nsB, simBin}, hostB...), path: os.Getenv("PATH"),
		logFile: filepath.Join(tmp, "host-b.log")}
	vms := func(id string) int { return len(pgrep("qemu-system-x86_64.*" + filepath.Join(tmp, id) + "/")) }
	t.Cleanup(func() {
		a.kill()
		b.kill()
		for _, cmd := range []*exec.Cmd{exec.Command(simBin, append([]string{"--teardown"}, hostA...)...),
			exec.Command("ip", append([]string{"netns", "exec", nsB, simBin, "--teardown"}, hostB...)...)} {
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("simulator --teardown: %v\n%s", err, out)
			}
		}
		if t.Failed() {
			for _, l := range []string{a.logFile, b.logFile} {
				if out, err := os.ReadFile(l); err == nil {
					t.Logf("--- %s (tail) ---\n%s", l, tail(string(out), 40))
				}
			}
		}
	})

	const kns = "twohosts"
	must(c.Create(ctx, testenv.Namespace(kns)))
	must(c.Create(ctx, testenv.Namespace("stargate-system")))
	mem, disk := resourceQ("1Gi"), resourceQ("4Gi")
	must(c.Create(ctx, &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "worker-1", Namespace: kns, Labels: map[string]string{"dc": "x"}},
		Spec: stargatev1.ServerSpec{CPUs: 1, Memory: &mem, Disk: &disk}}))
	must(c.Create(ctx, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: kns},
		Spec: stargatev1.ProvisioningProfileSpec{Image: stargatev1.ImageSource{URL: "file://" + image},
			CloudInit: "#cloud-config\nruncmd:\n  - [sh, -c, 'echo STARGATE-TWOHOSTS > /dev/ttyS0']\n"}}))
	server := func() *stargatev1.Server {
		s := &stargatev1.Server{}
		must(c.Get(ctx, client.ObjectKey{Namespace: kns, Name: "worker-1"}, s))
		return s
	}
	op := func(name string, typ stargatev1.OperationType) {
		o := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kns}, Spec: stargatev1.OperationSpec{
			Operation: typ, ServerRef: stargatev1.LocalObjectReference{Name: "worker-1"}}}
		if typ == stargatev1.OperationRepave {
			o.Spec.ProvisioningProfileRef = &stargatev1.LocalObjectReference{Name: "hello"}
		}
		must(c.Create(ctx, o))
	}
	phase := func(name string, want stargatev1.OperationPhase, timeout time.Duration) {
		t.Helper()
		var o stargatev1.Operation
		waitFor(t, fmt.Sprintf("operation %s %s", name, want), timeout, func() bool {
			must(c.Get(ctx, client.ObjectKey{Namespace: kns, Name: name}, &o))
			if o.Status.Phase.IsFinal() && o.Status.Phase != want {
				t.Fatalf("operation %s: %s: %s", name, o.Status.Phase, o.Status.Message)
			}
			return o.Status.Phase == want
		})
	}

	a.start()
	waitFor(t, "host-a to take the Server", time.Minute, func() bool { return server().Status.Host == "host-a" })
	b.start()
	op("repave-1", stargatev1.OperationRepave)
	phase("repave-1", stargatev1.OperationSucceeded, 12*time.Minute)
	if na, nb := vms("host-a"), vms("host-b"); na != 1 || nb != 0 {
		t.Fatalf("VMs on host-a %d, host-b %d: want the owner's one", na, nb)
	}

	// A duplicate of host-b (its own work directory, so only the Lease can refuse it).
	dupFlags := append(flags("host-b", "sghc-br0", "192.168.125.1/24"), "--work-dir", filepath.Join(tmp, "host-b-dup"))
	dupCtx, cancelDup := context.WithTimeout(ctx, time.Minute) // a duplicate that starts would run for ever
	defer cancelDup()
	dup := exec.CommandContext(dupCtx, simBin, dupFlags...)
	out, err := dup.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is renewed by host-b/") {
		t.Errorf("a duplicate host-b: %v\n%s", err, tail(string(out), 5))
	}

	a.kill() // for good: its VM lives on, as after a crash of the host's controller
	killed := time.Now()
	waitFor(t, "HostLost on the Server", time.Minute, func() bool {
		c := meta.FindStatusCondition(server().Status.Conditions, stargatev1.ConditionHostReachable)
		return c != nil && c.Reason == "HostLost"
	})
	t.Logf("HostLost %s after the kill", time.Since(killed).Round(time.Second))
	time.Sleep(5 * time.Second)
	if nb := vms("host-b"); nb != 0 || server().Status.Host != "host-a" {
		t.Fatalf("host-b took the lost host's Server: %d VMs, owner %q", nb, server().Status.Host)
	}

	op("evacuate-1", stargatev1.OperationEvacuate)
	phase("evacuate-1", stargatev1.OperationSucceeded, time.Minute)
	waitFor(t, "host-b to take the evacuated Server", time.Minute, func() bool { return server().Status.Host == "host-b" })
	op("repave-2", stargatev1.OperationRepave)
	phase("repave-2", stargatev1.OperationSucceeded, 12*time.Minute)

	a.start() // the old host returns: it fences its stale VM at startup
	waitFor(t, "host-a to destroy its stale VM", 2*time.Minute, func() bool { return vms("host-a") == 0 })
	if na, nb := vms("host-a"), vms("host-b"); na+nb != 1 || nb != 1 {
		t.Fatalf("VMs on host-a %d, host-b %d: want one in total, on host-b", na, nb)
	}
	if s := server(); s.Status.Host != "host-b" || s.Status.HostEpoch != 1 || s.Status.State != stargatev1.ServerReady {
		t.Fatalf("server after the hand-over: %+v", s.Status)
	}
}

// relayTo forwards TCP connections accepted on listen to target until the test ends; it returns
// the address it listens on.
func relayTo(t *testing.T, listen, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { _, _ = io.Copy(out, in) }()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	return l.Addr().String()
}
