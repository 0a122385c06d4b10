package controller_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
)

// chaos labels the Servers the tests' FaultInjections select.
var chaos = map[string]string{"chaos": "yes"}

func labelled(name string, l map[string]string) *stargatev1.Server {
	s := server(name)
	s.Labels = l
	return s
}

func faultInjection(name string, faults ...stargatev1.Fault) *stargatev1.FaultInjection {
	return &stargatev1.FaultInjection{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: stargatev1.FaultInjectionSpec{Selector: metav1.LabelSelector{MatchLabels: chaos}, Faults: faults}}
}

// diskWriteError makes the guest's cloud-init fail with an I/O error, with probability p.
func diskWriteError(name, p string) stargatev1.Fault {
	return stargatev1.Fault{Name: name, Type: stargatev1.FaultDiskWriteError, At: stargatev1.ConditionGuestReady,
		Probability: ptr.To(p), AfterOperations: ptr.To[int64](0)}
}

func (h *harness) faultInjection(ns, name string) *stargatev1.FaultInjection {
	h.t.Helper()
	fi := &stargatev1.FaultInjection{}
	if err := env.Client.Get(context.Background(), objectKey(ns, name), fi); err != nil {
		h.t.Fatalf("getting fault injection %s: %v", name, err)
	}
	return fi
}

// hostEntry waits until host's entry in the FaultInjection's status satisfies ok.
func (h *harness) hostEntry(name, host string, ok func(stargatev1.FaultInjectionHostStatus) bool) stargatev1.FaultInjectionHostStatus {
	h.t.Helper()
	var entry stargatev1.FaultInjectionHostStatus
	eventually(h.t, 20*time.Second, func() (bool, string) {
		fi := h.faultInjection(h.ns, name)
		for _, e := range fi.Status.Hosts {
			if e.Host == host {
				entry = e
				return ok(e), fmt.Sprintf("%+v", e)
			}
		}
		return false, fmt.Sprintf("no entry of host %s in %+v", host, fi.Status.Hosts)
	})
	return entry
}

func readyReason(e stargatev1.FaultInjectionHostStatus) string {
	if c := meta.FindStatusCondition(e.Conditions, stargatev1.ConditionReady); c != nil {
		return c.Reason
	}
	return ""
}

func TestFaultStrikesOnlySelectedServersOfItsNamespaceAndHost(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{HostID: "a", ServerSelector: labels.SelectorFromSet(labels.Set{"dc": "a"})}, "other")
	other := h.extra[0]
	// Host b shares the namespace, manages dc=b and has fault injection turned off.
	cancel, done := startManager(t, env.Config, h.namespaces(), controller.Options{HostID: "b", PollInterval: 50 * time.Millisecond,
		ServerSelector: labels.SelectorFromSet(labels.Set{"dc": "b"}), DisableFaultInjection: true}, h.provider(), prometheus.NewRegistry())
	t.Cleanup(func() { cancel(); <-done })

	h.create(faultInjection("disk", diskWriteError("write", "1")))
	h.create(labelled("target", map[string]string{"chaos": "yes", "dc": "a"}))
	h.create(labelled("unlabelled", map[string]string{"dc": "a"}))
	h.create(labelled("of-host-b", map[string]string{"chaos": "yes", "dc": "b"}))
	h.createIn(other, labelled("elsewhere", map[string]string{"chaos": "yes", "dc": "a"}))
	for _, ns := range []string{h.ns, other} {
		h.createIn(ns, profile("p", okUserData))
	}
	h.create(repave("op-target", "target", "p"))
	h.create(repave("op-unlabelled", "unlabelled", "p"))
	h.create(repave("op-b", "of-host-b", "p"))
	h.createIn(other, repave("op-elsewhere", "elsewhere", "p"))

	failed := h.waitPhase("op-target", stargatev1.OperationFailed, 30*time.Second)
	if c := meta.FindStatusCondition(failed.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "CloudInitFailed" ||
		!strings.Contains(failed.Status.Message, "I/O error") {
		t.Errorf("the selected Server's repave must fail as the datacenter reports the disk error: %+v, message %q", c, failed.Status.Message)
	}
	if len(failed.Status.Faults) != 1 || failed.Status.Faults[0].Host != "a" || failed.Status.Faults[0].FaultInjection != "disk" {
		t.Errorf("want one recorded fault of host a: %+v", failed.Status.Faults)
	}
	for _, name := range []string{"op-unlabelled", "op-b"} {
		if op := h.waitPhase(name, stargatev1.OperationSucceeded, 30*time.Second); len(op.Status.Faults) != 0 {
			t.Errorf("%s has faults recorded: %+v", name, op.Status.Faults)
		}
	}
	eventually(t, 30*time.Second, func() (bool, string) {
		op := &stargatev1.Operation{}
		if err := env.Client.Get(context.Background(), objectKey(other, "op-elsewhere"), op); err != nil {
			return false, err.Error()
		}
		return op.Status.Phase == stargatev1.OperationSucceeded && len(op.Status.Faults) == 0, fmt.Sprintf("%+v", op.Status)
	})

	entry := h.hostEntry("disk", "a", func(e stargatev1.FaultInjectionHostStatus) bool { return e.Injected == 1 })
	if len(entry.Faults) != 1 || entry.Faults[0].LastServer != "target" || entry.Faults[0].LastOperation != "op-target" ||
		readyReason(entry) != controller.ReasonFaultsActive {
		t.Errorf("host a's account: %+v", entry)
	}
	h.hostEntry("disk", "b", func(e stargatev1.FaultInjectionHostStatus) bool {
		return e.Injected == 0 && readyReason(e) == controller.ReasonFaultInjectionDisabled
	})
	eventually(t, 10*time.Second, func() (bool, string) {
		return hasEvent(h.events("op-target"), "FaultInjected") && hasEvent(h.events("target"), "FaultInjected"), "no FaultInjected events"
	})
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP stargate_faults_injected_total Faults FaultInjections had injected into Operations and BMCs, by fault type.
# TYPE stargate_faults_injected_total counter
stargate_faults_injected_total{type="DiskWriteError"} 1
`), "stargate_faults_injected_total"); err != nil {
		t.Error(err)
	}
}

func TestFaultProbabilityZeroNeverStrikesAndFirstNStrikesN(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.create(faultInjection("mixed",
		stargatev1.Fault{Name: "never", Type: stargatev1.FaultPowerLoss, At: stargatev1.ConditionImageReady, Probability: ptr.To("0")},
		stargatev1.Fault{Name: "first-two", Type: stargatev1.FaultDiskWriteError, At: stargatev1.ConditionGuestReady,
			FirstN: ptr.To[int32](2), AfterOperations: ptr.To[int64](10)}))
	h.create(profile("p", okUserData))
	for i := range 4 {
		h.create(labelled(fmt.Sprintf("s%d", i), chaos))
		h.create(repave(fmt.Sprintf("op%d", i), fmt.Sprintf("s%d", i), "p"))
	}
	failed := 0
	for i := range 4 {
		eventually(t, 30*time.Second, func() (bool, string) {
			op := h.op(fmt.Sprintf("op%d", i))
			return op.Status.Phase.IsFinal(), string(op.Status.Phase)
		})
		op := h.op(fmt.Sprintf("op%d", i))
		if op.Status.Phase == stargatev1.OperationFailed {
			failed++
			if len(op.Status.Faults) != 1 || op.Status.Faults[0].Fault.Name != "first-two" {
				t.Errorf("%s failed with faults %+v", op.Name, op.Status.Faults)
			}
		} else if len(op.Status.Faults) != 0 {
			t.Errorf("%s succeeded yet has faults recorded (probability 0 must never strike): %+v", op.Name, op.Status.Faults)
		}
	}
	if failed != 2 {
		t.Errorf("firstN 2 made %d of 4 repaves fail", failed)
	}
	entry := h.hostEntry("mixed", controller.DefaultHostID, func(e stargatev1.FaultInjectionHostStatus) bool { return e.Injected == 2 })
	if len(entry.Faults) != 1 || entry.Faults[0].Name != "first-two" || entry.Faults[0].Injected != 2 {
		t.Errorf("want only first-two counted, twice: %+v", entry.Faults)
	}
}

func TestFaultIsRecordedOncePerOperationAcrossRestarts(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.create(faultInjection("hang", stargatev1.Fault{Name: "stall", Type: stargatev1.FaultHang, At: stargatev1.ConditionCloudInitReady,
		Probability: ptr.To("1"), Duration: &metav1.Duration{Duration: 2 * time.Second}}))
	h.create(labelled("s1", chaos))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	eventually(t, 20*time.Second, func() (bool, string) {
		op := h.op("op1")
		return len(op.Status.Faults) == 1 && meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionCloudInitReady) != nil,
			fmt.Sprintf("%+v", op.Status)
	})
	h.stop()
	h.start(h.provider())
	op := h.waitPhase("op1", stargatev1.OperationSucceeded, 30*time.Second)
	if len(op.Status.Faults) != 1 {
		t.Errorf("a restart recorded the fault again: %+v", op.Status.Faults)
	}
	if n := h.dc.Repaves(h.ns, "s1"); n != 1 {
		t.Errorf("%d installations, want 1", n)
	}
	h.hostEntry("hang", controller.DefaultHostID, func(e stargatev1.FaultInjectionHostStatus) bool { return e.Injected == 1 })
	// The restarted controller counted nothing again.
	if n, err := testutil.GatherAndCount(h.reg, "stargate_faults_injected_total"); err != nil || n != 0 {
		t.Errorf("the restarted controller's fault metric has %d series (%v), want none", n, err)
	}
}

func TestUnsupportedFaultIsReportedNotIgnored(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.create(faultInjection("net",
		stargatev1.Fault{Name: "loss", Type: stargatev1.FaultNetworkLoss, At: stargatev1.ConditionNetworkReady, Probability: ptr.To("1"), Percent: ptr.To[int32](30)},
		stargatev1.Fault{Name: "kubelet", Type: stargatev1.FaultKubeletStops, At: stargatev1.FaultAtRunning, Probability: ptr.To("1")}))
	entry := h.hostEntry("net", controller.DefaultHostID, func(e stargatev1.FaultInjectionHostStatus) bool {
		return readyReason(e) == controller.ReasonFaultsUnsupported
	})
	msg := meta.FindStatusCondition(entry.Conditions, stargatev1.ConditionReady).Message
	if !strings.Contains(msg, "loss (NetworkLoss at NetworkReady)") || !strings.Contains(msg, "kubelet (KubeletStops at Running") {
		t.Errorf("the message must name each fault this host cannot inject: %q", msg)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		return hasEvent(h.events("net"), controller.ReasonFaultsUnsupported), "no FaultsUnsupported event"
	})
	h.create(labelled("s1", chaos))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	if op := h.waitPhase("op1", stargatev1.OperationSucceeded, 30*time.Second); len(op.Status.Faults) != 0 {
		t.Errorf("unsupported faults were recorded: %+v", op.Status.Faults)
	}
}

// TestFaultScenarioHalfTheRepavesFailThenAllSucceed is the rehearsal: a disk error with
// probability 0.5 over a dozen Servers fails the repaves its draw picks, with the datacenter's
// reason; with the FaultInjection deleted, a second round all succeed.
func TestFaultScenarioHalfTheRepavesFailThenAllSucceed(t *testing.T) {
	const servers = 12
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.create(faultInjection("half", diskWriteError("disk", "0.5")))
	h.create(profile("p", okUserData))
	for i := range servers {
		h.create(labelled(fmt.Sprintf("s%d", i), chaos))
		h.create(repave(fmt.Sprintf("r1-%d", i), fmt.Sprintf("s%d", i), "p"))
	}
	fi := h.faultInjection(h.ns, "half")
	failed := 0
	for i := range servers {
		name := fmt.Sprintf("r1-%d", i)
		eventually(t, 60*time.Second, func() (bool, string) { return h.op(name).Status.Phase.IsFinal(), name })
		op := h.op(name)
		want := controller.DrawFault(fi.UID, op.UID, "disk", 0.5)
		switch {
		case want && op.Status.Phase != stargatev1.OperationFailed, !want && op.Status.Phase != stargatev1.OperationSucceeded:
			t.Errorf("%s: drawn %v, phase %s (%s)", name, want, op.Status.Phase, op.Status.Message)
		case want:
			failed++
			if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionGuestReady); c == nil || c.Reason != "Failed" {
				t.Errorf("%s: GuestReady should have failed: %+v", name, c)
			}
			if !strings.Contains(op.Status.Message, "I/O error") {
				t.Errorf("%s: message %q does not carry the datacenter's I/O error", name, op.Status.Message)
			}
		}
	}
	t.Logf("%d of %d repaves drew the disk error", failed, servers)
	h.hostEntry("half", controller.DefaultHostID, func(e stargatev1.FaultInjectionHostStatus) bool { return e.Injected == int64(failed) })

	if err := env.Client.Delete(context.Background(), fi); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(fi), &stargatev1.FaultInjection{})
		return err != nil, "the FaultInjection is still there"
	})
	for i := range servers {
		h.create(repave(fmt.Sprintf("r2-%d", i), fmt.Sprintf("s%d", i), "p"))
	}
	for i := range servers {
		if op := h.waitPhase(fmt.Sprintf("r2-%d", i), stargatev1.OperationSucceeded, 60*time.Second); len(op.Status.Faults) != 0 {
			t.Errorf("%s has faults after the FaultInjection was deleted: %+v", op.Name, op.Status.Faults)
		}
	}
}

// A power loss is handled as any power loss is: the repave fails with the datacenter's reason and
// the Server shows Error; once the fault's firstN is used up, the next repave succeeds.
func TestPowerLossFailsTheRepaveThenFirstNIsUsedUp(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.create(faultInjection("power", stargatev1.Fault{Name: "cut", Type: stargatev1.FaultPowerLoss, At: stargatev1.ConditionVMRunning,
		FirstN: ptr.To[int32](1)}))
	h.create(labelled("s1", chaos))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	op := h.waitPhase("op1", stargatev1.OperationFailed, 30*time.Second)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "PowerLost" {
		t.Errorf("want the datacenter's PowerLost: %+v", c)
	}
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionVMRunning); c == nil || c.Status == metav1.ConditionTrue {
		t.Errorf("VMRunning must not be True after the power loss: %+v", c)
	}
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.State == stargatev1.ServerError })
	h.create(repave("op2", "s1", "p"))
	if op := h.waitPhase("op2", stargatev1.OperationSucceeded, 30*time.Second); len(op.Status.Faults) != 0 {
		t.Errorf("firstN 1 struck again: %+v", op.Status.Faults)
	}
}

// nodeFaultsProvider is the mock datacenter, told to make node faults (at Running) as the
// simulator does; it keeps the faults each repave was handed.
type nodeFaultsProvider struct {
	*mockdc.Provider
	mu     sync.Mutex
	handed map[string][]stargatev1.Fault // by instance-id
}

func (p *nodeFaultsProvider) SupportsFault(t stargatev1.FaultType, at string) bool {
	if t == stargatev1.FaultKubeletStops || t == stargatev1.FaultNodeFlapping {
		return at == stargatev1.FaultAtRunning
	}
	return p.Provider.SupportsFault(t, at)
}

func (p *nodeFaultsProvider) Repave(ctx context.Context, req controller.RepaveRequest) (controller.RepaveStatus, error) {
	p.mu.Lock()
	p.handed[req.InstanceID] = req.Faults
	p.mu.Unlock()
	return p.Provider.Repave(ctx, req)
}

// A fault at Running that the provider makes (a node fault) is decided with the repave, as its
// step faults are: recorded on the Operation, handed to the provider with the repave, an Event;
// the FaultInjection is Ready on this host. The repave itself is not failed by it.
func TestRunningFaultsTheProviderMakesGoWithTheRepave(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.stop()
	p := &nodeFaultsProvider{Provider: h.provider().(*mockdc.Provider), handed: map[string][]stargatev1.Fault{}}
	h.start(p)
	h.create(faultInjection("nodes",
		stargatev1.Fault{Name: "kubelet", Type: stargatev1.FaultKubeletStops, At: stargatev1.FaultAtRunning, FirstN: ptr.To[int32](1)}))
	h.create(profile("p", okUserData))
	h.create(labelled("s0", chaos))
	h.create(repave("op0", "s0", "p"))
	eventually(t, 30*time.Second, func() (bool, string) {
		op := h.op("op0")
		return op.Status.Phase.IsFinal(), string(op.Status.Phase)
	})
	op := h.op("op0")
	if op.Status.Phase != stargatev1.OperationSucceeded {
		t.Fatalf("op0 %s: %s", op.Status.Phase, op.Status.Message)
	}
	if len(op.Status.Faults) != 1 || op.Status.Faults[0].Fault.Type != stargatev1.FaultKubeletStops {
		t.Errorf("op0 recorded faults %+v, want the KubeletStops", op.Status.Faults)
	}
	p.mu.Lock()
	for id, handed := range p.handed {
		if len(handed) != 1 || handed[0].Name != "kubelet" {
			t.Errorf("the provider was handed %+v with repave %s, want the KubeletStops", handed, id)
		}
	}
	if len(p.handed) != 1 {
		t.Errorf("the provider was asked for %d installations, want 1", len(p.handed))
	}
	p.mu.Unlock()
	h.hostEntry("nodes", controller.DefaultHostID, func(e stargatev1.FaultInjectionHostStatus) bool {
		return readyReason(e) == controller.ReasonFaultsActive && e.Injected == 1
	})
	eventually(t, 10*time.Second, func() (bool, string) {
		return hasEvent(h.events("op0"), "FaultInjected") && hasEvent(h.events("s0"), "FaultInjected"), "no FaultInjected event"
	})
}

// NodeReady, what node faults wait for, trusts only the Server's own Node: named after it, with
// its address as InternalIP. A tenant's Server named like someone else's Node never sees that
// Node as its own; a missing Node is simply not Ready.
func TestNodeReadyOnlyForTheServersOwnNode(t *testing.T) {
	ctx := context.Background()
	name := fmt.Sprintf("t%d-node-ready", nsCounter.Add(1))
	ours := netip.MustParseAddr("192.168.100.31")
	if ready, err := controller.NodeReady(ctx, env.Client, name, ours); err != nil || ready {
		t.Errorf("no Node yet: ready %v, err %v", ready, err)
	}
	registerNode(t, name, "192.168.100.32") // another machine's Node of that name
	if ready, err := controller.NodeReady(ctx, env.Client, name, ours); err != nil || ready {
		t.Errorf("a Ready Node at another address counted as the Server's: ready %v, err %v", ready, err)
	}
	other := fmt.Sprintf("t%d-node-ready", nsCounter.Add(1))
	registerNode(t, other, ours.String())
	if ready, err := controller.NodeReady(ctx, env.Client, other, ours); err != nil || !ready {
		t.Errorf("the Server's own Ready Node: ready %v, err %v", ready, err)
	}
}
