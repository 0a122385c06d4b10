// Package controller holds Stargate's provider-agnostic reconcilers: they read Operations,
// Servers and ProvisioningProfiles, decide what should happen, ask a Provider to do it and record
// the truth in status, conditions and Events.
package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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
)

// OperationFinalizer lets a running Operation power its Server off when the Operation is deleted
// mid-repave, so no half-built server keeps running.
const OperationFinalizer = "stargate.io/operation"

// serverRefIndex indexes Operations by the Server they act on.
const serverRefIndex = "spec.serverRef.name"

// Options tune the reconcilers.
type Options struct {
	// ServerSelector picks the Servers this controller manages; nil or empty means all. Operations
	// on other Servers are left alone, so several hosts can share one management cluster.
	ServerSelector labels.Selector
	// MaxParallel bounds how many repaves run at once; 0 means no bound. Excess Operations wait in
	// Pending.
	MaxParallel int
	// MaxMemoryBytes bounds the summed memory of the Servers being repaved at once; 0 means no bound.
	MaxMemoryBytes int64
	// ReferenceWait is how long an Operation waits for a missing Server or profile before failing.
	ReferenceWait time.Duration
	// PollInterval is how often a running repave is checked.
	PollInterval time.Duration
	// MaxConcurrentReconciles of the Operation controller.
	MaxConcurrentReconciles int
	// Now returns the current time; tests may replace it.
	Now func() time.Time
}

func (o *Options) defaults() {
	if o.ReferenceWait == 0 {
		o.ReferenceWait = 2 * time.Minute
	}
	if o.PollInterval == 0 {
		o.PollInterval = 5 * time.Second
	}
	if o.MaxConcurrentReconciles == 0 {
		o.MaxConcurrentReconciles = 4
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// OperationReconciler runs Operations.
type OperationReconciler struct {
	Client client.Client
	// APIReader reads Secrets uncached (only "get" is needed on them).
	APIReader client.Reader
	Recorder  events.EventRecorder
	Provider  Provider
	Options   Options
	Metrics   *Metrics

	// admitted holds the Operations started by this process and not yet finished, with their
	// memory, so capacity holds even while the cache lags behind our own status writes.
	mu       sync.Mutex
	admitted map[types.NamespacedName]int64
	// finished remembers Operations this process finished, by UID, until the cache shows them
	// final: a reconcile on a stale cache must not finish one twice (events, metrics).
	finished map[types.NamespacedName]types.UID
}

// +kubebuilder:rbac:groups=stargate.io,resources=operations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=operations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=operations/finalizers,verbs=update
// +kubebuilder:rbac:groups=stargate.io,resources=servers,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=servers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=stargate.io,resources=servers/finalizers,verbs=update
// +kubebuilder:rbac:groups=stargate.io,resources=provisioningprofiles,verbs=get;list;watch
// +kubebuilder:rbac:groups=stargate.io,resources=provisioningprofiles/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the reconciler and its watches.
func (r *OperationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options.defaults()
	r.admitted = map[types.NamespacedName]int64{}
	r.finished = map[types.NamespacedName]types.UID{}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &stargatev1.Operation{}, serverRefIndex,
		func(o client.Object) []string { return []string{o.(*stargatev1.Operation).Spec.ServerRef.Name} }); err != nil {
		return fmt.Errorf("indexing operations by server: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("operation").
		For(&stargatev1.Operation{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, deletingPredicate()))).
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

// Reconcile reads the Operation and what it refers to, decides the next step, acts, and records
// the result with one status write (only when something changed).
func (r *OperationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	op := &stargatev1.Operation{}
	if err := r.Client.Get(ctx, req.NamespacedName, op); err != nil {
		if apierrors.IsNotFound(err) {
			r.release(req.NamespacedName)
			r.forgetFinished(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if op.Spec.Operation != stargatev1.OperationRepave {
		return ctrl.Result{}, nil // another controller's kind of work
	}
	if !op.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, op)
	}
	if op.Status.Phase.IsFinal() {
		r.release(req.NamespacedName)
		r.forgetFinished(req.NamespacedName)
		// A finished Operation never runs again; only its finalizer may be left to drop.
		return ctrl.Result{}, r.removeFinalizer(ctx, op)
	}
	if r.finishedHere(req.NamespacedName, op.UID) {
		return ctrl.Result{RequeueAfter: time.Second}, nil // our final status is not in the cache yet
	}

	orig := op.DeepCopy()
	result, err := r.reconcileActive(ctx, op)
	if orig.Status.Phase != op.Status.Phase {
		logf.FromContext(ctx).Info("operation phase changed", "from", orig.Status.Phase, "to", op.Status.Phase, "server", op.Spec.ServerRef.Name, "message", firstLine(op.Status.Message))
	}
	if perr := r.patchStatus(ctx, orig, op); perr != nil && err == nil {
		err = perr
	}
	if op.Status.Phase.IsFinal() {
		r.release(req.NamespacedName)
		if err == nil {
			r.mu.Lock()
			r.finished[req.NamespacedName] = op.UID
			r.mu.Unlock()
		}
	}
	return result, err
}

func (r *OperationReconciler) finishedHere(key types.NamespacedName, uid types.UID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.finished[key] == uid
}

func (r *OperationReconciler) forgetFinished(key types.NamespacedName) {
	r.mu.Lock()
	delete(r.finished, key)
	r.mu.Unlock()
}

func (r *OperationReconciler) reconcileActive(ctx context.Context, op *stargatev1.Operation) (ctrl.Result, error) {
	now := r.Options.Now()

	server := &stargatev1.Server{}
	serverErr := r.Client.Get(ctx, types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ServerRef.Name}, server)
	if serverErr != nil && !apierrors.IsNotFound(serverErr) {
		return ctrl.Result{}, serverErr
	}
	serverFound := serverErr == nil
	if serverFound && !r.mine(server) {
		return ctrl.Result{}, nil // another datacenter's server
	}
	if !serverFound && r.Options.ServerSelector != nil && !r.Options.ServerSelector.Empty() {
		return ctrl.Result{}, nil // cannot tell whose it is; its owner will report
	}
	if op.Status.Phase == "" {
		op.Status.Phase = stargatev1.OperationPending
		op.Status.Message = "Waiting to start"
		r.Recorder.Eventf(op, nil, corev1.EventTypeNormal, "Accepted", "Accept", "Repave of Server %s accepted", op.Spec.ServerRef.Name)
	}
	op.Status.ObservedGeneration = op.Generation

	if op.Status.Phase == stargatev1.OperationRunning {
		return r.reconcileRunning(ctx, op, server, serverFound, now)
	}
	return r.reconcilePending(ctx, op, server, serverFound, now)
}

// reconcilePending starts the Operation once its references exist, its Server is free and the
// host has capacity; until then it explains what it waits for.
func (r *OperationReconciler) reconcilePending(ctx context.Context, op *stargatev1.Operation, server *stargatev1.Server, serverFound bool, now time.Time) (ctrl.Result, error) {
	waited := now.Sub(op.CreationTimestamp.Time)
	waitOrFail := func(reason, msg string) (ctrl.Result, error) {
		if waited >= r.Options.ReferenceWait {
			r.fail(op, nil, reason, fmt.Sprintf("%s; gave up after waiting %s", msg, r.Options.ReferenceWait.Round(time.Second)), now)
			return ctrl.Result{}, nil
		}
		r.wait(op, reason, fmt.Sprintf("%s; waiting up to %s for it to appear", msg, (r.Options.ReferenceWait-waited).Round(time.Second)))
		// Servers and profiles are watched; Secrets are not (only "get" on them), so look again soon.
		return ctrl.Result{RequeueAfter: min(r.Options.ReferenceWait-waited, 5*time.Second)}, nil
	}
	if !serverFound {
		return waitOrFail("ServerNotFound", fmt.Sprintf("Server %q does not exist in namespace %s: create it or fix spec.serverRef", op.Spec.ServerRef.Name, op.Namespace))
	}
	if !server.DeletionTimestamp.IsZero() {
		r.fail(op, nil, "ServerDeleting", fmt.Sprintf("Server %q is being deleted", server.Name), now)
		return ctrl.Result{}, nil
	}
	profile := &stargatev1.ProvisioningProfile{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ProvisioningProfileRef.Name}, profile); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		return waitOrFail("ProfileNotFound", fmt.Sprintf("ProvisioningProfile %q does not exist in namespace %s: create it or fix spec.provisioningProfileRef", op.Spec.ProvisioningProfileRef.Name, op.Namespace))
	}
	data, err := userData(ctx, r.APIReader, profile)
	if errors.Is(err, errSecretNotFound) {
		return waitOrFail("SecretNotFound", err.Error())
	}
	if err == nil {
		err = ValidateUserData(data)
	}
	if err != nil {
		r.fail(op, nil, "InvalidProfile", fmt.Sprintf("ProvisioningProfile %q is invalid: %v", profile.Name, err), now)
		return ctrl.Result{}, nil
	}

	// One Operation per Server at a time, in creation order.
	holder, err := r.serverHolder(ctx, op, server)
	if err != nil {
		return ctrl.Result{}, err
	}
	if holder != "" && holder != op.Name {
		r.wait(op, "ServerBusy", fmt.Sprintf("Waiting for Operation %s to finish on Server %s", holder, server.Name))
		// The holder finishing updates the Server, which wakes us; poll too, as the cache may
		// show the holder's end after the Server's.
		return ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil
	}
	if ok, why := r.admit(op, server); !ok {
		r.wait(op, "WaitingForCapacity", why)
		return ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil
	}

	// Claim the Server. The update carries the Server's resourceVersion, so of two Operations
	// racing for it only one wins; the loser retries and then sees the holder.
	if server.Status.State != stargatev1.ServerProvisioning || server.Status.LastOperation != op.Name {
		sorig := server.DeepCopy()
		server.Status.LastOperation = op.Name
		setServerState(server, stargatev1.ServerProvisioning, metav1.ConditionFalse, "Repaving",
			fmt.Sprintf("Repave by Operation %s with profile %s in progress", op.Name, profile.Name))
		if err := r.Client.Status().Patch(ctx, server, client.MergeFromWithOptions(sorig, client.MergeFromWithOptimisticLock{})); err != nil {
			r.release(client.ObjectKeyFromObject(op))
			if apierrors.IsConflict(err) {
				return ctrl.Result{Requeue: true}, nil
			}
			return ctrl.Result{}, fmt.Errorf("claiming server %s: %w", server.Name, err)
		}
		r.Recorder.Eventf(server, op, corev1.EventTypeNormal, "RepaveStarted", "Repave", "Repave by Operation %s with profile %s started", op.Name, profile.Name)
	}
	if controllerutil.AddFinalizer(op, OperationFinalizer) {
		status := op.Status
		if err := r.Client.Update(ctx, op); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
		op.Status = status
	}
	start := metav1.NewTime(now)
	op.Status.Phase = stargatev1.OperationRunning
	op.Status.StartTime = &start
	op.Status.Message = "Repave started"
	setCondition(op, stargatev1.ConditionScheduled, metav1.ConditionTrue, "Started", fmt.Sprintf("Holds Server %s", server.Name))
	r.Recorder.Eventf(op, server, corev1.EventTypeNormal, "Started", "Repave", "Repaving Server %s with profile %s", server.Name, profile.Name)
	return ctrl.Result{Requeue: true}, nil
}

// serverHolder returns the Operation that holds or may next take the Server: the one the Server
// says is repaving it (while that one is unfinished), else the oldest unfinished repave.
func (r *OperationReconciler) serverHolder(ctx context.Context, op *stargatev1.Operation, server *stargatev1.Server) (string, error) {
	var ops stargatev1.OperationList
	if err := r.Client.List(ctx, &ops, client.InNamespace(op.Namespace), client.MatchingFields{serverRefIndex: server.Name}); err != nil {
		return "", fmt.Errorf("listing operations of server %s: %w", server.Name, err)
	}
	var waiting []stargatev1.Operation
	for _, o := range ops.Items {
		if o.Spec.Operation != stargatev1.OperationRepave || o.Status.Phase.IsFinal() || !o.DeletionTimestamp.IsZero() {
			continue
		}
		if o.Status.Phase == stargatev1.OperationRunning {
			return o.Name, nil
		}
		if server.Status.State == stargatev1.ServerProvisioning && server.Status.LastOperation == o.Name {
			return o.Name, nil // claimed, not yet marked Running (crash in between)
		}
		waiting = append(waiting, o)
	}
	if len(waiting) == 0 {
		return op.Name, nil
	}
	sort.Slice(waiting, func(i, j int) bool {
		a, b := waiting[i], waiting[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Name < b.Name // same second: a stable, documented tie-break
	})
	return waiting[0].Name, nil
}

// admit reserves host capacity for op, or says why it must wait.
func (r *OperationReconciler) admit(op *stargatev1.Operation, server *stargatev1.Server) (bool, string) {
	key := client.ObjectKeyFromObject(op)
	mem := memoryBytes(server)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.admitted[key]; ok {
		return true, ""
	}
	running, usedMem := 0, int64(0)
	for _, m := range r.admitted {
		running++
		usedMem += m
	}
	if r.Options.MaxParallel > 0 && running >= r.Options.MaxParallel {
		return false, fmt.Sprintf("Waiting for host capacity: %d of %d parallel repaves running", running, r.Options.MaxParallel)
	}
	if r.Options.MaxMemoryBytes > 0 && usedMem+mem > r.Options.MaxMemoryBytes {
		return false, fmt.Sprintf("Waiting for host capacity: repaves in progress use %d MiB of %d MiB memory, this one needs %d MiB",
			usedMem>>20, r.Options.MaxMemoryBytes>>20, mem>>20)
	}
	r.admitted[key] = mem
	r.Metrics.setRunning(len(r.admitted))
	return true, ""
}

func (r *OperationReconciler) release(key types.NamespacedName) {
	r.mu.Lock()
	delete(r.admitted, key)
	r.Metrics.setRunning(len(r.admitted))
	r.mu.Unlock()
}

// readmit records a running Operation found after a restart, so capacity counts it.
func (r *OperationReconciler) readmit(op *stargatev1.Operation, server *stargatev1.Server) {
	r.mu.Lock()
	r.admitted[client.ObjectKeyFromObject(op)] = memoryBytes(server)
	r.Metrics.setRunning(len(r.admitted))
	r.mu.Unlock()
}

// reconcileRunning asks the provider for progress and records it.
func (r *OperationReconciler) reconcileRunning(ctx context.Context, op *stargatev1.Operation, server *stargatev1.Server, serverFound bool, now time.Time) (ctrl.Result, error) {
	if !serverFound || !server.DeletionTimestamp.IsZero() {
		if !serverFound {
			// The Server's finalizer released it already; release again in case a repave step of
			// ours raced with that and re-created something.
			if err := r.Provider.Release(ctx, types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ServerRef.Name}); err != nil {
				return ctrl.Result{}, fmt.Errorf("releasing deleted server %s: %w", op.Spec.ServerRef.Name, err)
			}
		}
		r.fail(op, nil, "ServerDeleted", fmt.Sprintf("Server %s was deleted during the repave", op.Spec.ServerRef.Name), now)
		return ctrl.Result{}, nil
	}
	r.readmit(op, server)
	if op.Spec.Timeout != nil && op.Status.StartTime != nil && now.Sub(op.Status.StartTime.Time) > op.Spec.Timeout.Duration {
		_ = r.Provider.PowerOff(ctx, client.ObjectKeyFromObject(server))
		r.fail(op, server, "Timeout", fmt.Sprintf("Timed out after %s (spec.timeout) %s; the server was powered off",
			op.Spec.Timeout.Duration, describeStuck(op)), now)
		return ctrl.Result{}, nil
	}
	profile := &stargatev1.ProvisioningProfile{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ProvisioningProfileRef.Name}, profile); err != nil {
		if apierrors.IsNotFound(err) {
			r.fail(op, server, "ProfileDeleted", fmt.Sprintf("ProvisioningProfile %s was deleted during the repave", op.Spec.ProvisioningProfileRef.Name), now)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}

	data, err := userData(ctx, r.APIReader, profile)
	if err != nil {
		if errors.Is(err, errSecretNotFound) {
			r.fail(op, server, "SecretDeleted", err.Error()+" (deleted during the repave)", now)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	st, err := r.Provider.Repave(ctx, repaveRequest(op, server, profile, data))
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("repave of server %s: %w", server.Name, err)
	}
	for _, s := range st.Steps {
		if applyStep(op, s) {
			r.Metrics.stepDone(op, s.Type, now)
		}
	}
	if st.IPAddress != "" && (server.Status.IPAddress != st.IPAddress || server.Status.MACAddress != st.MACAddress) {
		sorig := server.DeepCopy()
		server.Status.IPAddress, server.Status.MACAddress = st.IPAddress, st.MACAddress
		if err := r.Client.Status().Patch(ctx, server, client.MergeFrom(sorig)); err != nil {
			return ctrl.Result{}, fmt.Errorf("recording server address: %w", err)
		}
	}
	if st.Failed {
		r.fail(op, server, st.Reason, st.Message, now)
		return ctrl.Result{}, nil
	}
	if profile.Spec.JoinsCluster && !st.Done {
		if err := r.deleteStaleNode(ctx, op, server); err != nil {
			return ctrl.Result{}, err
		}
	}
	if !st.Done {
		op.Status.Message = currentStepMessage(st.Steps)
		return ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil
	}
	if profile.Spec.JoinsCluster {
		ready, msg, err := r.nodeReady(ctx, server)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !ready {
			setCondition(op, stargatev1.ConditionNodeReady, metav1.ConditionFalse, "WaitingForNode", msg)
			op.Status.Message = msg
			return ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil
		}
		setCondition(op, stargatev1.ConditionNodeReady, metav1.ConditionTrue, "NodeReady", msg)
	}
	return ctrl.Result{}, r.succeed(ctx, op, server, profile, st, now)
}

// deleteStaleNode deletes the Node of the previous installation — registered before this repave
// started — so the new one can join under the same name: kubeadm refuses to join over a Ready Node
// of that name, and a kubelet does not re-create a Node deleted after it registered. It runs only
// until the guest finishes cloud-init (which runs the join), so it never deletes the new Node.
func (r *OperationReconciler) deleteStaleNode(ctx context.Context, op *stargatev1.Operation, server *stargatev1.Server) error {
	node := &corev1.Node{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: server.Name}, node); err != nil {
		return client.IgnoreNotFound(err)
	}
	if op.Status.StartTime == nil || !node.CreationTimestamp.Before(op.Status.StartTime) {
		return nil
	}
	if err := r.Client.Delete(ctx, node, client.Preconditions{UID: &node.UID}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting stale node %s: %w", node.Name, err)
	}
	r.Recorder.Eventf(op, node, corev1.EventTypeNormal, "StaleNodeDeleted", "Repave", "Deleted Node %s of the previous installation so the new one can join", node.Name)
	return nil
}

// nodeReady reports whether the Node named after the Server is Ready.
func (r *OperationReconciler) nodeReady(ctx context.Context, server *stargatev1.Server) (bool, string, error) {
	node := &corev1.Node{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: server.Name}, node); err != nil {
		if apierrors.IsNotFound(err) {
			return false, fmt.Sprintf("Waiting for Node %s to join the cluster", server.Name), nil
		}
		return false, "", fmt.Errorf("reading node %s: %w", server.Name, err)
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == corev1.ConditionTrue {
				return true, fmt.Sprintf("Node %s is Ready", node.Name), nil
			}
			return false, fmt.Sprintf("Node %s joined but is not Ready yet: %s", node.Name, c.Message), nil
		}
	}
	return false, fmt.Sprintf("Node %s joined; waiting for its kubelet to report Ready", node.Name), nil
}

func (r *OperationReconciler) succeed(ctx context.Context, op *stargatev1.Operation, server *stargatev1.Server, profile *stargatev1.ProvisioningProfile, st RepaveStatus, now time.Time) error {
	sorig := server.DeepCopy()
	t := metav1.NewTime(now)
	setServerState(server, stargatev1.ServerReady, metav1.ConditionTrue, "Repaved",
		fmt.Sprintf("Installed with profile %s by Operation %s", profile.Name, op.Name))
	server.Status.IPAddress, server.Status.MACAddress = st.IPAddress, st.MACAddress
	server.Status.LastOperation = op.Name
	server.Status.ProvisioningProfile = profile.Name
	server.Status.InstanceID = InstanceID(op)
	server.Status.ProvisionedAt = &t
	server.Status.ObservedGeneration = server.Generation
	if err := r.Client.Status().Patch(ctx, server, client.MergeFrom(sorig)); err != nil {
		return fmt.Errorf("recording server %s ready: %w", server.Name, err)
	}
	op.Status.Phase = stargatev1.OperationSucceeded
	op.Status.CompletionTime = &t
	took := ""
	if op.Status.StartTime != nil {
		took = " in " + now.Sub(op.Status.StartTime.Time).Round(time.Second).String()
	}
	op.Status.Message = fmt.Sprintf("Server %s repaved%s; ready at %s", server.Name, took, st.IPAddress)
	setCondition(op, stargatev1.ConditionSucceeded, metav1.ConditionTrue, "Succeeded", op.Status.Message)
	r.Recorder.Eventf(op, server, corev1.EventTypeNormal, "Succeeded", "Repave", "%s", op.Status.Message)
	r.Recorder.Eventf(server, op, corev1.EventTypeNormal, "Provisioned", "Repave", "Ready at %s with profile %s", st.IPAddress, profile.Name)
	r.Metrics.finished(op)
	return nil
}

// fail finishes the Operation as Failed. With a server, the server is marked Error too (a repave
// that failed left it unusable); without, the server was never touched.
func (r *OperationReconciler) fail(op *stargatev1.Operation, server *stargatev1.Server, reason, msg string, now time.Time) {
	t := metav1.NewTime(now)
	op.Status.Phase = stargatev1.OperationFailed
	op.Status.CompletionTime = &t
	op.Status.Message = msg
	setCondition(op, stargatev1.ConditionSucceeded, metav1.ConditionFalse, reason, msg)
	r.Recorder.Eventf(op, nil, corev1.EventTypeWarning, "Failed", "Repave", "%s", firstLine(msg))
	r.Metrics.finished(op)
	if server == nil {
		return
	}
	sorig := server.DeepCopy()
	server.Status.LastOperation = op.Name
	setServerState(server, stargatev1.ServerError, metav1.ConditionFalse, reason, fmt.Sprintf("Repave by Operation %s failed: %s", op.Name, firstLine(msg)))
	// Best effort: the Operation's own status carries the failure even if this write is lost.
	if err := r.Client.Status().Patch(context.Background(), server, client.MergeFrom(sorig)); err == nil {
		r.Recorder.Eventf(server, op, corev1.EventTypeWarning, "ProvisioningFailed", "Repave", "%s", truncate(server.Status.Message, 1024))
	}
}

// wait keeps the Operation Pending with a reason.
func (r *OperationReconciler) wait(op *stargatev1.Operation, reason, msg string) {
	op.Status.Message = msg
	setCondition(op, stargatev1.ConditionScheduled, metav1.ConditionFalse, reason, msg)
}

func (r *OperationReconciler) reconcileDelete(ctx context.Context, op *stargatev1.Operation) error {
	if !controllerutil.ContainsFinalizer(op, OperationFinalizer) {
		return nil
	}
	if op.Status.Phase == stargatev1.OperationRunning {
		key := types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ServerRef.Name}
		if err := r.Provider.PowerOff(ctx, key); err != nil {
			return fmt.Errorf("powering off server %s of deleted operation: %w", key.Name, err)
		}
		server := &stargatev1.Server{}
		if err := r.Client.Get(ctx, key, server); err == nil && server.Status.LastOperation == op.Name {
			sorig := server.DeepCopy()
			setServerState(server, stargatev1.ServerError, metav1.ConditionFalse, "OperationDeleted",
				fmt.Sprintf("Repave interrupted: Operation %s was deleted while running; the server is powered off. Create a new repave Operation to install it.", op.Name))
			if err := r.Client.Status().Patch(ctx, server, client.MergeFrom(sorig)); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("recording interrupted repave on server %s: %w", server.Name, err)
			}
			r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, "RepaveInterrupted", "Repave", "%s", server.Status.Message)
		}
	}
	r.release(client.ObjectKeyFromObject(op))
	return r.removeFinalizer(ctx, op)
}

func (r *OperationReconciler) removeFinalizer(ctx context.Context, op *stargatev1.Operation) error {
	if !controllerutil.RemoveFinalizer(op, OperationFinalizer) {
		return nil
	}
	if err := r.Client.Update(ctx, op); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	return nil
}

// patchStatus writes the status when it changed, and only then.
func (r *OperationReconciler) patchStatus(ctx context.Context, orig, op *stargatev1.Operation) error {
	if equality.Semantic.DeepEqual(orig.Status, op.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, op, client.MergeFrom(orig)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("updating operation status: %w", err)
	}
	return nil
}

func (r *OperationReconciler) mine(server *stargatev1.Server) bool {
	return r.Options.ServerSelector == nil || r.Options.ServerSelector.Matches(labelsOf(server))
}

// InstanceID is the installation identity of a repave: unique per Operation, stable across
// controller restarts.
func InstanceID(op *stargatev1.Operation) string {
	return "stargate-" + string(op.UID)
}

func repaveRequest(op *stargatev1.Operation, server *stargatev1.Server, profile *stargatev1.ProvisioningProfile, userData []byte) RepaveRequest {
	req := RepaveRequest{
		Server:        client.ObjectKeyFromObject(server),
		InstanceID:    InstanceID(op),
		CPUs:          int(server.Spec.CPUs),
		MemoryMiB:     memoryBytes(server) >> 20,
		DiskBytes:     20 << 30,
		MAC:           server.Spec.MACAddress,
		ImageURL:      profile.Spec.Image.URL,
		ImageChecksum: profile.Spec.Image.Checksum,
		UserData:      userData,
	}
	if req.CPUs == 0 {
		req.CPUs = 2
	}
	if server.Spec.Disk != nil {
		req.DiskBytes = server.Spec.Disk.Value()
	}
	if req.ImageURL == "" {
		req.ImageURL = stargatev1.DefaultImageURL
	}
	return req
}

func memoryBytes(server *stargatev1.Server) int64 {
	if server.Spec.Memory != nil {
		return server.Spec.Memory.Value()
	}
	return 4 << 30
}

// applyStep records a provider step as the Operation condition of the same type, and reports
// whether the step has just finished.
func applyStep(op *stargatev1.Operation, s Step) bool {
	wasDone := meta.IsStatusConditionTrue(op.Status.Conditions, s.Type)
	status, reason := metav1.ConditionUnknown, s.Reason
	switch s.State {
	case StepDone:
		status = metav1.ConditionTrue
	case StepFailed:
		status = metav1.ConditionFalse
	case StepInProgress:
		status = metav1.ConditionFalse
	}
	if reason == "" {
		reason = string(s.State)
	}
	setCondition(op, s.Type, status, reason, s.Message)
	return !wasDone && status == metav1.ConditionTrue
}

func setCondition(op *stargatev1.Operation, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&op.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: truncate(msg, 32*1024), ObservedGeneration: op.Generation,
	})
}

func currentStepMessage(steps []Step) string {
	for _, s := range steps {
		if s.State != StepDone {
			if s.Message != "" {
				return s.Message
			}
			return fmt.Sprintf("Waiting for %s", s.Type)
		}
	}
	return "Finishing"
}

// describeStuck names the step an Operation was in, for timeout messages.
func describeStuck(op *stargatev1.Operation) string {
	for _, c := range op.Status.Conditions {
		if c.Status != metav1.ConditionTrue && c.Type != stargatev1.ConditionSucceeded && c.Type != stargatev1.ConditionScheduled {
			return fmt.Sprintf("while at step %s (%s)", c.Type, c.Message)
		}
	}
	return ""
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func labelsOf(o client.Object) labels.Set { return labels.Set(o.GetLabels()) }
