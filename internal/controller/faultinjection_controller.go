package controller

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/faults"
)

// FaultInjectionReconciler writes this host's entry in a FaultInjection's status: what it injected
// (counted from the Operations' records, so a restart loses nothing) and whether it can inject
// every fault. Each host applies only its own entry, with a field manager of its own.
type FaultInjectionReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Provider Provider
	Options  Options
}

// Reasons of a FaultInjection host entry's Ready condition.
const (
	ReasonFaultsActive           = "Active"
	ReasonFaultInjectionDisabled = "FaultInjectionDisabled"
	ReasonFaultsInvalid          = "Invalid"
	ReasonFaultsUnsupported      = "FaultsUnsupported"
)

// Reconcile computes and applies this host's status entry.
func (r *FaultInjectionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	fi := &stargatev1.FaultInjection{}
	if err := r.Client.Get(ctx, req.NamespacedName, fi); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var ops stargatev1.OperationList
	if err := r.Client.List(ctx, &ops, client.InNamespace(fi.Namespace)); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing operations of namespace %s: %w", fi.Namespace, err)
	}
	var prev *stargatev1.FaultInjectionHostStatus
	for i := range fi.Status.Hosts {
		if fi.Status.Hosts[i].Host == r.Options.HostID {
			prev = &fi.Status.Hosts[i]
		}
	}
	entry := stargatev1.FaultInjectionHostStatus{Host: r.Options.HostID, ObservedGeneration: fi.Generation}
	entry.Faults, entry.Injected = r.counts(fi, ops.Items)
	// The BMC's counts (faults at Running) are written by the BMC with a field manager of its
	// own: kept as they are, counted in the total, never applied here.
	var bmcCounts []stargatev1.FaultCount
	if prev != nil {
		entry.Conditions = append(entry.Conditions, prev.Conditions...)
		for _, c := range prev.Faults {
			if faults.IsBMCEntry(fi, c.Name) {
				bmcCounts = append(bmcCounts, c)
				entry.Injected += c.Injected
			}
		}
	}
	ready := r.readiness(fi)
	ready.ObservedGeneration = fi.Generation
	meta.SetStatusCondition(&entry.Conditions, ready)
	if prev != nil && equality.Semantic.DeepEqual(*prev, withCounts(entry, bmcCounts)) {
		return ctrl.Result{}, nil
	}
	if err := r.apply(ctx, fi, entry); err != nil {
		return ctrl.Result{}, err
	}
	if was := readyOf(prev); ready.Status != metav1.ConditionTrue && (was == nil || was.Reason != ready.Reason) {
		r.Recorder.Eventf(fi, nil, corev1.EventTypeWarning, ready.Reason, "InjectFaults", "host %s: %s", r.Options.HostID, ready.Message)
	}
	return ctrl.Result{}, nil
}

// withCounts is entry with the counts more added, in name order, as the status lists them.
func withCounts(entry stargatev1.FaultInjectionHostStatus, more []stargatev1.FaultCount) stargatev1.FaultInjectionHostStatus {
	if len(more) == 0 {
		return entry
	}
	entry.Faults = append(slices.Clone(entry.Faults), more...)
	sort.Slice(entry.Faults, func(i, j int) bool { return entry.Faults[i].Name < entry.Faults[j].Name })
	return entry
}

func readyOf(h *stargatev1.FaultInjectionHostStatus) *metav1.Condition {
	if h == nil {
		return nil
	}
	return meta.FindStatusCondition(h.Conditions, stargatev1.ConditionReady)
}

// counts adds up what this host injected for fi, from the records on its Operations.
func (r *FaultInjectionReconciler) counts(fi *stargatev1.FaultInjection, ops []stargatev1.Operation) ([]stargatev1.FaultCount, int64) {
	byName := map[string]*stargatev1.FaultCount{}
	var total int64
	for _, op := range ops {
		for _, rec := range op.Status.Faults {
			if rec.FaultInjectionUID != string(fi.UID) || rec.Host != r.Options.HostID {
				continue
			}
			c := byName[rec.Fault.Name]
			if c == nil {
				c = &stargatev1.FaultCount{Name: rec.Fault.Name}
				byName[rec.Fault.Name] = c
			}
			c.Injected++
			total++
			if c.LastTime == nil || rec.Time.After(c.LastTime.Time) ||
				(rec.Time.Equal(c.LastTime) && op.Name > c.LastOperation) {
				t := rec.Time
				c.Type, c.LastServer, c.LastOperation, c.LastTime = rec.Fault.Type, op.Spec.ServerRef.Name, op.Name, &t
			}
		}
	}
	out := make([]stargatev1.FaultCount, 0, len(byName))
	for _, c := range byName {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, total
}

// readiness says whether this host injects every fault of fi, and if not, why.
func (r *FaultInjectionReconciler) readiness(fi *stargatev1.FaultInjection) metav1.Condition {
	c := metav1.Condition{Type: stargatev1.ConditionReady, Status: metav1.ConditionFalse}
	if r.Options.DisableFaultInjection {
		c.Reason, c.Message = ReasonFaultInjectionDisabled, "fault injection is turned off on this host (--fault-injection=false): nothing is injected"
		return c
	}
	if _, err := faults.ValidateInjection(fi); err != nil {
		c.Reason, c.Message = ReasonFaultsInvalid, truncate(err.Error(), maxConditionMessage)
		return c
	}
	injector, _ := r.Provider.(FaultInjector)
	var unsupported []string
	for _, f := range fi.Spec.Faults {
		if f.At != stargatev1.FaultAtRunning {
			if injector == nil || !injector.SupportsFault(f.Type, f.At) {
				unsupported = append(unsupported, fmt.Sprintf("%s (%s at %s)", f.Name, f.Type, f.At))
			}
			continue
		}
		switch running := r.Options.RunningFaults; {
		case injector != nil && injector.SupportsFault(f.Type, f.At): // decided with each repave
		case running != nil && running.SupportsFault(f.Type, f.At):
		case faults.IsBMC(f.Type):
			unsupported = append(unsupported, fmt.Sprintf("%s (%s: this host serves no Redfish BMC for its Servers, see --redfish-address)", f.Name, f.Type))
		default:
			unsupported = append(unsupported, fmt.Sprintf("%s (%s at Running: this host's provider does not inject it)", f.Name, f.Type))
		}
	}
	if len(unsupported) > 0 {
		c.Reason = ReasonFaultsUnsupported
		c.Message = truncate("this host's provider cannot inject "+strings.Join(unsupported, ", ")+"; it injects the other faults", maxConditionMessage)
		return c
	}
	c.Status, c.Reason, c.Message = metav1.ConditionTrue, ReasonFaultsActive, "this host injects every fault into the Servers it owns that the selector selects"
	return c
}

// apply writes this host's entry with server-side apply, leaving other hosts' entries alone.
func (r *FaultInjectionReconciler) apply(ctx context.Context, fi *stargatev1.FaultInjection, entry stargatev1.FaultInjectionHostStatus) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&entry)
	if err != nil {
		return fmt.Errorf("converting fault injection status: %w", err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": stargatev1.GroupVersion.String(),
		"kind":       "FaultInjection",
		"metadata":   map[string]any{"name": fi.Name, "namespace": fi.Namespace},
		"status":     map[string]any{"hosts": []any{m}},
	}}
	if err := r.Client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner("stargate-host-"+r.Options.HostID), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying status of fault injection %s: %w", fi.Name, client.IgnoreNotFound(err))
	}
	return nil
}

// SetupWithManager registers the reconciler: a FaultInjection's status follows its spec and the
// Operations that recorded its faults.
func (r *FaultInjectionReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options.defaults()
	return ctrl.NewControllerManagedBy(mgr).
		Named("faultinjection").
		For(&stargatev1.FaultInjection{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&stargatev1.Operation{}, handler.EnqueueRequestsFromMapFunc(faultInjectionsOfOperation)).
		Complete(r)
}

func faultInjectionsOfOperation(_ context.Context, o client.Object) []reconcile.Request {
	op, ok := o.(*stargatev1.Operation)
	if !ok {
		return nil
	}
	seen := map[string]bool{}
	var reqs []reconcile.Request
	for _, rec := range op.Status.Faults {
		if !seen[rec.FaultInjection] {
			seen[rec.FaultInjection] = true
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: op.Namespace, Name: rec.FaultInjection}})
		}
	}
	return reqs
}
