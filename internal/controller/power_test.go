package controller_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
)

func powerOperation(name, server string, kind stargatev1.OperationType) *stargatev1.Operation {
	return &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: stargatev1.OperationSpec{
		Operation: kind, ServerRef: stargatev1.LocalObjectReference{Name: server}}}
}

func (h *harness) condition(op *stargatev1.Operation, typ string) *metav1.Condition {
	return meta.FindStatusCondition(op.Status.Conditions, typ)
}

// Power Operations run like repaves (phases, conditions, one per Server) and keep the installation:
// a graceful powerOff, a powerOn from disk, a reboot of a guest that ignores the power button
// (forced after its grace period), and the Server's powerState tells the truth throughout.
func TestPowerOperations(t *testing.T) {
	h := newHarness(t, 100*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(server("stubborn"))
	h.create(server("fresh"))
	h.create(profile("p", okUserData))
	h.create(profile("ignores-acpi", "#cloud-config\n# "+mockdc.IgnoreACPIMarker+"\n"))
	h.create(repave("install", "s1", "p"))
	h.create(repave("install-stubborn", "stubborn", "ignores-acpi"))
	// Created together: the powerOff waits for the repave holding the Server.
	h.create(powerOperation("off", "s1", stargatev1.OperationPowerOff))
	eventually(t, 10*time.Second, func() (bool, string) {
		op := h.op("off")
		return strings.Contains(op.Status.Message, "Waiting for Operation install"), op.Status.Message
	})
	h.waitPhase("install", stargatev1.OperationSucceeded, 15*time.Second)
	off := h.waitPhase("off", stargatev1.OperationSucceeded, 15*time.Second)
	if c := h.condition(off, stargatev1.ConditionPoweredOff); c == nil || c.Status != metav1.ConditionTrue || c.Reason != "ShutDown" {
		t.Errorf("PoweredOff %+v, want True ShutDown", c)
	}
	s := h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool {
		return st.PowerState == stargatev1.PowerOff && st.State == stargatev1.ServerReady && st.LastOperation == "off"
	})
	installed := s.Status.InstanceID

	h.create(powerOperation("on", "s1", stargatev1.OperationPowerOn))
	on := h.waitPhase("on", stargatev1.OperationSucceeded, 15*time.Second)
	if !meta.IsStatusConditionTrue(on.Status.Conditions, stargatev1.ConditionPoweredOn) || !strings.Contains(on.Status.Message, "powered on") {
		t.Errorf("powerOn: %q %+v", on.Status.Message, on.Status.Conditions)
	}
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool {
		return st.PowerState == stargatev1.PowerOn && st.State == stargatev1.ServerReady && st.InstanceID == installed
	})
	if n := h.dc.Repaves(h.ns, "s1"); n != 1 {
		t.Errorf("power operations reinstalled the server: %d installations", n)
	}

	// A guest that ignores the power button is forced off after the grace period, then boots again.
	h.waitPhase("install-stubborn", stargatev1.OperationSucceeded, 15*time.Second)
	reboot := powerOperation("reboot", "stubborn", stargatev1.OperationReboot)
	reboot.Spec.GracePeriod = &metav1.Duration{Duration: time.Second}
	h.create(reboot)
	rb := h.waitPhase("reboot", stargatev1.OperationSucceeded, 15*time.Second)
	if c := h.condition(rb, stargatev1.ConditionPoweredOff); c == nil || c.Reason != "ForcedOff" || !strings.Contains(c.Message, "1s (spec.gracePeriod)") {
		t.Errorf("PoweredOff %+v, want ForcedOff after 1s", c)
	}
	if !meta.IsStatusConditionTrue(rb.Status.Conditions, stargatev1.ConditionPoweredOn) || h.inspect("stubborn").Running != true {
		t.Errorf("reboot did not power the server on again: %+v", rb.Status.Conditions)
	}

	// Nothing to boot on a server that was never installed.
	h.create(powerOperation("on-fresh", "fresh", stargatev1.OperationPowerOn))
	nf := h.waitPhase("on-fresh", stargatev1.OperationFailed, 15*time.Second)
	if c := h.condition(nf, stargatev1.ConditionSucceeded); c == nil || c.Reason != "NotInstalled" {
		t.Errorf("powerOn of a fresh server: %+v", c)
	}
}

// A machine that stops on its own (guest poweroff, crash) is not silence: the Server turns Error
// with MachineStopped and an Event, and a powerOn brings it back to Ready.
func TestMachineThatStopsOnItsOwnIsReported(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	h.create(repave("install", "s1", "p"))
	h.waitPhase("install", stargatev1.OperationSucceeded, 15*time.Second)
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool { return st.State == stargatev1.ServerReady })
	// The guest powers itself off: nothing in Kubernetes asked for it.
	if err := h.provider().PowerOff(t.Context(), objectKey(h.ns, "s1")); err != nil {
		t.Fatal(err)
	}
	// Touch the Server so its reconciler looks now rather than at its next health check.
	h.touchServer("s1")
	h.waitServer("s1", 40*time.Second, func(st stargatev1.ServerStatus) bool {
		c := meta.FindStatusCondition(st.Conditions, stargatev1.ConditionProvisioned)
		return st.State == stargatev1.ServerError && st.PowerState == stargatev1.PowerOff && c != nil && c.Reason == "MachineStopped"
	})
	eventually(t, 10*time.Second, func() (bool, string) { return hasEvent(h.events("s1"), "MachineStopped"), "MachineStopped event" })
	h.create(powerOperation("on", "s1", stargatev1.OperationPowerOn))
	h.waitPhase("on", stargatev1.OperationSucceeded, 15*time.Second)
	h.waitServer("s1", 10*time.Second, func(st stargatev1.ServerStatus) bool {
		return st.State == stargatev1.ServerReady && st.PowerState == stargatev1.PowerOn
	})
}

func TestPowerOperationsRejectAProfile(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	op := powerOperation("bad", "s1", stargatev1.OperationPowerOff)
	op.Spec.ProvisioningProfileRef = &stargatev1.LocalObjectReference{Name: "p"}
	op.SetNamespace(h.ns)
	err := env.Client.Create(t.Context(), op)
	if err == nil || !strings.Contains(err.Error(), "only a repave takes spec.provisioningProfileRef") {
		t.Errorf("a powerOff with a profile: %v", err)
	}
	grace := repave("bad2", "s1", "p")
	grace.Spec.GracePeriod = &metav1.Duration{Duration: time.Second}
	grace.SetNamespace(h.ns)
	if err := env.Client.Create(t.Context(), grace); err == nil || !strings.Contains(err.Error(), "gracePeriod applies to powerOff and reboot only") {
		t.Errorf("a repave with a grace period: %v", fmt.Sprint(err))
	}
}
