package controller_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
	"stargate.io/stargate/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(logr.Discard())
	os.Exit(testenv.Main(m, &env))
}

var nsCounter atomic.Int32

// harness is one test's namespace, fake datacenter and controller.
type harness struct {
	t      testing.TB
	ns     string
	dc     *mockdc.Server
	dcURL  string
	reg    *prometheus.Registry
	opts   controller.Options
	cancel context.CancelFunc
	done   chan struct{}
	// extra namespaces the controller watches too (created per test).
	extra []string
	// cfg, when set, is the identity the controller runs as (default: the envtest admin).
	cfg *rest.Config
}

func newHarness(t testing.TB, stepDelay time.Duration, opts controller.Options, extraNamespaces ...string) *harness {
	t.Helper()
	ns := fmt.Sprintf("t%d-%s", nsCounter.Add(1), strings.ToLower(strings.ReplaceAll(t.Name(), "_", "-")))
	if len(ns) > 50 {
		ns = ns[:50]
	}
	ns = strings.Trim(strings.ReplaceAll(ns, "/", "-"), "-")
	if err := env.Client.Create(context.Background(), testenv.Namespace(ns)); err != nil {
		t.Fatal(err)
	}
	dc := mockdc.NewServer(mockdc.Config{StepDelay: stepDelay})
	srv := httptest.NewServer(dc)
	t.Cleanup(srv.Close)
	if opts.PollInterval == 0 {
		opts.PollInterval = 50 * time.Millisecond
	}
	h := &harness{t: t, ns: ns, dc: dc, dcURL: srv.URL, opts: opts}
	for _, e := range extraNamespaces {
		name := ns[:min(len(ns), 40)] + "-" + e
		if err := env.Client.Create(context.Background(), testenv.Namespace(name)); err != nil {
			t.Fatal(err)
		}
		h.extra = append(h.extra, name)
	}
	h.start(h.provider())
	t.Cleanup(h.stop)
	return h
}

// start runs a controller manager watching only this test's namespace (Nodes are cluster-wide).
func (h *harness) start(p controller.Provider) {
	h.t.Helper()
	cfg := env.Config
	if h.cfg != nil {
		cfg = h.cfg
	}
	h.reg = prometheus.NewRegistry()
	h.cancel, h.done = startManager(h.t, cfg, h.namespaces(), h.opts, p, h.reg)
}

// startManager runs the Stargate reconcilers in a manager of their own, watching namespaces (Nodes
// are cluster-wide), until cancel is called; done closes when it stopped.
func startManager(t testing.TB, cfg *rest.Config, namespaces map[string]cache.Config, opts controller.Options,
	p controller.Provider, reg *prometheus.Registry, extra ...manager.Runnable) (cancel context.CancelFunc, done chan struct{}) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 env.Scheme,
		Cache:                  cache.Options{DefaultNamespaces: namespaces},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// Several managers (tests, restarts) register the same controller names in one process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := controller.Setup(mgr, p, opts, controller.NewMetrics(reg)); err != nil {
		t.Fatal(err)
	}
	for _, r := range extra {
		if err := mgr.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	return cancel, done
}

// provider drives this test's mock datacenter.
func (h *harness) provider() controller.Provider { return &mockdc.Provider{BaseURL: h.dcURL} }

func (h *harness) namespaces() map[string]cache.Config {
	m := map[string]cache.Config{h.ns: {}}
	for _, e := range h.extra {
		m[e] = cache.Config{}
	}
	return m
}

func (h *harness) createIn(ns string, obj client.Object) {
	h.t.Helper()
	obj.SetNamespace(ns)
	if err := env.Client.Create(context.Background(), obj); err != nil {
		h.t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

func (h *harness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

func (h *harness) create(obj client.Object) {
	h.t.Helper()
	obj.SetNamespace(h.ns)
	if err := env.Client.Create(context.Background(), obj); err != nil {
		h.t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

func resourceQuantity(s string) resource.Quantity { return resource.MustParse(s) }

func server(name string) *stargatev1.Server {
	return &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func profile(name, userData string) *stargatev1.ProvisioningProfile {
	return &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: stargatev1.ProvisioningProfileSpec{CloudInit: userData, Image: stargatev1.ImageSource{URL: "file:///images/test.qcow2"}}}
}

func repave(name, serverName, profileName string) *stargatev1.Operation {
	return &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: serverName},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: profileName}}}
}

const okUserData = "#cloud-config\nruncmd: [[touch, /ok]]\n"

func (h *harness) op(name string) *stargatev1.Operation {
	h.t.Helper()
	op := &stargatev1.Operation{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: name}, op); err != nil {
		h.t.Fatalf("getting operation %s: %v", name, err)
	}
	return op
}

func (h *harness) server(name string) *stargatev1.Server {
	h.t.Helper()
	s := &stargatev1.Server{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: name}, s); err != nil {
		h.t.Fatalf("getting server %s: %v", name, err)
	}
	return s
}

// eventually polls cond until it holds or timeout passes; msg describes the last state seen.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(25 * time.Millisecond) // polling a real apiserver; not a timing assumption
	}
	t.Fatalf("condition not met within %s; last: %s", timeout, last)
}

// consistently checks that cond holds for the whole period.
func consistently(t testing.TB, period time.Duration, cond func() (bool, string)) {
	t.Helper()
	for deadline := time.Now().Add(period); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		if ok, msg := cond(); !ok {
			t.Fatal(msg)
		}
	}
}

func (h *harness) waitPhase(name string, phase stargatev1.OperationPhase, timeout time.Duration) *stargatev1.Operation {
	h.t.Helper()
	var op *stargatev1.Operation
	eventually(h.t, timeout, func() (bool, string) {
		op = h.op(name)
		return op.Status.Phase == phase, fmt.Sprintf("phase %q message %q", op.Status.Phase, op.Status.Message)
	})
	return op
}

// waitServer waits until the Server's status satisfies ok: the Server's reconciler records it from
// the Operation's, a moment later.
func (h *harness) waitServer(name string, timeout time.Duration, ok func(stargatev1.ServerStatus) bool) *stargatev1.Server {
	h.t.Helper()
	var s *stargatev1.Server
	eventually(h.t, timeout, func() (bool, string) {
		s = h.server(name)
		return ok(s.Status), fmt.Sprintf("server status %+v", s.Status)
	})
	return s
}

func (h *harness) events(regarding string) []eventsv1.Event {
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(h.ns)); err != nil {
		h.t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == regarding {
			out = append(out, e)
		}
	}
	return out
}

func hasEvent(evs []eventsv1.Event, reason string) bool {
	for _, e := range evs {
		if e.Reason == reason {
			return true
		}
	}
	return false
}

func TestRepaveSucceeds(t *testing.T) {
	h := newHarness(t, 50*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))

	op := h.waitPhase("op1", stargatev1.OperationSucceeded, 30*time.Second)
	for _, c := range append([]string{stargatev1.ConditionScheduled, stargatev1.ConditionSucceeded}, mockdc.Steps...) {
		if !meta.IsStatusConditionTrue(op.Status.Conditions, c) {
			t.Errorf("condition %s is not True: %+v", c, meta.FindStatusCondition(op.Status.Conditions, c))
		}
	}
	if op.Status.StartTime == nil || op.Status.CompletionTime == nil || op.Status.ObservedGeneration != op.Generation {
		t.Errorf("times/observedGeneration not set: %+v", op.Status)
	}
	s := h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool {
		return st.State == stargatev1.ServerReady && st.IPAddress != "" && st.LastOperation == "op1" &&
			st.ProvisioningProfile == "p" && st.InstanceID == controller.InstanceID(op)
	})
	if !meta.IsStatusConditionTrue(s.Status.Conditions, stargatev1.ConditionProvisioned) {
		t.Error("server condition Provisioned is not True")
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		evs := h.events("op1")
		return hasEvent(evs, "Started") && hasEvent(evs, "Succeeded"), fmt.Sprintf("%d events", len(evs))
	})
	// Metrics tell the same story.
	if n, err := testutil.GatherAndCount(h.reg, "stargate_repave_step_duration_seconds"); err != nil || n != len(mockdc.Steps) {
		t.Errorf("step duration series: %d (%v), want one per step", n, err)
	}
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP stargate_operations_finished_total Operations that finished, by phase.
# TYPE stargate_operations_finished_total counter
stargate_operations_finished_total{phase="Succeeded"} 1
# HELP stargate_operations_running Operations this controller is running now.
# TYPE stargate_operations_running gauge
stargate_operations_running 0
`), "stargate_operations_finished_total", "stargate_operations_running"); err != nil {
		t.Error(err)
	}
	// Valid profile is reported as such.
	eventually(t, 10*time.Second, func() (bool, string) {
		p := &stargatev1.ProvisioningProfile{}
		_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "p"}, p)
		return meta.IsStatusConditionTrue(p.Status.Conditions, stargatev1.ConditionValid), fmt.Sprint(p.Status)
	})
	// A finished Operation never runs again, even when touched.
	touched := op.DeepCopy()
	touched.Annotations = map[string]string{"touch": "1"}
	if err := env.Client.Patch(context.Background(), touched, client.MergeFrom(op)); err != nil {
		t.Fatal(err)
	}
	consistently(t, 500*time.Millisecond, func() (bool, string) {
		n := h.dc.Repaves(h.ns, "s1")
		return n == 1 && h.op("op1").Status.Phase == stargatev1.OperationSucceeded, fmt.Sprintf("server repaved %d times, want 1", n)
	})
}

func TestMissingServerWaitsThenFails(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond, controller.Options{ReferenceWait: 3 * time.Second})
	h.create(profile("p", okUserData))
	h.create(repave("op1", "ghost", "p"))
	eventually(t, 10*time.Second, func() (bool, string) {
		op := h.op("op1")
		c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionScheduled)
		return op.Status.Phase == stargatev1.OperationPending && c != nil && c.Reason == "ServerNotFound", fmt.Sprint(op.Status)
	})
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	if !strings.Contains(op.Status.Message, `Server "ghost" does not exist`) || !strings.Contains(op.Status.Message, "gave up") {
		t.Errorf("message %q", op.Status.Message)
	}
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Status != metav1.ConditionFalse || c.Reason != "ServerNotFound" {
		t.Errorf("Succeeded condition %+v", c)
	}
}

func TestProfileCreatedLateIsPickedUp(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond, controller.Options{ReferenceWait: time.Minute})
	h.create(server("s1"))
	h.create(repave("op1", "s1", "late"))
	eventually(t, 10*time.Second, func() (bool, string) {
		op := h.op("op1")
		return strings.Contains(op.Status.Message, `ProvisioningProfile "late" does not exist`), op.Status.Message
	})
	h.create(profile("late", okUserData))
	h.waitPhase("op1", stargatev1.OperationSucceeded, 30*time.Second)
}

// A profile whose user-data, or installation (the golden image part), is not what cloud-init can
// use fails the repave before the server is touched, and is marked invalid.
func TestInvalidProfileFailsBeforeTouchingTheServer(t *testing.T) {
	const brokenYAML = "#cloud-config\npackages: [curl\n"
	installation := profile("bad-install", okUserData)
	installation.Spec.Installation = &stargatev1.Installation{CloudInit: brokenYAML}
	for _, tc := range []struct {
		profile *stargatev1.ProvisioningProfile
		says    string
	}{
		{profile("bad", brokenYAML), "user-data: "},
		{installation, "spec.installation.cloudInit: "},
	} {
		t.Run(tc.profile.Name, func(t *testing.T) {
			h := newHarness(t, 10*time.Millisecond, controller.Options{})
			h.create(server("s1"))
			h.create(tc.profile)
			h.create(repave("op1", "s1", tc.profile.Name))
			op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
			if !strings.Contains(op.Status.Message, tc.says) || !strings.Contains(op.Status.Message, "not valid YAML") {
				t.Errorf("message %q does not explain the YAML error in %q", op.Status.Message, tc.says)
			}
			if n := h.dc.Repaves(h.ns, "s1"); n != 0 {
				t.Errorf("server repaved %d times, want 0", n)
			}
			eventually(t, 10*time.Second, func() (bool, string) {
				p := &stargatev1.ProvisioningProfile{}
				_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: tc.profile.Name}, p)
				c := meta.FindStatusCondition(p.Status.Conditions, stargatev1.ConditionValid)
				return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, tc.says), fmt.Sprint(p.Status)
			})
		})
	}
}

func TestInjectedFailureIsReported(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", "#cloud-config\n# "+mockdc.FailMarker+stargatev1.ConditionGuestReady+"\n"))
	h.create(repave("op1", "s1", "p"))
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionGuestReady); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("GuestReady condition %+v, want False", c)
	}
	if !meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionVMRunning) {
		t.Error("steps before the failure are not True")
	}
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool {
		return st.State == stargatev1.ServerError && strings.Contains(st.Message, "injected failure")
	})
	eventually(t, 10*time.Second, func() (bool, string) {
		return hasEvent(h.events("op1"), "Failed") && hasEvent(h.events("s1"), "ProvisioningFailed"), "events"
	})
	// One rule for every failure: the half-installed machine is powered off, and the message says so.
	if info := h.inspect("s1"); info.Running || !strings.Contains(op.Status.Message, "the server was powered off") {
		t.Errorf("after a failure the machine runs=%v, message %q", info.Running, op.Status.Message)
	}
}

func objectKey(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

// touchServer changes an annotation of the Server, which makes its reconciler look at it now.
func (h *harness) touchServer(name string) {
	h.t.Helper()
	cur := h.server(name)
	next := cur.DeepCopy()
	if next.Annotations == nil {
		next.Annotations = map[string]string{}
	}
	next.Annotations["test/touched"] = time.Now().Format(time.RFC3339Nano)
	if err := env.Client.Patch(context.Background(), next, client.MergeFrom(cur)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) inspect(server string) controller.ServerInfo {
	h.t.Helper()
	info, err := (&mockdc.Provider{BaseURL: h.dcURL}).Inspect(context.Background(), client.ObjectKey{Namespace: h.ns, Name: server})
	if err != nil {
		h.t.Fatal(err)
	}
	return info
}

func TestKeepFailedMachinesLeavesThemRunning(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond, controller.Options{KeepFailedMachines: true})
	h.create(server("s1"))
	h.create(profile("p", "#cloud-config\n# "+mockdc.FailMarker+stargatev1.ConditionGuestReady+"\n"))
	h.create(repave("op1", "s1", "p"))
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	if info := h.inspect("s1"); !info.Running || !strings.Contains(op.Status.Message, "--keep-failed-vms") {
		t.Errorf("with KeepFailedMachines the machine runs=%v, message %q", info.Running, op.Status.Message)
	}
}

func TestServerThatCanNeverFitFailsAtOnce(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond, controller.Options{MaxMemoryBytes: 2 << 30, MaxCPUs: 4})
	h.create(server("big")) // the default 4Gi
	wide := server("wide")
	wide.Spec.CPUs = 8
	wide.Spec.Memory = ptr.To(resourceQuantity("1Gi"))
	h.create(wide)
	h.create(profile("p", okUserData))
	h.create(repave("op-big", "big", "p"))
	h.create(repave("op-wide", "wide", "p"))
	for op, want := range map[string]string{
		"op-big":  "needs 4096 MiB of memory (spec.memory), more than the 2048 MiB this host lets repaves use (simulator flag --max-memory)",
		"op-wide": "needs 8 CPUs (spec.cpus), more than the 4 this host gives one server (simulator flag --max-cpus)",
	} {
		got := h.waitPhase(op, stargatev1.OperationFailed, 10*time.Second)
		c := meta.FindStatusCondition(got.Status.Conditions, stargatev1.ConditionSucceeded)
		if c == nil || c.Reason != "ExceedsHostCapacity" || !strings.Contains(got.Status.Message, want) {
			t.Errorf("%s: condition %+v message %q, want ExceedsHostCapacity and %q", op, c, got.Status.Message, want)
		}
	}
	if n := h.dc.Repaves(h.ns, "big") + h.dc.Repaves(h.ns, "wide"); n != 0 {
		t.Errorf("%d repaves reached the datacenter", n)
	}
}

func TestPendingIsBoundedByTheTimeout(t *testing.T) {
	h := newHarness(t, time.Hour, controller.Options{MaxParallel: 1})
	h.create(profile("p", okUserData))
	h.create(server("s1"))
	h.create(server("s2"))
	h.create(repave("op1", "s1", "p")) // runs for an hour
	h.waitPhase("op1", stargatev1.OperationRunning, 10*time.Second)
	waiting := repave("op2", "s2", "p")
	waiting.Spec.Timeout = &metav1.Duration{Duration: 10 * time.Second}
	h.create(waiting)
	eventually(t, 10*time.Second, func() (bool, string) {
		op := h.op("op2")
		return strings.Contains(op.Status.Message, "pending since"), op.Status.Message
	})
	op := h.waitPhase("op2", stargatev1.OperationFailed, 30*time.Second)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded)
	if c == nil || c.Reason != "WaitingForCapacity" || !strings.Contains(op.Status.Message, "Could not start within 10s (spec.timeout): Waiting for host capacity") {
		t.Errorf("condition %+v message %q", c, op.Status.Message)
	}
	if n := h.dc.Repaves(h.ns, "s2"); n != 0 {
		t.Errorf("s2 repaved %d times", n)
	}
}

func TestSecretDeletedAfterTheMachineGotItIsNotNeeded(t *testing.T) {
	h := newHarness(t, 300*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(server("s2"))
	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ud"}, Type: stargatev1.UserDataSecretType,
		Data: map[string][]byte{"user-data": []byte(okUserData)}})
	p := profile("p", "")
	p.Spec.CloudInitSecretRef = &stargatev1.SecretKeyReference{Name: "ud"}
	h.create(p)
	h.create(repave("op1", "s1", "p"))
	eventually(t, 10*time.Second, func() (bool, string) {
		op := h.op("op1")
		return meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionVMRunning), op.Status.Message
	})
	if err := env.Client.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ud", Namespace: h.ns}}); err != nil {
		t.Fatal(err)
	}
	h.waitPhase("op1", stargatev1.OperationSucceeded, 15*time.Second)

	// Deleted before the machine received it: the repave fails and the machine is powered off.
	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ud"}, Type: stargatev1.UserDataSecretType,
		Data: map[string][]byte{"user-data": []byte(okUserData)}})
	h.create(repave("op2", "s2", "p"))
	h.waitPhase("op2", stargatev1.OperationRunning, 10*time.Second)
	if err := env.Client.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ud", Namespace: h.ns}}); err != nil {
		t.Fatal(err)
	}
	op := h.waitPhase("op2", stargatev1.OperationFailed, 15*time.Second)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "SecretDeleted" || h.inspect("s2").Running {
		t.Errorf("condition %+v, machine running %v: want SecretDeleted and powered off", c, h.inspect("s2").Running)
	}
}

func TestOneOperationPerServerInCreationOrder(t *testing.T) {
	h := newHarness(t, 40*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	// Created in the same second: the tie is broken by name.
	h.create(repave("op-b", "s1", "p"))
	h.create(repave("op-a", "s1", "p"))
	eventually(t, 10*time.Second, func() (bool, string) {
		a, b := h.op("op-a"), h.op("op-b")
		return a.Status.Phase == stargatev1.OperationRunning && b.Status.Phase == stargatev1.OperationPending &&
			strings.Contains(b.Status.Message, "Waiting for Operation op-a"), fmt.Sprintf("a=%s b=%s %q", a.Status.Phase, b.Status.Phase, b.Status.Message)
	})
	h.waitPhase("op-a", stargatev1.OperationSucceeded, 20*time.Second)
	h.waitPhase("op-b", stargatev1.OperationSucceeded, 20*time.Second)
	if h.dc.Overlaps() != 0 || h.dc.Repaves(h.ns, "s1") != 2 {
		t.Errorf("overlaps=%d repaves=%d, want 0 and 2", h.dc.Overlaps(), h.dc.Repaves(h.ns, "s1"))
	}
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.LastOperation == "op-b" })
}

func TestCapacityMakesOperationsWait(t *testing.T) {
	h := newHarness(t, 50*time.Millisecond, controller.Options{MaxParallel: 1})
	h.create(profile("p", okUserData))
	for _, s := range []string{"s1", "s2", "s3"} {
		h.create(server(s))
		h.create(repave("op-"+s, s, "p"))
	}
	sawWaiting := false
	eventually(t, 30*time.Second, func() (bool, string) {
		done := 0
		for _, s := range []string{"s1", "s2", "s3"} {
			op := h.op("op-" + s)
			switch op.Status.Phase {
			case stargatev1.OperationSucceeded:
				done++
			case stargatev1.OperationPending:
				if strings.Contains(op.Status.Message, "Waiting for host capacity") {
					sawWaiting = true
				}
			}
		}
		return done == 3, fmt.Sprintf("done=%d", done)
	})
	// The datacenter recorded every installation's start: never two at once.
	if n := h.dc.MaxInstalling(); n != 1 {
		t.Errorf("at most %d installations ran at once with MaxParallel=1, want exactly 1", n)
	}
	if !sawWaiting {
		t.Error("no Operation reported waiting for capacity")
	}
}

func TestSelectorLeavesOtherServersAlone(t *testing.T) {
	sel := labels.SelectorFromSet(labels.Set{"stargate.io/datacenter": "here"})
	h := newHarness(t, 10*time.Millisecond, controller.Options{ServerSelector: sel})
	mine, theirs := server("mine"), server("theirs")
	mine.Labels = map[string]string{"stargate.io/datacenter": "here"}
	theirs.Labels = map[string]string{"stargate.io/datacenter": "elsewhere"}
	h.create(mine)
	h.create(theirs)
	h.create(profile("p", okUserData))
	h.create(repave("op-theirs", "theirs", "p"))
	h.create(repave("op-mine", "mine", "p"))
	h.waitPhase("op-mine", stargatev1.OperationSucceeded, 20*time.Second)
	if op := h.op("op-theirs"); op.Status.Phase != "" || len(op.Finalizers) != 0 {
		t.Errorf("another datacenter's Operation was touched: %+v", op.Status)
	}
	if s := h.server("theirs"); s.Status.State != "" || len(s.Finalizers) != 0 {
		t.Errorf("another datacenter's Server was touched: %+v", s.Status)
	}
}

func TestRestartMidRepaveCompletesWithOneInstallation(t *testing.T) {
	h := newHarness(t, 300*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	eventually(t, 10*time.Second, func() (bool, string) {
		op := h.op("op1")
		return meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionCloudInitReady), op.Status.Message
	})
	h.stop() // the controller dies mid-repave ...
	h.start(&mockdc.Provider{BaseURL: h.dcURL})
	h.waitPhase("op1", stargatev1.OperationSucceeded, 30*time.Second)
	if n := h.dc.Repaves(h.ns, "s1"); n != 1 {
		t.Errorf("server installed %d times across the restart, want 1", n)
	}
}

func TestDeletingRunningOperationPowersServerOff(t *testing.T) {
	h := newHarness(t, 2*time.Second, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	h.waitPhase("op1", stargatev1.OperationRunning, 10*time.Second)
	if err := env.Client.Delete(context.Background(), h.op("op1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "op1"}, &stargatev1.Operation{})
		return client.IgnoreNotFound(err) == nil && err != nil, fmt.Sprint(err)
	})
	s := h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool {
		return st.State == stargatev1.ServerError && strings.Contains(st.Message, "interrupted")
	})
	info, err := (&mockdc.Provider{BaseURL: h.dcURL}).Inspect(context.Background(), client.ObjectKeyFromObject(s))
	if err != nil || info.Running {
		t.Errorf("server still running after its repave was deleted: %+v %v", info, err)
	}
}

func TestDeletingServerMidRepaveReleasesIt(t *testing.T) {
	h := newHarness(t, 2*time.Second, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	h.waitPhase("op1", stargatev1.OperationRunning, 10*time.Second)
	if err := env.Client.Delete(context.Background(), h.server("s1")); err != nil {
		t.Fatal(err)
	}
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	if !strings.Contains(op.Status.Message, "deleted") {
		t.Errorf("message %q", op.Status.Message)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "s1"}, &stargatev1.Server{})
		info, _ := (&mockdc.Provider{BaseURL: h.dcURL}).Inspect(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "s1"})
		return err != nil && !info.Exists, fmt.Sprintf("server get err=%v, datacenter still has it: %v", err, info.Exists)
	})
}

func TestTimeoutFailsAndPowersOff(t *testing.T) {
	h := newHarness(t, time.Hour, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	op := repave("op1", "s1", "p")
	op.Spec.Timeout = &metav1.Duration{Duration: 10 * time.Second}
	h.create(op)
	op = h.waitPhase("op1", stargatev1.OperationFailed, 30*time.Second)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "Timeout" {
		t.Errorf("Succeeded condition %+v, want reason Timeout", c)
	}
	if !strings.Contains(op.Status.Message, "ImageReady") {
		t.Errorf("message %q does not say which step was stuck", op.Status.Message)
	}
}

// registerNode plays a kubelet: it registers a Ready Node with an InternalIP.
func registerNode(t *testing.T, name, ip string) *corev1.Node {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := env.Client.Create(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if err := env.Client.Status().Update(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), node) })
	return node
}

// nextSecond waits until the wall clock is in a later second than t: creation timestamps have
// one-second resolution.
func nextSecond(t *testing.T, at time.Time) {
	eventually(t, 3*time.Second, func() (bool, string) {
		return time.Now().Truncate(time.Second).After(at), "waiting for the next second"
	})
}

func (h *harness) waitNodeReadyFalse(op string) {
	h.t.Helper()
	eventually(h.t, 15*time.Second, func() (bool, string) {
		c := meta.FindStatusCondition(h.op(op).Status.Conditions, stargatev1.ConditionNodeReady)
		return c != nil && c.Status == metav1.ConditionFalse, fmt.Sprintf("NodeReady=%+v", c)
	})
}

func TestJoinsClusterWaitsForReadyNodeAndDeletesStaleOne(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	name := h.ns + "-w" // Nodes are cluster-scoped: keep the name unique to this test
	h.create(server(name))
	p := profile("join", okUserData)
	p.Spec.JoinsCluster = true
	h.create(p)

	// The first installation joins: its kubelet registers with the Server's address.
	h.create(repave("op0", name, "join"))
	h.waitNodeReadyFalse("op0")
	ip := h.waitServer(name, 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.IPAddress != "" }).Status.IPAddress
	stale := registerNode(t, name, ip)
	h.waitPhase("op0", stargatev1.OperationSucceeded, 15*time.Second)

	// A repave: the previous installation's Node goes while the guest installs (before its join).
	nextSecond(t, stale.CreationTimestamp.Time)
	h.create(repave("op1", name, "join"))
	eventually(t, 15*time.Second, func() (bool, string) {
		op := h.op("op1")
		err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, &corev1.Node{})
		return err != nil && !meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionGuestReady),
			fmt.Sprintf("stale node get: %v, conditions %+v", err, op.Status.Conditions)
	})
	h.waitNodeReadyFalse("op1")
	// The new kubelet registers (in a later second than the repave's start) and becomes Ready.
	nextSecond(t, h.op("op1").Status.StartTime.Time)
	registerNode(t, name, ip)
	op := h.waitPhase("op1", stargatev1.OperationSucceeded, 15*time.Second)
	if !meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionNodeReady) {
		t.Error("NodeReady not True")
	}

	// Deleting the Server removes the Node its installation registered (matched by address).
	if err := env.Client.Delete(context.Background(), h.server(name)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() (bool, string) {
		err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, &corev1.Node{})
		return err != nil, fmt.Sprintf("node still there: %v", err)
	})
}

// A tenant names a Server like a Node that is not theirs (a control-plane node, another team's
// worker): the repave fails before the server is touched, and the Node is neither deleted nor
// taken as proof of anything.
func TestForeignNodeIsNeverTouched(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	name := h.ns + "-cp"
	victim := registerNode(t, name, "10.0.0.1")
	h.create(server(name))
	p := profile("join", okUserData)
	p.Spec.JoinsCluster = true
	h.create(p)
	nextSecond(t, victim.CreationTimestamp.Time)
	h.create(repave("op1", name, "join"))
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded)
	want := "Node " + name + " already exists and is not this Server's: its InternalIP is [10.0.0.1]"
	if c == nil || c.Reason != "NodeNameTaken" || !strings.Contains(op.Status.Message, want) {
		t.Errorf("condition %+v message %q", c, op.Status.Message)
	}
	after := &corev1.Node{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, after); err != nil || after.UID != victim.UID {
		t.Errorf("the foreign Node was deleted or replaced: %v", err)
	}
	if n := h.dc.Repaves(h.ns, name); n != 0 {
		t.Errorf("the server was repaved %d times", n)
	}
}

// Two namespaces, one Node name: the second Server to join fails, whether the first one's Node
// is registered yet or not, and the first one's Node is untouched.
func TestSameServerNameInTwoNamespacesCannotBothJoin(t *testing.T) {
	h := newHarness(t, 200*time.Millisecond, controller.Options{}, "other")
	other := h.extra[0]
	name := h.ns + "-w"
	p := profile("join", okUserData)
	p.Spec.JoinsCluster = true
	h.create(p)
	h.create(server(name))
	p2 := profile("join", okUserData)
	p2.Spec.JoinsCluster = true
	h.createIn(other, p2)
	h.createIn(other, server(name))
	h.create(repave("op1", name, "join"))
	h.waitNodeReadyFalse("op1") // installing; its Node is not registered yet

	h.createIn(other, repave("op2", name, "join"))
	op2 := &stargatev1.Operation{}
	eventually(t, 15*time.Second, func() (bool, string) {
		_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: other, Name: "op2"}, op2)
		return op2.Status.Phase == stargatev1.OperationFailed, op2.Status.Message
	})
	if c := meta.FindStatusCondition(op2.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "NodeNameConflict" ||
		!strings.Contains(op2.Status.Message, "Server "+h.ns+"/"+name+" already joins the cluster as Node "+name) {
		t.Errorf("while the first installs: condition %+v message %q", c, op2.Status.Message)
	}

	ip := h.waitServer(name, 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.IPAddress != "" }).Status.IPAddress
	node := registerNode(t, name, ip)
	h.waitPhase("op1", stargatev1.OperationSucceeded, 15*time.Second)
	nextSecond(t, node.CreationTimestamp.Time)
	h.createIn(other, repave("op3", name, "join"))
	op3 := &stargatev1.Operation{}
	eventually(t, 15*time.Second, func() (bool, string) {
		_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: other, Name: "op3"}, op3)
		return op3.Status.Phase == stargatev1.OperationFailed, op3.Status.Message
	})
	if c := meta.FindStatusCondition(op3.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "NodeNameTaken" {
		t.Errorf("once the first joined: condition %+v message %q", c, op3.Status.Message)
	}
	after := &corev1.Node{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, after); err != nil || after.UID != node.UID {
		t.Errorf("the first namespace's Node was deleted or replaced: %v", err)
	}
	if n := h.dc.Repaves(other, name); n != 0 {
		t.Errorf("the other namespace's server was repaved %d times", n)
	}
}

func TestUserDataFromSecret(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond, controller.Options{ReferenceWait: time.Minute})
	h.create(server("s1"))
	p := profile("secret-backed", "")
	p.Spec.CloudInitSecretRef = &stargatev1.SecretKeyReference{Name: "worker-user-data"}
	h.create(p)
	h.create(repave("op1", "s1", "secret-backed"))
	eventually(t, 10*time.Second, func() (bool, string) {
		op := h.op("op1")
		c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionScheduled)
		return c != nil && c.Reason == "SecretNotFound" && strings.Contains(c.Message, `Secret "worker-user-data"`), fmt.Sprintf("%+v", c)
	})
	// The user-data in the Secret is what the datacenter gets: its failure marker fails the repave.
	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "worker-user-data"}, Type: stargatev1.UserDataSecretType,
		Data: map[string][]byte{"user-data": []byte("#cloud-config\n# " + mockdc.FailMarker + stargatev1.ConditionVMRunning + "\n")}})
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	if !strings.Contains(op.Status.Message, "injected failure at VMRunning") {
		t.Errorf("message %q: the Secret's user-data was not used", op.Status.Message)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		p := &stargatev1.ProvisioningProfile{}
		_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "secret-backed"}, p)
		// The profile was checked before the Secret existed; a profile edit re-checks it.
		return meta.FindStatusCondition(p.Status.Conditions, stargatev1.ConditionValid) != nil, fmt.Sprint(p.Status)
	})
}

func TestRestartCountsRunningBeforeAdmittingPending(t *testing.T) {
	h := newHarness(t, 400*time.Millisecond, controller.Options{MaxParallel: 1})
	h.create(profile("p", okUserData))
	for i := range 5 {
		h.create(server(fmt.Sprintf("s%d", i)))
		h.create(repave(fmt.Sprintf("op%d", i), fmt.Sprintf("s%d", i), "p"))
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		return h.op("op0").Status.Phase == stargatev1.OperationRunning, h.op("op0").Status.Message
	})
	h.stop() // one running, four pending; a new process must count the running one first
	h.start(&mockdc.Provider{BaseURL: h.dcURL})
	for i := range 5 {
		h.waitPhase(fmt.Sprintf("op%d", i), stargatev1.OperationSucceeded, 30*time.Second)
	}
	if n := h.dc.MaxInstalling(); n != 1 {
		t.Errorf("%d installations ran at once across a restart with MaxParallel=1", n)
	}
}

// A user who may create profiles must not be able to boot any other Secret of the namespace into
// a VM they can read: only Secrets of type stargate.io/user-data are used.
func TestSecretsThatDidNotOptInAreNeverUsed(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-password"}, Data: map[string][]byte{"user-data": []byte("#cloud-config\n{}\n")}})
	p := profile("steal", "")
	p.Spec.CloudInitSecretRef = &stargatev1.SecretKeyReference{Name: "db-password"}
	h.create(p)
	h.create(repave("op1", "s1", "steal"))
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded)
	if c == nil || c.Reason != "SecretNotAllowed" || !strings.Contains(op.Status.Message, "--type=stargate.io/user-data") {
		t.Errorf("condition %+v message %q: want SecretNotAllowed with how to opt in", c, op.Status.Message)
	}
	if n := h.dc.Repaves(h.ns, "s1"); n != 0 {
		t.Errorf("the server was repaved %d times with a Secret that did not opt in", n)
	}
	if s := h.server("s1"); s.Status.State == stargatev1.ServerError || s.Status.State == stargatev1.ServerProvisioning {
		t.Errorf("the server was touched: %+v", s.Status)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		p := &stargatev1.ProvisioningProfile{}
		_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "steal"}, p)
		c := meta.FindStatusCondition(p.Status.Conditions, stargatev1.ConditionValid)
		return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, "stargate.io/user-data"), fmt.Sprint(p.Status)
	})
}
