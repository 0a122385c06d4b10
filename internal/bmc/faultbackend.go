package bmc

import (
	"context"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/redfish"
)

// The Backend's side of BMC faults (see Faults): where each one strikes.

var _ redfish.Gatekeeper = (*Backend)(nil)

// inWindow is the ongoing test of the faults that last their duration.
func inWindow(ep *episode) bool { return ep.inWindow(time.Now()) }

// never is the ongoing test of the faults that spoil one request: once struck, they are over.
func never(*episode) bool { return false }

// Admit puts the Server's BMC out of service while a BMCUnavailable (503 with Retry-After) or a
// BMCConnectionRefused (the connection dropped) strikes it.
func (b *Backend) Admit(ctx context.Context, id string) error {
	if b.Faults == nil {
		return nil
	}
	s, err := b.server(ctx, id)
	if err != nil {
		return nil // answered as any request for it is
	}
	if ep := b.Faults.find(ctx, s, stargatev1.FaultBMCConnectionRefused, inWindow, true, nil); ep != nil {
		return redfish.ErrDropConnection
	}
	if ep := b.Faults.find(ctx, s, stargatev1.FaultBMCUnavailable, inWindow, true, nil); ep != nil {
		return &redfish.ServiceError{Status: http.StatusServiceUnavailable, RetryAfter: ep.remaining(time.Now()),
			Message: "The BMC is out of service (" + describe(ep) + ")."}
	}
	return nil
}

// faultedSystem shows what the BMC faults of the Server make its BMC report: the previous power
// state during a BMCStalePowerState, the boot override a BMCBootOverrideIgnored accepted.
func (b *Backend) faultedSystem(ctx context.Context, s *stargatev1.Server, sys *redfish.System) {
	if b.Faults == nil {
		return
	}
	if ep := b.Faults.find(ctx, s, stargatev1.FaultBMCStalePowerState, inWindow, false, nil); ep != nil {
		sys.PowerState = ep.stale
	}
	if ep := b.Faults.find(ctx, s, stargatev1.FaultBMCBootOverrideIgnored, pendingBoot, false, nil); ep != nil {
		sys.Boot = overlay(sys.Boot, *ep.boot)
	}
}

// pendingBoot: an ignored boot override shows until the machine boots (and ignores it).
func pendingBoot(ep *episode) bool { return ep.boot != nil && !ep.used }

// overlay is boot with the fields o sets.
func overlay(boot, o redfish.Boot) redfish.Boot {
	if o.Target != "" {
		boot.Target = o.Target
	}
	if o.Enabled != "" {
		boot.Enabled = o.Enabled
	}
	if o.Mode != "" {
		boot.Mode = o.Mode
	}
	return boot
}

// ignoresBoot reports whether a BMCBootOverrideIgnored strikes this one-time boot override: the
// BMC accepts it and shows it, and the machine boots its default all the same.
func (b *Backend) ignoresBoot(ctx context.Context, s *stargatev1.Server, boot redfish.Boot) bool {
	if b.Faults == nil || boot.Enabled != redfish.BootOnce {
		return false
	}
	return b.Faults.find(ctx, s, stargatev1.FaultBMCBootOverrideIgnored, never, true, func(ep *episode) { ep.boot = &boot }) != nil
}

// bootsNow spends an ignored boot override when the machine boots: it shows no more.
func (b *Backend) bootsNow(ctx context.Context, s *stargatev1.Server) {
	if b.Faults == nil {
		return
	}
	if ep := b.Faults.find(ctx, s, stargatev1.FaultBMCBootOverrideIgnored, pendingBoot, false, nil); ep != nil {
		b.Faults.mu.Lock()
		ep.used = true
		b.Faults.mu.Unlock()
	}
}

// insertMediaFault is the error a BMCInsertMediaFails answers this InsertMedia with, if one strikes.
func (b *Backend) insertMediaFault(ctx context.Context, s *stargatev1.Server, imageURL string) error {
	if b.Faults == nil {
		return nil
	}
	if ep := b.Faults.find(ctx, s, stargatev1.FaultBMCInsertMediaFails, never, true, nil); ep != nil {
		return &redfish.ServiceError{Status: http.StatusInternalServerError,
			Message: "Virtual media could not be inserted: the BMC failed to mount " + imageURL + " (" + describe(ep) + ")."}
	}
	return nil
}

// powerDelay is how long a BMCPowerDelay that strikes this Reset delays it (0: none strikes).
func (b *Backend) powerDelay(ctx context.Context, s *stargatev1.Server) time.Duration {
	if b.Faults == nil {
		return 0
	}
	if ep := b.Faults.find(ctx, s, stargatev1.FaultBMCPowerDelay, never, true, nil); ep != nil {
		return ep.fault.Duration.Duration
	}
	return 0
}

// delayedReset makes a Reset the BMC accepted after d, as a BMC slow to act on it would; a
// failure then is told in an Event, as the client had its 204 already.
func (b *Backend) delayedReset(s *stargatev1.Server, id string, t redfish.ResetType, user string, d time.Duration) {
	time.AfterFunc(d, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := b.reset(ctx, id, t, user); err != nil {
			b.Recorder.Eventf(s, nil, corev1.EventTypeWarning, "DelayedPowerChangeFailed", "Redfish",
				"BMC user %q: reset %s, delayed %s by a BMCPowerDelay fault, failed: %v", user, t, d, err)
		}
	})
}

// stalePower starts a BMCStalePowerState, if one strikes this power change: the BMC goes on
// reporting prior, the power state before it, for the fault's duration.
func (b *Backend) stalePower(ctx context.Context, s *stargatev1.Server, prior redfish.PowerState) {
	if b.Faults != nil {
		b.Faults.find(ctx, s, stargatev1.FaultBMCStalePowerState, never, true, func(ep *episode) { ep.stale = prior })
	}
}

// powerNow is the machine's power state as the BMC would report it without faults.
func (b *Backend) powerNow(ctx context.Context, s *stargatev1.Server) redfish.PowerState {
	info, err := b.Provider.Inspect(ctx, client.ObjectKeyFromObject(s))
	switch {
	case err != nil:
		return ""
	case info.Running:
		return redfish.PowerOn
	}
	return redfish.PowerOff
}
