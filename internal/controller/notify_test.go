package controller_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
)

// notifyingProvider is the mock datacenter behind a gate: its repaves stay in progress until the
// test opens the gate, and it tells the controller about changes the way the simulator does.
type notifyingProvider struct {
	*mockdc.Provider
	open    *atomic.Bool
	calls   *atomic.Int64 // Repave calls, to see the controller settle
	changes chan types.NamespacedName
}

func (p notifyingProvider) Changes() <-chan types.NamespacedName { return p.changes }

func (p notifyingProvider) Repave(ctx context.Context, req controller.RepaveRequest) (controller.RepaveStatus, error) {
	p.calls.Add(1)
	st, err := p.Provider.Repave(ctx, req)
	if err == nil && st.Done && !p.open.Load() {
		st.Done = false
		st.Steps[len(st.Steps)-1].State = controller.StepInProgress
	}
	return st, err
}

// With a poll an hour away, only the provider's notification can make a finished repave
// Succeeded: it must, within moments, and only for the Server's running Operation.
func TestNotifierWakesTheRunningOperation(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond, controller.Options{PollInterval: time.Hour})
	h.stop() // the same controller, with a notifying provider
	p := notifyingProvider{Provider: &mockdc.Provider{BaseURL: h.dcURL}, open: &atomic.Bool{}, calls: &atomic.Int64{}, changes: make(chan types.NamespacedName, 4)}
	h.start(p)
	h.create(server("s1"))
	h.create(profile("p", okUserData))
	h.create(repave("op1", "s1", "p"))
	h.waitPhase("op1", stargatev1.OperationRunning, 10*time.Second)
	// Every step of the mock is done by now: only the gate holds the repave. The gate opens once
	// the controller has settled (no Repave call for a second: the reconciles its own status
	// updates cause are over), so that nothing but a notification can wake the Operation.
	for last, quiet := p.calls.Load(), time.Now(); time.Since(quiet) < time.Second; time.Sleep(50 * time.Millisecond) {
		if n := p.calls.Load(); n != last {
			last, quiet = n, time.Now()
		}
	}
	p.open.Store(true)
	// A Server that runs nothing, and one that does not exist, are no one's business.
	p.changes <- types.NamespacedName{Namespace: h.ns, Name: "nobody"}
	consistently(t, time.Second, func() (bool, string) {
		op := h.op("op1")
		return op.Status.Phase == stargatev1.OperationRunning, fmt.Sprintf("phase %s before any notification for s1: %s", op.Status.Phase, op.Status.Message)
	})
	start := time.Now()
	p.changes <- types.NamespacedName{Namespace: h.ns, Name: "s1"}
	h.waitPhase("op1", stargatev1.OperationSucceeded, 5*time.Second)
	t.Logf("Succeeded %s after the notification", time.Since(start).Round(time.Millisecond))
}
