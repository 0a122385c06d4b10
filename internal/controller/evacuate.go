package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/hostlease"
)

// EvacuateReconciler runs evacuate Operations: the explicit hand-over of a lost host's Server. It
// runs on every host, but only the elected host observer acts, judging the owner by the same
// clock that showed it lost: one judge, so two hosts can never disagree about a hand-over.
type EvacuateReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  events.EventRecorder
	observer  *hostObserver
	now       func() time.Time
}

// SetupWithManager watches evacuate Operations only.
func (r *EvacuateReconciler) SetupWithManager(mgr ctrl.Manager) error {
	isEvacuate := predicate.NewPredicateFuncs(func(o client.Object) bool {
		op, ok := o.(*stargatev1.Operation)
		return ok && op.Spec.Operation == stargatev1.OperationEvacuate
	})
	return ctrl.NewControllerManagedBy(mgr).Named("evacuate").
		For(&stargatev1.Operation{}, builder.WithPredicates(isEvacuate)).Complete(r)
}

// Reconcile evacuates the Operation's Server when its owner is lost, or refuses.
func (r *EvacuateReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	op := &stargatev1.Operation{}
	if err := r.Client.Get(ctx, req.NamespacedName, op); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if op.Spec.Operation != stargatev1.OperationEvacuate || op.Status.Phase.IsFinal() || !op.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	now := r.now()
	if !r.observer.leading() {
		return ctrl.Result{RequeueAfter: r.observer.opts.Interval * 4}, nil // the leader runs it
	}
	// The Server is read from the API server: a hand-over must not act on a stale cache.
	server := &stargatev1.Server{}
	key := types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ServerRef.Name}
	if err := r.APIReader.Get(ctx, key, server); apierrors.IsNotFound(err) {
		return ctrl.Result{}, r.finish(ctx, op, false, "ServerNotFound", fmt.Sprintf("Server %s does not exist in namespace %s", key.Name, key.Namespace))
	} else if err != nil {
		return ctrl.Result{}, fmt.Errorf("reading server %s: %w", key, err)
	}
	owner := server.Status.Host
	if owner == "" {
		if server.Status.LastOperation == op.Name { // evacuated by this Operation before a restart
			return ctrl.Result{}, r.finish(ctx, op, true, "Evacuated", fmt.Sprintf("Server %s was evacuated (host epoch %d)", key.Name, server.Status.HostEpoch))
		}
		return ctrl.Result{}, r.finish(ctx, op, false, "NotOwned", fmt.Sprintf("Server %s has no owner host (status.host is empty): "+
			"there is nothing to evacuate; a repave installs it on a host whose selector matches", key.Name))
	}
	v, leading := r.observer.verdict(owner, now)
	switch {
	case !leading:
		return ctrl.Result{RequeueAfter: r.observer.opts.Interval * 4}, nil
	case v.State == hostlease.Alive:
		return ctrl.Result{}, r.finish(ctx, op, false, "HostNotLost", fmt.Sprintf("Host %s renewed its Lease %s within the grace period (%s) "+
			"as host observer %s sees it: only a lost host's Servers are evacuated. Its selector hands a Server over when it no longer matches it",
			owner, v.Lease, r.observer.opts.Grace, r.observer.opts.Identity))
	case v.State == hostlease.Undecided:
		if op.Status.Phase == "" {
			op.Status.Phase, op.Status.Message = stargatev1.OperationPending,
				fmt.Sprintf("Waiting to judge host %s: the host observer has not watched its Lease for a full grace period yet", owner)
			if err := r.Client.Status().Update(ctx, op); err != nil {
				return ctrl.Result{}, client.IgnoreNotFound(err)
			}
		}
		return ctrl.Result{RequeueAfter: r.observer.opts.Interval * 2}, nil
	}
	if err := r.evacuate(ctx, op, server, v); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.finish(ctx, op, true, "Evacuated", fmt.Sprintf("Server %s evacuated from lost host %s (Lease %s unrenewed since %s "+
		"as host observer %s sees it); host epoch %d. A repave now installs it on a host whose selector matches",
		key.Name, owner, v.Lease, v.Since.UTC().Format(time.RFC3339), r.observer.opts.Identity, server.Status.HostEpoch))
}

// evacuate takes the Server from the lost host: its Operations first (running ones fail, all lose
// the host's finalizer), then the Server's finalizer, then ownership — each step idempotent, so a
// restart half-way resumes. Ownership goes last, with an optimistic lock: a Server whose owner
// changed meanwhile is not touched.
func (r *EvacuateReconciler) evacuate(ctx context.Context, op *stargatev1.Operation, server *stargatev1.Server, v hostlease.Verdict) error {
	lost := server.Status.Host
	ops, err := OperationsOf(ctx, r.APIReader, client.ObjectKeyFromObject(server))
	if err != nil {
		return err
	}
	for i := range ops {
		other := &ops[i]
		if other.Name == op.Name || other.Spec.Operation == stargatev1.OperationEvacuate {
			continue
		}
		if err := r.releaseOperation(ctx, other, lost); err != nil {
			return err
		}
	}
	if controllerutil.RemoveFinalizer(server, ServerFinalizer(lost)) {
		if err := r.Client.Update(ctx, server); err != nil {
			return fmt.Errorf("removing lost host %s's finalizer from server %s: %w", lost, server.Name, err)
		}
	}
	orig := server.DeepCopy()
	st := &server.Status
	st.Host, st.HostEpoch, st.LastOperation = "", st.HostEpoch+1, op.Name
	st.State = stargatev1.ServerAvailable
	st.Message = fmt.Sprintf("Evacuated from lost host %s by Operation %s: create a repave Operation to install it on another host", lost, op.Name)
	st.IPAddress, st.MACAddress, st.InstanceID, st.PowerState = "", "", "", stargatev1.PowerUnknown
	meta.RemoveStatusCondition(&st.Conditions, stargatev1.ConditionHostReachable)
	meta.SetStatusCondition(&st.Conditions, provisionedCondition(false, "Evacuated", st.Message))
	if err := r.Client.Status().Patch(ctx, server, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("clearing the owner of server %s: %w", server.Name, err)
	}
	r.Recorder.Eventf(server, op, corev1.EventTypeWarning, "Evacuated", "Evacuate",
		"Host observer %s took this Server from lost host %s (Lease unrenewed since %s) for Operation %s; host epoch %d",
		r.observer.opts.Identity, lost, v.Since.UTC().Format(time.RFC3339), op.Name, st.HostEpoch)
	return nil
}

// releaseOperation frees an Operation of the lost host: one that ran there fails (its machine is
// out of reach), one that waited is left for the next owner; neither keeps the host's finalizer.
func (r *EvacuateReconciler) releaseOperation(ctx context.Context, op *stargatev1.Operation, lost string) error {
	if !op.Status.Phase.IsFinal() {
		orig := op.DeepCopy()
		meta.RemoveStatusCondition(&op.Status.Conditions, stargatev1.ConditionHostReachable)
		if op.Status.Phase == stargatev1.OperationRunning {
			now := metav1.NewTime(r.now())
			op.Status.Phase, op.Status.CompletionTime = stargatev1.OperationFailed, &now
			op.Status.Message = fmt.Sprintf("Failed: its host %s was lost and the Server was evacuated", lost)
			meta.SetStatusCondition(&op.Status.Conditions, succeededCondition(false, "HostEvacuated", op.Status.Message))
		}
		if err := r.Client.Status().Patch(ctx, op, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return fmt.Errorf("releasing operation %s of lost host %s: %w", op.Name, lost, err)
		}
	}
	if controllerutil.RemoveFinalizer(op, OperationFinalizer(lost)) {
		if err := r.Client.Update(ctx, op); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("removing lost host %s's finalizer from operation %s: %w", lost, op.Name, err)
		}
	}
	return nil
}

// finish records the evacuation's verdict.
func (r *EvacuateReconciler) finish(ctx context.Context, op *stargatev1.Operation, ok bool, reason, msg string) error {
	now := metav1.NewTime(r.now())
	orig := op.DeepCopy()
	if op.Status.StartTime == nil {
		op.Status.StartTime = &now
	}
	op.Status.CompletionTime, op.Status.Message, op.Status.ObservedGeneration = &now, msg, op.Generation
	op.Status.Phase = stargatev1.OperationFailed
	kind := corev1.EventTypeWarning
	if ok {
		op.Status.Phase, kind = stargatev1.OperationSucceeded, corev1.EventTypeNormal
	}
	meta.SetStatusCondition(&op.Status.Conditions, succeededCondition(ok, reason, msg))
	if err := r.Client.Status().Patch(ctx, op, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return client.IgnoreNotFound(fmt.Errorf("recording evacuation %s: %w", op.Name, err))
	}
	r.Recorder.Eventf(op, nil, kind, reason, "Evacuate", "%s", msg)
	return nil
}
