package controller_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
)

func evacuate(name, serverName string) *stargatev1.Operation {
	return &stargatev1.Operation{Spec: stargatev1.OperationSpec{Operation: stargatev1.OperationEvacuate,
		ServerRef: stargatev1.LocalObjectReference{Name: serverName}}, ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func (l *liveHost) hasMachine(ns, name string) bool {
	info, err := (&mockdc.Provider{BaseURL: l.url}).Inspect(context.Background(), client.ObjectKey{Namespace: ns, Name: name})
	return err == nil && info.Exists
}

// An evacuation is refused while the owner renews its Lease, and hands the Server over once the
// owner is lost: the other host takes it and repaves it; the old host, restarted, destroys its
// stale machine (fencing), so one machine is left in total.
func TestEvacuateHandsALostHostsServerOver(t *testing.T) {
	h, owner, other := twoHostsOneServer(t)
	ownerID := owner.id

	h.create(evacuate("evac-fresh", "s1"))
	op := h.waitPhase("evac-fresh", stargatev1.OperationFailed, testGrace+10*time.Second)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "HostNotLost" {
		t.Fatalf("evacuate of a live host's Server: %+v", op.Status)
	}
	if s := h.server("s1"); s.Status.Host != ownerID || s.Status.HostEpoch != 0 {
		t.Fatalf("a refused evacuation changed the Server: %+v", s.Status)
	}

	owner.stop()
	h.waitServer("s1", testGrace+5*time.Second, func(st stargatev1.ServerStatus) bool {
		return hostReachable(st.Conditions) == "False/HostLost"
	})
	h.create(evacuate("evac", "s1"))
	h.waitPhase("evac", stargatev1.OperationSucceeded, 10*time.Second)
	srv := h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.Host == other.id })
	if srv.Status.HostEpoch != 1 || srv.Status.State != stargatev1.ServerAvailable ||
		controllerutil.ContainsFinalizer(srv, controller.ServerFinalizer(ownerID)) {
		t.Fatalf("evacuated Server: finalizers %v, status %+v", srv.Finalizers, srv.Status)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		return hasEvent(h.events("s1"), "Evacuated"), "no Evacuated Event on the Server"
	})

	h.create(repave("op2", "s1", "p"))
	h.waitPhase("op2", stargatev1.OperationSucceeded, 20*time.Second)
	if n := other.dc.Repaves(h.ns, "s1"); n != 1 {
		t.Fatalf("repaves on the new owner: %d, want 1", n)
	}
	if !owner.hasMachine(h.ns, "s1") {
		t.Fatal("test premise: the lost host's datacenter still has its machine")
	}

	owner.start(t) // the old host returns
	eventually(t, 10*time.Second, func() (bool, string) {
		return !owner.hasMachine(h.ns, "s1") && other.hasMachine(h.ns, "s1"),
			fmt.Sprintf("machine on the old host %v, on the new owner %v", owner.hasMachine(h.ns, "s1"), other.hasMachine(h.ns, "s1"))
	})
	eventually(t, 5*time.Second, func() (bool, string) { return hasEvent(h.events("s1"), "Fenced"), "no Fenced Event on the Server" })
	consistently(t, time.Second, func() (bool, string) {
		s := h.server("s1")
		return s.Status.Host == other.id && s.Status.State == stargatev1.ServerReady && s.Status.PowerState == stargatev1.PowerOn,
			fmt.Sprintf("server status after the old host returned: %+v", s.Status)
	})
}

// A repave that was running on the lost host fails with HostEvacuated when the Server is
// evacuated, keeps none of that host's finalizers, and no longer holds the Server: the next repave
// runs on the new owner.
func TestEvacuateFailsTheLostHostsRunningOperation(t *testing.T) {
	h := newHarness(t, time.Millisecond, controller.Options{})
	h.stop()
	a := startLiveHost(t, h, "host-a", "dc=x", mockdc.NewServer(mockdc.Config{StepDelay: 10 * time.Second}))
	s := server("s1")
	s.Labels = map[string]string{"dc": "x"}
	h.create(s)
	h.create(profile("p", okUserData))
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.Host == "host-a" })
	b := startLiveHost(t, h, "host-b", "dc=x", nil)
	h.create(repave("op1", "s1", "p"))
	h.waitPhase("op1", stargatev1.OperationRunning, 10*time.Second)

	a.stop()
	h.waitServer("s1", testGrace+5*time.Second, func(st stargatev1.ServerStatus) bool {
		return hostReachable(st.Conditions) == "False/HostLost"
	})
	if op := h.op("op1"); op.Status.Phase != stargatev1.OperationRunning {
		t.Fatalf("the lost host's repave: phase %s, want it left Running until an evacuation", op.Status.Phase)
	}
	h.create(evacuate("evac", "s1"))
	h.waitPhase("evac", stargatev1.OperationSucceeded, 10*time.Second)
	op := h.waitPhase("op1", stargatev1.OperationFailed, 5*time.Second)
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != "HostEvacuated" ||
		controllerutil.ContainsFinalizer(op, controller.OperationFinalizer("host-a")) {
		t.Fatalf("the lost host's repave after the evacuation: finalizers %v, status %+v", op.Finalizers, op.Status)
	}
	h.create(repave("op2", "s1", "p"))
	h.waitPhase("op2", stargatev1.OperationSucceeded, 20*time.Second)
	if s := h.server("s1"); s.Status.Host != "host-b" || b.dc.Repaves(h.ns, "s1") != 1 {
		t.Fatalf("after the evacuation: owner %q, repaves on host-b %d", s.Status.Host, b.dc.Repaves(h.ns, "s1"))
	}
}
