package bmc

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/faults"
	"stargate.io/stargate/pkg/redfish"
)

// Faults makes the BMC faults of FaultInjections real on the BMCs this host serves. BMC faults
// strike the BMC of a Server, not a step of a repave: their `at` is Running, any time while the
// Server exists. A fault strikes a Server once per FaultInjection: the first time the BMC is asked
// for what the fault spoils (any request for BMCUnavailable and BMCConnectionRefused, a Reset for
// BMCPowerDelay and BMCStalePowerState, a one-time boot override for BMCBootOverrideIgnored, an
// InsertMedia for BMCInsertMediaFails), it is decided as the controller decides a repave's: by
// the seeded draw of (FaultInjection, Server, fault), or while fewer than firstN Servers had it.
// That first strike is the injection: an Event on the Server, the metric and the
// FaultInjection's status count it. A fault with a duration lasts that long from there; the
// others spoil that one request. Deleting the FaultInjection ends its faults at once.
//
// What struck is remembered in memory: after a restart of the simulator a Server's fault may
// strike once more (firstN still holds: it counts from the FaultInjection's status).
type Faults struct {
	// Client reads FaultInjections (cached) and applies their status.
	Client   client.Client
	Recorder events.EventRecorder
	// Metrics count the injections (stargate_faults_injected_total); nil counts nothing.
	Metrics *controller.Metrics
	HostID  string
	// Disabled turns BMC faults off (--fault-injection=false).
	Disabled bool
	Log      logr.Logger

	mu       sync.Mutex
	episodes map[episodeKey]*episode
	// struck counts, per FaultInjection UID/fault, the Servers this host struck (seeded from its
	// status entry the first time, so that firstN survives a restart).
	struck map[string]int64
}

// episodeKey is one fault of one FaultInjection on one Server.
type episodeKey struct {
	fi     types.UID
	fault  string
	server types.UID
}

// episode is a fault that struck a Server.
type episode struct {
	fi    *stargatev1.FaultInjection
	fault stargatev1.Fault
	start time.Time
	// used marks a one-time effect spent (the ignored boot override, once the machine booted).
	used bool
	// stale is the PowerState shown during a BMCStalePowerState.
	stale redfish.PowerState
	// boot is the override a BMCBootOverrideIgnored shows as set while the machine ignores it.
	boot *redfish.Boot
}

// inWindow reports whether the episode's duration still runs at now.
func (e *episode) inWindow(now time.Time) bool {
	return e.fault.Duration != nil && now.Before(e.start.Add(e.fault.Duration.Duration))
}

// remaining is how much of the episode's duration is left at now.
func (e *episode) remaining(now time.Time) time.Duration {
	return e.start.Add(e.fault.Duration.Duration).Sub(now)
}

// SupportsFault reports the faults the BMC makes real: every BMC fault, at Running.
func (f *Faults) SupportsFault(t stargatev1.FaultType, at string) bool {
	return faults.IsBMC(t) && at == stargatev1.FaultAtRunning
}

var _ controller.FaultInjector = (*Faults)(nil)

// find returns the episode of a fault of type t on s for which ongoing is true; when there is
// none and strike is set, it decides whether a selecting FaultInjection's fault of that type
// strikes now, and if so records the injection and returns the new episode (prepared by init,
// which may be nil). A nil *Faults, a disabled one, or an error finds nothing: a fault that
// cannot be decided is not injected, and the BMC serves.
func (f *Faults) find(ctx context.Context, s *stargatev1.Server, t stargatev1.FaultType, ongoing func(*episode) bool, strike bool,
	init func(*episode)) *episode {
	if f == nil || f.Disabled {
		return nil
	}
	var fis stargatev1.FaultInjectionList
	if err := f.Client.List(ctx, &fis, client.InNamespace(s.Namespace)); err != nil {
		f.Log.Error(err, "listing fault injections; no BMC fault is injected", "namespace", s.Namespace)
		return nil
	}
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range fis.Items {
		fi := &fis.Items[i]
		// Only the Server's own namespace: the List asked for it, the check keeps it so.
		if fi.Namespace != s.Namespace || !fi.DeletionTimestamp.IsZero() {
			continue
		}
		sel, err := faults.ValidateInjection(fi)
		if err != nil || !sel.Matches(labels.Set(s.Labels)) {
			continue // an invalid one is reported on its status
		}
		for _, fault := range fi.Spec.Faults {
			if fault.Type != t || fault.At != stargatev1.FaultAtRunning {
				continue
			}
			key := episodeKey{fi: fi.UID, fault: fault.Name, server: s.UID}
			if ep := f.episodes[key]; ep != nil {
				if ongoing(ep) {
					return ep
				}
				continue
			}
			if !strike || !f.decide(fi, fault, s) {
				continue
			}
			ep := &episode{fi: fi, fault: fault, start: now}
			if init != nil {
				init(ep)
			}
			if f.episodes == nil {
				f.episodes = map[episodeKey]*episode{}
			}
			f.episodes[key] = ep
			f.record(ctx, s, fi, fault, now)
			return ep
		}
	}
	return nil
}

// decide is the draw of fault of fi for Server s: its probability, or fewer than firstN
// Servers struck (this host's count and the other hosts' entries in the status).
func (f *Faults) decide(fi *stargatev1.FaultInjection, fault stargatev1.Fault, s *stargatev1.Server) bool {
	if fault.Probability != nil {
		p, err := faults.ParseProbability(*fault.Probability)
		return err == nil && faults.Draw(fi.UID, s.UID, fault.Name, p)
	}
	n := f.count(fi, fault.Name)
	for _, h := range fi.Status.Hosts {
		if h.Host != f.HostID {
			n += countOf(h.Faults, fault.Name)
		}
	}
	return n < int64(*fault.FirstN)
}

// count is how many Servers this host struck with the fault (f.mu held).
func (f *Faults) count(fi *stargatev1.FaultInjection, fault string) int64 {
	key := faults.LedgerKey(fi, fault)
	if n, ok := f.struck[key]; ok {
		return n
	}
	if f.struck == nil {
		f.struck = map[string]int64{}
	}
	f.struck[key] = countOf(hostEntry(fi, f.HostID).Faults, fault)
	return f.struck[key]
}

// record makes an injection visible: an Event on the Server naming the fault and the
// FaultInjection, the metric, and this host's entry in the FaultInjection's status (f.mu held).
func (f *Faults) record(ctx context.Context, s *stargatev1.Server, fi *stargatev1.FaultInjection, fault stargatev1.Fault, now time.Time) {
	f.struck[faults.LedgerKey(fi, fault.Name)] = f.count(fi, fault.Name) + 1
	what := string(fault.Type)
	if fault.Duration != nil {
		what += " for " + fault.Duration.Duration.String()
	}
	f.Recorder.Eventf(s, fi, corev1.EventTypeWarning, "FaultInjected", "InjectFault",
		"FaultInjection %s injects fault %s (%s) into the BMC of Server %s", fi.Name, fault.Name, what, s.Name)
	f.Metrics.FaultInjected(fault.Type)
	if err := f.applyStatus(ctx, fi, fault, s.Name, now); err != nil {
		f.Log.Error(err, "recording a BMC fault on its FaultInjection", "faultInjection", fi.Name, "fault", fault.Name)
	}
}

// hostEntry is the host's entry in fi's status (empty when it has none).
func hostEntry(fi *stargatev1.FaultInjection, host string) stargatev1.FaultInjectionHostStatus {
	for _, h := range fi.Status.Hosts {
		if h.Host == host {
			return h
		}
	}
	return stargatev1.FaultInjectionHostStatus{Host: host}
}

func countOf(counts []stargatev1.FaultCount, name string) int64 {
	for _, c := range counts {
		if c.Name == name {
			return c.Injected
		}
	}
	return 0
}

// describe names the fault for messages the BMC's client sees.
func describe(ep *episode) string {
	return fmt.Sprintf("fault %s of FaultInjection %s", ep.fault.Name, ep.fi.Name)
}

// NewBackend is the Backend of a host with the controller's options (wake: their Wake), as the
// simulator wires it: over the manager's readers, with the BMC faults of FaultInjections unless
// the options turn fault injection off. Its Faults go in the options' RunningFaults, so that FaultInjections'
// status says this host injects them.
func NewBackend(mgr ctrl.Manager, provider controller.Provider, copts controller.Options, wake chan<- event.GenericEvent,
	metrics *controller.Metrics) *Backend {
	return &Backend{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Provider: provider,
		Recorder: mgr.GetEventRecorder("stargate-bmc"), Locks: copts.Locks, HostID: copts.HostID, Wake: wake,
		MaxMemoryBytes: copts.MaxMemoryBytes, MaxCPUs: copts.MaxCPUs,
		Faults: &Faults{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("stargate-bmc"), Metrics: metrics, HostID: copts.HostID,
			Disabled: copts.DisableFaultInjection, Log: mgr.GetLogger().WithName("bmc-faults")}}
}
