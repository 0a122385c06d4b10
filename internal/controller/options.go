package controller

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	ctrlevent "sigs.k8s.io/controller-runtime/pkg/event"

	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Defaults of the reconcilers' options; the simulator's flags use the same values.
const (
	// DefaultPollInterval is how often a running Operation asks its provider for progress.
	DefaultPollInterval = 3 * time.Second
	// DefaultReferenceWait is how long an Operation waits for a missing Server, profile or Secret.
	DefaultReferenceWait = 2 * time.Minute
	// DefaultMaxConcurrentReconciles of the Operation and Server controllers.
	DefaultMaxConcurrentReconciles = 4
	// DefaultMachineChecksPerSecond is the budget of background machine checks.
	DefaultMachineChecksPerSecond = 20
)

// Options tune the reconcilers.
type Options struct {
	// HostID names this datacenter host (the simulator's --host-id, default the host name). It is
	// recorded in the status of the Servers this host owns and names this host's finalizers.
	HostID string
	// ServerSelector picks the Servers this controller manages; nil or empty means all. Operations
	// on other Servers are left alone, so several hosts can share one management cluster.
	ServerSelector labels.Selector
	// MaxParallel bounds how many Operations run at once; 0 means no bound. Excess Operations wait
	// in Pending.
	MaxParallel int
	// MaxMemoryBytes bounds the summed memory of the Servers being repaved at once; 0 means no bound.
	// A Server that needs more than this on its own fails at once (ExceedsHostCapacity).
	MaxMemoryBytes int64
	// MaxCPUs bounds the CPUs of one Server; 0 means no bound. A Server with more fails at once.
	MaxCPUs int
	// KeepFailedMachines leaves the machine of a failed Operation running, for debugging; by
	// default every failure after the server was touched powers it off.
	KeepFailedMachines bool
	// DisableFaultInjection turns FaultInjections off on this host (--fault-injection=false):
	// nothing is injected, and their status says so.
	DisableFaultInjection bool
	// RunningFaults injects the faults that strike while a Server exists (at Running): the
	// simulator's BMC service, when this host serves one. nil: this host injects none.
	RunningFaults FaultInjector
	// ReferenceWait is how long an Operation waits for a missing Server or profile before failing.
	ReferenceWait time.Duration
	// PollInterval is how often a running Operation is checked.
	PollInterval time.Duration
	// MaxConcurrentReconciles of the Operation and the Server controllers.
	MaxConcurrentReconciles int
	// MachineChecksPerSecond bounds the background checks of machines (is it still running?) that
	// nothing else asked for: each machine is checked every 30 s, or less often when that would
	// exceed this budget (10,000 machines at 20/s: each every 500 s). 0: every 30 s, whatever the
	// fleet's size.
	MachineChecksPerSecond float64
	// Now returns the current time; tests may replace it.
	Now func() time.Time

	// Locks serialise, per Server, the start of an Operation and a BMC request, so that the two
	// never race; share one between the reconcilers and the BMC. Nil: the reconcilers get their own.
	Locks *ServerLocks
	// Wake, when set, makes the Server reconciler look at the Servers sent on it now (the BMC sends
	// the Servers it changed, so that status shows the change at once).
	Wake <-chan ctrlevent.GenericEvent
	// Liveness, when set, runs the host observer (hostwatch.go) on this host, as a candidate of
	// its election. Nil: this host does not watch the others.
	Liveness *Liveness
	// RedfishURL is where this host serves Redfish (e.g. https://10.0.0.5:8443), or empty when it
	// does not; Servers with spec.bmc then show their BMC's address in status.bmc.
	RedfishURL string
}

// ServerLocks are per-Server mutexes.
type ServerLocks struct{ m sync.Map }

// Lock locks the Server's mutex and returns its unlock.
func (l *ServerLocks) Lock(server types.NamespacedName) func() {
	mu, _ := l.m.LoadOrStore(server, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	return mu.(*sync.Mutex).Unlock
}

// DefaultHostID is the host identity of a controller given none (tests, a single host).
const DefaultHostID = "default"

func (o *Options) defaults() {
	if o.HostID == "" {
		o.HostID = DefaultHostID
	}
	if o.ReferenceWait == 0 {
		o.ReferenceWait = DefaultReferenceWait
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.MaxConcurrentReconciles == 0 {
		o.MaxConcurrentReconciles = DefaultMaxConcurrentReconciles
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Locks == nil {
		o.Locks = &ServerLocks{}
	}
}

// manages reports whether a Server is this controller's (its labels match the selector).
func (o *Options) manages(server client.Object) bool {
	return o.ServerSelector == nil || o.ServerSelector.Matches(labels.Set(server.GetLabels()))
}

// selective reports whether this controller manages only some Servers.
func (o *Options) selective() bool {
	return o.ServerSelector != nil && !o.ServerSelector.Empty()
}
