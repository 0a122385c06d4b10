package controller_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
)

// untouchedProvider is the mock datacenter as a provider of real servers sees a repave that
// failed before it changed the server: PowerOff says ErrUntouched and does nothing.
type untouchedProvider struct {
	controller.Provider
	powerOffs atomic.Int32
}

func (p *untouchedProvider) PowerOff(context.Context, types.NamespacedName) error {
	p.powerOffs.Add(1)
	return controller.ErrUntouched
}

// A repave whose provider never touched the server fails without claiming it powered it off.
func TestFailureOfAnUntouchedServerSaysSo(t *testing.T) {
	h := newHarness(t, 20*time.Millisecond, controller.Options{})
	h.stop()
	p := &untouchedProvider{Provider: &mockdc.Provider{BaseURL: h.dcURL}}
	h.start(p)
	h.create(server("s1"))
	h.create(profile("p", "#cloud-config\n# "+mockdc.FailMarker+stargatev1.ConditionImageReady+"\n"))
	h.create(repave("op1", "s1", "p"))
	op := h.waitPhase("op1", stargatev1.OperationFailed, 15*time.Second)
	if !strings.Contains(op.Status.Message, "the server was not touched and runs as before") || strings.Contains(op.Status.Message, "powered off") {
		t.Errorf("message %q: want it to say the server was left alone", op.Status.Message)
	}
	if p.powerOffs.Load() == 0 {
		t.Error("the controller did not ask the provider to stop the repave")
	}
}
