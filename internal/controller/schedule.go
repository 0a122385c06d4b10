package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// gate is one decision on the way through a phase: it lets the Operation through (next), or stops
// it here — waiting, failed, or done for this reconcile — with the result to return.
type gate func(ctx context.Context, r *OperationReconciler, s *operationScope) (result ctrl.Result, next bool, err error)

// pass lets the Operation through a gate.
func pass() (ctrl.Result, bool, error) { return ctrl.Result{}, true, nil }

// stop ends the phase handler here with result.
func stop(result ctrl.Result, err error) (ctrl.Result, bool, error) { return result, false, err }

// throughGates runs gates in order until one stops the Operation.
func (r *OperationReconciler) throughGates(ctx context.Context, s *operationScope, gates ...gate) (ctrl.Result, error) {
	for _, g := range gates {
		result, next, err := g(ctx, r, s)
		if err != nil || !next {
			return result, err
		}
	}
	return ctrl.Result{}, nil
}

// schedule starts a Pending Operation once its references exist and are valid, the host has
// capacity and its Server is free; until then it says what it waits for.
func (r *OperationReconciler) schedule(ctx context.Context, s *operationScope) (ctrl.Result, error) {
	s.op.Status.ObservedGeneration = s.op.Generation
	gates := []gate{gatePendingTimeout, gateServerExists}
	if s.op.Spec.Operation == stargatev1.OperationRepave {
		gates = append(gates, gateProfileExists, gateUserData, gateNodeName, gateFits, gateCapacity)
	}
	return r.throughGates(ctx, s, append(gates, gateClaim)...)
}

// gatePendingTimeout bounds the time an Operation may wait to start by its spec.timeout, counted
// from its creation: it then fails with the reason it was waiting for.
func gatePendingTimeout(_ context.Context, _ *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if s.op.Spec.Timeout == nil || s.now.Sub(s.op.CreationTimestamp.Time) <= s.op.Spec.Timeout.Duration {
		return pass()
	}
	reason, why := "Timeout", "it was never scheduled"
	if c := meta.FindStatusCondition(s.op.Status.Conditions, stargatev1.ConditionScheduled); c != nil && c.Status != metav1.ConditionTrue {
		reason, why = c.Reason, c.Message
	}
	s.fail(reason, fmt.Sprintf("Could not start within %s (spec.timeout): %s", s.op.Spec.Timeout.Duration, why))
	return stop(ctrl.Result{}, nil)
}

// gateFits fails at once an Operation whose Server can never fit this host's limits, instead of
// letting it wait forever.
func gateFits(_ context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if err := FitsHost(&s.server.Spec, s.server.Name, r.Options.MaxMemoryBytes, r.Options.MaxCPUs); err != nil {
		s.fail("ExceedsHostCapacity", err.Error())
		return stop(ctrl.Result{}, nil)
	}
	return pass()
}

// ExceedsHostError is FitsHost's answer for a machine larger than this host allows.
type ExceedsHostError struct{ Message string }

func (e *ExceedsHostError) Error() string { return e.Message }

// FitsHost checks a Server's machine against the limits one machine must fit on this host
// (--max-memory, --max-cpus; 0 means no bound): a repave's, and a blank machine's before its BMC
// may power it on. The *ExceedsHostError says which limit and what to change.
func FitsHost(spec *stargatev1.ServerSpec, name string, maxMemoryBytes int64, maxCPUs int) error {
	mem, cpus := spec.MemoryBytes(), spec.CPUCount()
	switch {
	case maxMemoryBytes > 0 && mem > maxMemoryBytes:
		return &ExceedsHostError{fmt.Sprintf("Server %s needs %d MiB of memory (spec.memory), more than the %d MiB this host lets repaves use "+
			"(simulator flag --max-memory): lower spec.memory or raise --max-memory", name, mem>>20, maxMemoryBytes>>20)}
	case maxCPUs > 0 && cpus > maxCPUs:
		return &ExceedsHostError{fmt.Sprintf("Server %s needs %d CPUs (spec.cpus), more than the %d this host gives one server "+
			"(simulator flag --max-cpus): lower spec.cpus or raise --max-cpus", name, cpus, maxCPUs)}
	}
	return nil
}

// waitOrFail keeps the Operation Pending for a missing reference until Options.ReferenceWait has
// passed since its creation, then fails it.
func (r *OperationReconciler) waitOrFail(s *operationScope, reason, msg string) (ctrl.Result, bool, error) {
	waited := s.now.Sub(s.op.CreationTimestamp.Time)
	if waited >= r.Options.ReferenceWait {
		s.fail(reason, fmt.Sprintf("%s; gave up after waiting %s", msg, r.Options.ReferenceWait.Round(time.Second)))
		return stop(ctrl.Result{}, nil)
	}
	s.wait(reason, fmt.Sprintf("%s; waiting up to %s for it to appear", msg, (r.Options.ReferenceWait-waited).Round(time.Second)))
	// Servers and profiles are watched; Secrets are not (only "get" on them), so look again soon.
	return stop(ctrl.Result{RequeueAfter: min(r.Options.ReferenceWait-waited, 5*time.Second)}, nil)
}

func gateServerExists(_ context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	switch {
	case s.server == nil:
		return r.waitOrFail(s, "ServerNotFound", fmt.Sprintf("Server %q does not exist in namespace %s: create it or fix spec.serverRef",
			s.op.Spec.ServerRef.Name, s.op.Namespace))
	case !s.server.DeletionTimestamp.IsZero():
		s.fail("ServerDeleting", fmt.Sprintf("Server %q is being deleted", s.server.Name))
		return stop(ctrl.Result{}, nil)
	}
	return pass()
}

func gateProfileExists(_ context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if s.profile == nil {
		ref := s.op.Spec.ProvisioningProfileRef
		return r.waitOrFail(s, "ProfileNotFound", fmt.Sprintf("ProvisioningProfile %q does not exist in namespace %s: create it or fix spec.provisioningProfileRef",
			ref.Name, s.op.Namespace))
	}
	return pass()
}

// gateUserData reads the profile's user-data (perhaps from a Secret) and checks it before any
// server is touched.
func gateUserData(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	data, err := userData(ctx, r.APIReader, s.profile)
	if errors.Is(err, errSecretNotFound) {
		return r.waitOrFail(s, "SecretNotFound", err.Error())
	}
	if err == nil {
		err = validateProfile(s.profile, data)
	}
	if errors.Is(err, errSecretNotAllowed) {
		s.fail("SecretNotAllowed", err.Error())
		return stop(ctrl.Result{}, nil)
	}
	if err != nil {
		s.fail("InvalidProfile", fmt.Sprintf("ProvisioningProfile %q is invalid: %v", s.profile.Name, err))
		return stop(ctrl.Result{}, nil)
	}
	s.userData = data
	return pass()
}

// gateCapacity reserves room on the host (parallel repaves, memory), counting the Operations that
// were already running when this controller started.
func gateCapacity(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if err := r.capacity.warmUp(func() (map[types.NamespacedName]int64, error) { return r.runningOperations(ctx) }); err != nil {
		return stop(ctrl.Result{}, err)
	}
	if ok, why := r.capacity.admit(s.key(), s.server.Spec.MemoryBytes()); !ok {
		s.wait("WaitingForCapacity", why)
		return stop(ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil)
	}
	return pass()
}

// gateClaim starts the Operation when it is its Server's turn: one Operation per Server at a time,
// in creation order. The decision is made under a per-Server lock on a fresh (uncached) list of
// the Server's Operations, and the lock is held until the Running status is saved, so two workers
// never start two Operations on one Server.
func gateClaim(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	cached, err := OperationsOf(ctx, r.Client, s.serverKey())
	if err != nil {
		return stop(ctrl.Result{}, err)
	}
	if holder := nextInLine(cached); holder != nil && holder.Name != s.op.Name {
		return waitForTurn(r, s, holder)
	}
	unlock := r.Options.Locks.Lock(s.serverKey())
	s.afterSave = append(s.afterSave, unlock)
	live, err := OperationsOf(ctx, r.APIReader, s.serverKey())
	if err != nil {
		return stop(ctrl.Result{}, err)
	}
	if holder := nextInLine(live); holder != nil && holder.Name != s.op.Name {
		return waitForTurn(r, s, holder)
	}
	start := metav1.NewTime(s.now)
	s.op.Status.Phase = stargatev1.OperationRunning
	s.op.Status.StartTime = &start
	s.op.Status.Message = actionOf(s.op) + " started"
	s.setCondition(scheduledCondition(true, "Started", fmt.Sprintf("Holds Server %s", s.server.Name)))
	what := fmt.Sprintf("%s of Server %s started", actionOf(s.op), s.server.Name)
	if s.profile != nil {
		what = fmt.Sprintf("Repaving Server %s with profile %s", s.server.Name, s.profile.Name)
	}
	s.event(s.op, s.server, corev1.EventTypeNormal, "Started", what)
	return stop(ctrl.Result{RequeueAfter: time.Millisecond}, nil) // run the first step right away
}

func waitForTurn(r *OperationReconciler, s *operationScope, holder *stargatev1.Operation) (ctrl.Result, bool, error) {
	r.capacity.release(s.key())
	s.wait("ServerBusy", fmt.Sprintf("Waiting for Operation %s to finish on Server %s", holder.Name, s.server.Name))
	// The holder finishing wakes us through its Server; poll too, as the cache may lag.
	return stop(ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil)
}

// nextInLine returns the Operation that holds a Server or may take it next: the running one, else
// the oldest unfinished one of any kind (ties by name, as creation times have one-second resolution). Deleted
// and finished Operations never hold a Server.
func nextInLine(ops []stargatev1.Operation) *stargatev1.Operation {
	var waiting []*stargatev1.Operation
	for i := range ops {
		o := &ops[i]
		if o.Status.Phase.IsFinal() || !o.DeletionTimestamp.IsZero() {
			continue
		}
		if o.Status.Phase == stargatev1.OperationRunning {
			return o
		}
		waiting = append(waiting, o)
	}
	if len(waiting) == 0 {
		return nil
	}
	sort.Slice(waiting, func(i, j int) bool {
		a, b := waiting[i], waiting[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Name < b.Name
	})
	return waiting[0]
}

// runningOperations lists the Running Operations this controller manages, with their memory.
func (r *OperationReconciler) runningOperations(ctx context.Context) (map[types.NamespacedName]int64, error) {
	var ops stargatev1.OperationList
	if err := r.Client.List(ctx, &ops); err != nil {
		return nil, err
	}
	running := map[types.NamespacedName]int64{}
	for i := range ops.Items {
		op := &ops.Items[i]
		if op.Status.Phase != stargatev1.OperationRunning {
			continue
		}
		server := &stargatev1.Server{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ServerRef.Name}, server); err != nil {
			if client.IgnoreNotFound(err) != nil {
				return nil, err
			}
			continue
		}
		if r.Options.manages(server) {
			running[client.ObjectKeyFromObject(op)] = server.Spec.MemoryBytes()
		}
	}
	return running, nil
}

// wait keeps the Operation Pending with a reason; the message says since when it waits.
func (s *operationScope) wait(reason, msg string) {
	msg = fmt.Sprintf("%s (pending since %s)", msg, s.op.CreationTimestamp.UTC().Format(time.RFC3339))
	s.op.Status.Message = msg
	s.setCondition(scheduledCondition(false, reason, msg))
}

// fail finishes the Operation as Failed. The Server's reconciler reports on the Server.
func (s *operationScope) fail(reason, msg string) {
	t := metav1.NewTime(s.now)
	s.op.Status.Phase = stargatev1.OperationFailed
	s.op.Status.CompletionTime = &t
	s.op.Status.Message = msg
	s.setCondition(succeededCondition(false, reason, msg))
	s.event(s.op, s.serverObject(), corev1.EventTypeWarning, "Failed", firstLine(msg))
	op := s.op
	s.metrics = append(s.metrics, func(m *Metrics) { m.finished(op) })
}
