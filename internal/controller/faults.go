package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/faults"
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
	r.faults.Lock()
	defer r.faults.Unlock()
	for i := range fis.Items {
		fi := &fis.Items[i]
		if fi.Namespace != s.server.Namespace || !fi.DeletionTimestamp.IsZero() {
			continue
		}
		sel, err := faults.ValidateInjection(fi)
		if err != nil || !sel.Matches(labels.Set(s.server.Labels)) {
			continue // an invalid one is reported on its status
		}
		for _, f := range fi.Spec.Faults {
			// Faults at Running go with the repave when the provider makes them (node faults
			// strike its installation once it runs); a BMC's are decided by the BMC.
			if !injector.SupportsFault(f.Type, f.At) {
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
			r.faults.Take(faults.LedgerKey(fi, f.Name), s.op.UID)
			s.op.Status.Faults = append(s.op.Status.Faults, stargatev1.InjectedFault{FaultInjection: fi.Name,
				FaultInjectionUID: string(fi.UID), Host: r.Options.HostID, Time: metav1.NewTime(s.now), Fault: f})
			note := fmt.Sprintf("FaultInjection %s injects fault %s (%s) at %s of Operation %s", fi.Name, f.Name, f.Type, f.At, s.op.Name)
			if f.At == stargatev1.FaultAtRunning {
				note = fmt.Sprintf("FaultInjection %s injects fault %s (%s) into the installation of Operation %s: it strikes once the installation runs",
					fi.Name, f.Name, f.Type, s.op.Name)
			}
			s.event(s.op, fi, corev1.EventTypeWarning, "FaultInjected", note)
			s.event(s.server, fi, corev1.EventTypeWarning, "FaultInjected", note)
			typ := f.Type
			s.metrics = append(s.metrics, func(m *Metrics) { m.faultInjected(typ) })
		}
	}
	return nil
}

// strikes decides whether fault f of fi strikes op: by its probability draw, or while fewer than
// firstN Operations had it.
func (r *OperationReconciler) strikes(ctx context.Context, fi *stargatev1.FaultInjection, f stargatev1.Fault, op *stargatev1.Operation) (bool, error) {
	if f.Probability != nil {
		p, err := faults.ParseProbability(*f.Probability)
		return err == nil && faults.Draw(fi.UID, op.UID, f.Name, p), nil
	}
	key := faults.LedgerKey(fi, f.Name)
	if r.faults.Has(key, op.UID) {
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
	return r.faults.Count(key, cached) < int(*f.FirstN), nil
}

// faultsOf lists the faults recorded on an Operation for its provider.
func faultsOf(op *stargatev1.Operation) []stargatev1.Fault {
	var out []stargatev1.Fault
	for _, rec := range op.Status.Faults {
		out = append(out, rec.Fault)
	}
	return out
}
