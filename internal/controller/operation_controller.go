// Package controller holds Stargate's provider-agnostic reconcilers: they read Operations,
// Servers and ProvisioningProfiles, decide what should happen, ask a Provider to do it and record
// the truth in status, conditions and Events.
package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/faults"
)

// serverRefIndex indexes Operations by the Server they act on (also a selectable field of the CRD,
// so the API server can filter on it for uncached reads).
const serverRefIndex = "spec.serverRef.name"

// conflictRetry is how soon a reconcile that lost an optimistic-lock race runs again.
const conflictRetry = 200 * time.Millisecond

// OperationReconciler runs Operations: the lifecycle is the phase table below, each phase a
// handler made of ordered gates (schedule.go, run.go).
type OperationReconciler struct {
	Client client.Client
	// APIReader reads uncached: Secrets (only "get" is needed on them) and, when an Operation is
	// about to start, the Operations of its Server.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Provider  Provider
	Options   Options
	Metrics   *Metrics

	capacity *capacity
	// faults remembers this process's firstN decisions.
	faults faults.Ledger
	// finalizer is this host's OperationFinalizer.
	finalizer string
}

// phaseHandler moves an unfinished Operation of one phase forward.
type phaseHandler func(r *OperationReconciler, ctx context.Context, s *operationScope) (ctrl.Result, error)

// operationLifecycle maps each unfinished phase to its handler: an Operation is accepted, then
// scheduled (it waits until its references exist, the host has room and its Server is free), then
// run by the provider until it succeeds or fails. Finished Operations are never run again.
var operationLifecycle = map[stargatev1.OperationPhase]phaseHandler{
	"":                            (*OperationReconciler).accept,
	stargatev1.OperationPending:   (*OperationReconciler).schedule,
	stargatev1.OperationRunning:   (*OperationReconciler).run,
	stargatev1.OperationSucceeded: (*OperationReconciler).finished,
	stargatev1.OperationFailed:    (*OperationReconciler).finished,
}

// +kubebuilder:rbac:groups=stargate.io,resources=operations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=operations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=operations/finalizers,verbs=update
// +kubebuilder:rbac:groups=stargate.io,resources=servers,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=servers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=servers/finalizers,verbs=update
// +kubebuilder:rbac:groups=stargate.io,resources=provisioningprofiles,verbs=get;list;watch
// +kubebuilder:rbac:groups=stargate.io,resources=provisioningprofiles/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=faultinjections,verbs=get;list;watch
// +kubebuilder:rbac:groups=stargate.io,resources=faultinjections/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile loads the Operation and what it refers to once, runs the handler of its phase, then
// saves the status once (only when it changed) and only then records events and metrics.
func (r *OperationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, err error) {
	s, err := r.loadOperation(ctx, req.NamespacedName)
	if err != nil || s == nil {
		if s == nil && err == nil {
			r.capacity.release(req.NamespacedName)
		}
		return ctrl.Result{}, err
	}
	if !r.owns(s) {
		return ctrl.Result{}, nil
	}
	if !s.op.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, s)
	}
	if !s.op.Status.Phase.IsFinal() && controllerutil.AddFinalizer(s.op, r.finalizer) {
		status := s.op.Status
		if err := r.Client.Update(ctx, s.op); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
		s.op.Status = status
		s.orig = s.op.DeepCopy()
	}

	defer func() {
		saved, serr := r.saveOperation(ctx, s)
		for _, f := range s.afterSave {
			f()
		}
		if serr != nil || !saved {
			// Capacity stays held: our view was stale, and the Operation may well be running.
			// Its next reconcile releases it if it must wait after all.
			err = errors.Join(err, serr)
			if serr == nil && err == nil {
				result = ctrl.Result{RequeueAfter: conflictRetry}
			}
			return
		}
		if s.orig.Status.Phase != s.op.Status.Phase {
			logf.FromContext(ctx).Info("operation phase changed", "from", s.orig.Status.Phase, "to", s.op.Status.Phase,
				"server", s.op.Spec.ServerRef.Name, "message", firstLine(s.op.Status.Message))
		}
		r.emit(s)
		if s.op.Status.Phase.IsFinal() && !s.orig.Status.Phase.IsFinal() {
			err = errors.Join(err, r.finish(ctx, s))
		}
	}()
	return operationLifecycle[s.op.Status.Phase](r, ctx, s)
}

// owns reports whether this host runs the Operation: only Operations of kinds it knows, on Servers
// it owns (status.host). It starts new ones only while the Server still matches its selector (a
// relabelled Server is handed over once its running Operation ends), and it always finishes what it
// guards with its finalizer. An Operation whose Server is missing is left to whichever host
// manages that Server, unless this host manages all Servers.
func (r *OperationReconciler) owns(s *operationScope) bool {
	if s.op.Spec.Operation != stargatev1.OperationRepave && !s.op.Spec.Operation.IsPower() {
		return false
	}
	guarded := controllerutil.ContainsFinalizer(s.op, r.finalizer)
	switch {
	case s.server == nil:
		return guarded || !r.Options.selective()
	case s.server.Status.Host != r.Options.HostID:
		return guarded && s.server.Status.Host == ""
	}
	return guarded || s.op.Status.Phase == stargatev1.OperationRunning || r.Options.manages(s.server)
}

// accept takes a new Operation: it is Pending until scheduled.
func (r *OperationReconciler) accept(ctx context.Context, s *operationScope) (ctrl.Result, error) {
	s.op.Status.Phase = stargatev1.OperationPending
	s.op.Status.Message = "Waiting to start"
	s.op.Status.ObservedGeneration = s.op.Generation
	s.event(s.op, nil, corev1.EventTypeNormal, "Accepted", fmt.Sprintf("%s of Server %s accepted", actionOf(s.op), s.op.Spec.ServerRef.Name))
	return r.schedule(ctx, s)
}

// finished makes sure a finished Operation holds nothing: no capacity, no finalizer (a crash may
// have come between its final status and their release).
func (r *OperationReconciler) finished(ctx context.Context, s *operationScope) (ctrl.Result, error) {
	return ctrl.Result{}, r.finish(ctx, s)
}

// finish releases what a finished Operation held.
func (r *OperationReconciler) finish(ctx context.Context, s *operationScope) error {
	r.capacity.release(s.key())
	return r.removeFinalizer(ctx, s.op)
}

// reconcileDelete powers off the Server of an Operation deleted while running (the Server's
// reconciler then reports the interruption), returns its capacity and lets it go.
func (r *OperationReconciler) reconcileDelete(ctx context.Context, s *operationScope) error {
	if !controllerutil.ContainsFinalizer(s.op, r.finalizer) {
		return nil
	}
	if s.op.Status.Phase == stargatev1.OperationRunning {
		err := r.Provider.PowerOff(ctx, s.serverKey())
		if err != nil && !errors.Is(err, ErrUntouched) {
			return fmt.Errorf("powering off server %s of deleted operation: %w", s.op.Spec.ServerRef.Name, err)
		}
		if s.server != nil && err == nil {
			r.Recorder.Eventf(s.server, s.op, corev1.EventTypeWarning, "RepaveInterrupted", actionOf(s.op),
				"Operation %s was deleted while running; the server is powered off", s.op.Name)
		}
	}
	r.capacity.release(s.key())
	return r.removeFinalizer(ctx, s.op)
}

func (r *OperationReconciler) removeFinalizer(ctx context.Context, op *stargatev1.Operation) error {
	if !controllerutil.RemoveFinalizer(op, r.finalizer) {
		return nil
	}
	if err := r.Client.Update(ctx, op); err != nil {
		return client.IgnoreNotFound(err)
	}
	return nil
}

// SetupWithManager registers the reconciler and its watches.
func (r *OperationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options.defaults()
	r.finalizer = OperationFinalizer(r.Options.HostID)
	r.capacity = newCapacity(r.Options.MaxParallel, r.Options.MaxMemoryBytes, r.Metrics.setRunning)
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &stargatev1.Operation{}, serverRefIndex,
		func(o client.Object) []string { return []string{o.(*stargatev1.Operation).Spec.ServerRef.Name} }); err != nil {
		return fmt.Errorf("indexing operations by server: %w", err)
	}
	b := ctrl.NewControllerManagedBy(mgr)
	if n, ok := r.Provider.(Notifier); ok {
		// A provider that notices a finished guest by itself wakes its Operation at once.
		b = b.WatchesRawSource(r.changesSource(n))
	}
	return b.
		Named("operation").
		For(&stargatev1.Operation{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{},
			predicate.AnnotationChangedPredicate{}, deletingPredicate()))).
		// A Server or profile appearing, changing or finishing an Operation may unblock waiting ones.
		Watches(&stargatev1.Server{}, handler.EnqueueRequestsFromMapFunc(r.operationsOfServer)).
		Watches(&stargatev1.ProvisioningProfile{}, handler.EnqueueRequestsFromMapFunc(r.operationsOfProfile)).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.operationsOfNode)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.MaxConcurrentReconciles}).
		Complete(r)
}

func deletingPredicate() predicate.Predicate {
	return predicate.NewPredicateFuncs(func(o client.Object) bool { return !o.GetDeletionTimestamp().IsZero() })
}

func (r *OperationReconciler) operationsOfServer(ctx context.Context, o client.Object) []reconcile.Request {
	var ops stargatev1.OperationList
	if err := r.Client.List(ctx, &ops, client.InNamespace(o.GetNamespace()), client.MatchingFields{serverRefIndex: o.GetName()}); err != nil {
		return nil
	}
	return requestsFor(ops.Items, func(op *stargatev1.Operation) bool { return !op.Status.Phase.IsFinal() })
}

func (r *OperationReconciler) operationsOfProfile(ctx context.Context, o client.Object) []reconcile.Request {
	var ops stargatev1.OperationList
	if err := r.Client.List(ctx, &ops, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	return requestsFor(ops.Items, func(op *stargatev1.Operation) bool {
		return !op.Status.Phase.IsFinal() && op.Spec.ProvisioningProfileRef != nil && op.Spec.ProvisioningProfileRef.Name == o.GetName()
	})
}

// operationsOfNode wakes running Operations on Servers named like the Node (NodeReady).
func (r *OperationReconciler) operationsOfNode(ctx context.Context, o client.Object) []reconcile.Request {
	var ops stargatev1.OperationList
	if err := r.Client.List(ctx, &ops, client.MatchingFields{serverRefIndex: o.GetName()}); err != nil {
		return nil
	}
	return requestsFor(ops.Items, func(op *stargatev1.Operation) bool { return op.Status.Phase == stargatev1.OperationRunning })
}

func requestsFor(ops []stargatev1.Operation, keep func(*stargatev1.Operation) bool) []reconcile.Request {
	var reqs []reconcile.Request
	for i := range ops {
		if keep(&ops[i]) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&ops[i])})
		}
	}
	return reqs
}

// InstanceID is the installation identity of a repave: unique per Operation, stable across
// controller restarts.
func InstanceID(op *stargatev1.Operation) string {
	return "stargate-" + string(op.UID)
}

// OperationsOf lists the Operations of one Server. With the manager's cached client it uses the
// field index, with an uncached reader the CRD's selectable field: the same key either way.
func OperationsOf(ctx context.Context, reader client.Reader, server types.NamespacedName) ([]stargatev1.Operation, error) {
	var ops stargatev1.OperationList
	if err := reader.List(ctx, &ops, client.InNamespace(server.Namespace), client.MatchingFields{serverRefIndex: server.Name}); err != nil {
		return nil, fmt.Errorf("listing operations of server %s: %w", server.Name, err)
	}
	return ops.Items, nil
}

// RunningOperation returns the Operation running on a Server among its Operations, or nil.
func RunningOperation(ops []stargatev1.Operation) *stargatev1.Operation {
	for i := range ops {
		if ops[i].Status.Phase == stargatev1.OperationRunning {
			return &ops[i]
		}
	}
	return nil
}
