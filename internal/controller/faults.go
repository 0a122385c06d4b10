package controller

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// FaultInjector is an optional interface of a Provider that can make faults real. The controller
// decides which faults strike an Operation (FaultInjections, probabilities, firstN) and hands them
// over in RepaveRequest.Faults; the provider makes each strike when the repave reaches its step,
// and reports the consequence as it would any failure.
type FaultInjector interface {
	// SupportsFault reports whether the provider can inject a fault of type t at at (a repave step
	// or stargatev1.FaultAtRunning).
	SupportsFault(t stargatev1.FaultType, at string) bool
}

// maxFaultsPerOperation is the most faults recorded on one Operation (status.faults' MaxItems):
// a namespace may hold any number of FaultInjections, an Operation's status may not grow without
// bound.
const maxFaultsPerOperation = 256

// maxFaultDuration bounds every duration parameter, as the CRD does (checked again here: the
// CRD may be older than this controller).
const maxFaultDuration = time.Hour

// validateFault checks a fault the way admission does: tenants write these.
func validateFault(f stargatev1.Fault) error {
	if f.Name == "" || len(f.Name) > 63 {
		return errors.New("a fault needs a name of 1 to 63 characters")
	}
	if (f.Probability == nil) == (f.FirstN == nil) {
		return fmt.Errorf("fault %s: give exactly one of probability and firstN", f.Name)
	}
	if f.Probability != nil {
		if _, err := parseProbability(*f.Probability); err != nil {
			return fmt.Errorf("fault %s: %w", f.Name, err)
		}
	}
	if f.FirstN != nil && (*f.FirstN < 1 || *f.FirstN > 100000) {
		return fmt.Errorf("fault %s: firstN must be 1 to 100000", f.Name)
	}
	if f.At != stargatev1.FaultAtRunning && !slices.Contains(stargatev1.RepaveSteps, f.At) {
		return fmt.Errorf("fault %s: at %q is neither a repave step nor Running", f.Name, f.At)
	}
	if f.FailedTries != nil && (*f.FailedTries < 1 || *f.FailedTries > 100) {
		return fmt.Errorf("fault %s: failedTries must be 1 to 100", f.Name)
	}
	if f.Percent != nil && (*f.Percent < 0 || *f.Percent > 100) {
		return fmt.Errorf("fault %s: percent must be 0 to 100", f.Name)
	}
	if f.Duration != nil && (f.Duration.Duration <= 0 || f.Duration.Duration > maxFaultDuration) {
		return fmt.Errorf("fault %s: duration must be more than 0s and at most %s", f.Name, maxFaultDuration)
	}
	if f.Type == stargatev1.FaultImageServerError && f.FailedTries == nil {
		return fmt.Errorf("fault %s: ImageServerError needs failedTries", f.Name)
	}
	if (f.Type == stargatev1.FaultHang || f.Type == stargatev1.FaultNetworkPartition) && f.Duration == nil {
		return fmt.Errorf("fault %s: %s needs a duration", f.Name, f.Type)
	}
	return nil
}

// parseProbability reads "0" to "1".
func parseProbability(s string) (float64, error) {
	p, err := strconv.ParseFloat(s, 64)
	if err != nil || p < 0 || p > 1 || len(s) > 6 {
		return 0, fmt.Errorf("probability %q must be a number from 0 to 1, e.g. 0.5", s)
	}
	return p, nil
}

// validateFaultInjection checks a whole FaultInjection and returns its selector.
func validateFaultInjection(fi *stargatev1.FaultInjection) (labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(&fi.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("spec.selector: %w", err)
	}
	if len(fi.Spec.Faults) == 0 || len(fi.Spec.Faults) > 32 {
		return nil, errors.New("spec.faults must list 1 to 32 faults")
	}
	for _, f := range fi.Spec.Faults {
		if err := validateFault(f); err != nil {
			return nil, err
		}
	}
	return sel, nil
}

// drawFault is the probability draw of one fault for one Operation: seeded by the
// (FaultInjection, Operation, fault) triple, so that it comes out the same every time it is made.
func drawFault(fiUID, opUID types.UID, fault string, p float64) bool {
	h := fnv.New64a()
	_, _ = h.Write([]byte(string(fiUID) + "/" + string(opUID) + "/" + fault))
	seed := h.Sum64()
	return rand.New(rand.NewPCG(seed, seed>>1|1)).Float64() < p
}

// faultLedger remembers this process's firstN decisions that its cache may not show yet, so that
// two Operations reconciled at once cannot both take the last of N.
type faultLedger struct {
	mu sync.Mutex
	// taken maps FaultInjection UID/fault name to the Operations it was injected into.
	taken map[string]map[types.UID]struct{}
}

func (l *faultLedger) count(key string, cached map[types.UID]struct{}) int {
	n := len(cached)
	for uid := range l.taken[key] {
		if _, ok := cached[uid]; !ok {
			n++
		}
	}
	return n
}

// has reports whether this process injected the fault into op already (a decision whose status
// write was lost, made again).
func (l *faultLedger) has(key string, op types.UID) bool {
	_, ok := l.taken[key][op]
	return ok
}

func (l *faultLedger) take(key string, op types.UID) {
	if l.taken == nil {
		l.taken = map[string]map[types.UID]struct{}{}
	}
	if l.taken[key] == nil {
		l.taken[key] = map[types.UID]struct{}{}
	}
	l.taken[key][op] = struct{}{}
}

// faultsDecided reports whether the faults of a repave were decided already: once the provider
// reported a step, or once one was recorded. They are decided once, before the repave starts, so
// that a restart or a changed FaultInjection never injects into the same repave again.
func faultsDecided(op *stargatev1.Operation) bool {
	return len(op.Status.Faults) > 0 || meta.FindStatusCondition(op.Status.Conditions, stargatev1.RepaveSteps[0]) != nil
}

// decideFaults records on the Operation which faults of its namespace's FaultInjections strike
// this repave, with an Event on the Server and on the Operation for each, and counts them.
func (r *OperationReconciler) decideFaults(ctx context.Context, s *operationScope) error {
	if r.Options.DisableFaultInjection || faultsDecided(s.op) || s.server == nil || s.server.Status.Host != r.Options.HostID {
		return nil
	}
	injector, _ := r.Provider.(FaultInjector)
	if injector == nil {
		return nil // the FaultInjection's status says why (FaultsUnsupported)
	}
	var fis stargatev1.FaultInjectionList
	if err := r.Client.List(ctx, &fis, client.InNamespace(s.op.Namespace)); err != nil {
		return fmt.Errorf("listing fault injections: %w", err)
	}
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	for i := range fis.Items {
		fi := &fis.Items[i]
		if fi.Namespace != s.server.Namespace || !fi.DeletionTimestamp.IsZero() {
			continue
		}
		sel, err := validateFaultInjection(fi)
		if err != nil || !sel.Matches(labels.Set(s.server.Labels)) {
			continue // an invalid one is reported on its status
		}
		for _, f := range fi.Spec.Faults {
			if f.At == stargatev1.FaultAtRunning || !injector.SupportsFault(f.Type, f.At) {
				continue // reported on the FaultInjection's status
			}
			strikes, err := r.strikes(ctx, fi, f, s.op)
			if err != nil {
				return err
			}
			if !strikes {
				continue
			}
			if len(s.op.Status.Faults) >= maxFaultsPerOperation {
				s.event(s.op, fi, corev1.EventTypeWarning, "TooManyFaults", fmt.Sprintf(
					"fault %s of FaultInjection %s is not injected: Operation %s has %d faults already, the most one takes",
					f.Name, fi.Name, s.op.Name, maxFaultsPerOperation))
				return nil
			}
			r.faults.take(ledgerKey(fi, f.Name), s.op.UID)
			s.op.Status.Faults = append(s.op.Status.Faults, stargatev1.InjectedFault{FaultInjection: fi.Name,
				FaultInjectionUID: string(fi.UID), Host: r.Options.HostID, Time: metav1.NewTime(s.now), Fault: f})
			note := fmt.Sprintf("FaultInjection %s injects fault %s (%s) at %s of Operation %s", fi.Name, f.Name, f.Type, f.At, s.op.Name)
			s.event(s.op, fi, corev1.EventTypeWarning, "FaultInjected", note)
			s.event(s.server, fi, corev1.EventTypeWarning, "FaultInjected", note)
			typ := f.Type
			s.metrics = append(s.metrics, func(m *Metrics) { m.faultInjected(typ) })
		}
	}
	return nil
}

func ledgerKey(fi *stargatev1.FaultInjection, fault string) string {
	return string(fi.UID) + "/" + fault
}

// strikes decides whether fault f of fi strikes op: by its probability draw, or while fewer than
// firstN Operations had it.
func (r *OperationReconciler) strikes(ctx context.Context, fi *stargatev1.FaultInjection, f stargatev1.Fault, op *stargatev1.Operation) (bool, error) {
	if f.Probability != nil {
		p, err := parseProbability(*f.Probability)
		return err == nil && drawFault(fi.UID, op.UID, f.Name, p), nil
	}
	key := ledgerKey(fi, f.Name)
	if r.faults.has(key, op.UID) {
		return true, nil
	}
	var ops stargatev1.OperationList
	if err := r.Client.List(ctx, &ops, client.InNamespace(fi.Namespace)); err != nil {
		return false, fmt.Errorf("listing operations to count fault %s: %w", f.Name, err)
	}
	cached := map[types.UID]struct{}{}
	for _, o := range ops.Items {
		for _, rec := range o.Status.Faults {
			if rec.FaultInjectionUID == string(fi.UID) && rec.Fault.Name == f.Name {
				cached[o.UID] = struct{}{}
			}
		}
	}
	return r.faults.count(key, cached) < int(*f.FirstN), nil
}

// faultsOf lists the faults recorded on an Operation for its provider.
func faultsOf(op *stargatev1.Operation) []stargatev1.Fault {
	var out []stargatev1.Fault
	for _, rec := range op.Status.Faults {
		out = append(out, rec.Fault)
	}
	return out
}
