package controller

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// healthInterval is how often a server's machine is checked at most, when nothing else made the
// Server reconcile; Options.MachineChecksPerSecond stretches it for large fleets.
const healthInterval = 30 * time.Second

// ServerReconciler of the owning host is the only writer of a Server's status, which it computes
// from the Server's Operations and its machine (server_status.go). It takes unowned Servers that
// match the host's selector, hands relabelled ones over, and releases what a deleted Server held.
type ServerReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Provider Provider
	Options  Options

	// finalizer is this host's ServerFinalizer.
	finalizer string
	// checked are the Servers whose machine is looked at again in the background.
	checked machineChecks
}

// machineChecks spreads the background checks of machines: each is looked at every healthInterval,
// or less often when that would make more than the budget of checks per second, so that an idle
// fleet of ten thousand machines costs no more than one of a few hundred.
type machineChecks struct {
	perSecond float64
	mu        sync.Mutex
	keys      map[types.NamespacedName]struct{}
}

// next records whether server's machine is checked in the background, and returns when to look
// again (zero: not at all), with a tenth of jitter so that checks do not come in waves.
func (m *machineChecks) next(server types.NamespacedName, exists bool) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = map[types.NamespacedName]struct{}{}
	}
	if !exists {
		delete(m.keys, server)
		return 0
	}
	m.keys[server] = struct{}{}
	every := healthInterval
	if m.perSecond > 0 {
		every = max(every, time.Duration(float64(len(m.keys))/m.perSecond*float64(time.Second)))
	}
	return every - every/10 + rand.N(every/5)
}

// SetupWithManager registers the reconciler; every change of an Operation wakes its Server.
func (r *ServerReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options.defaults()
	r.finalizer = ServerFinalizer(r.Options.HostID)
	r.checked.perSecond = r.Options.MachineChecksPerSecond
	b := ctrl.NewControllerManagedBy(mgr).Named("server").For(&stargatev1.Server{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.MaxConcurrentReconciles}).
		Watches(&stargatev1.Operation{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			op := o.(*stargatev1.Operation)
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ServerRef.Name}}}
		}))
	if r.Options.Wake != nil {
		b = b.WatchesRawSource(source.Channel(r.Options.Wake, &handler.EnqueueRequestForObject{}))
	}
	return b.Complete(r)
}

// Reconcile takes, keeps, hands over or releases the Server, and records its status.
func (r *ServerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	server := &stargatev1.Server{}
	if err := r.Client.Get(ctx, req.NamespacedName, server); err != nil {
		r.checked.next(req.NamespacedName, false)
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	me, owner := r.Options.HostID, server.Status.Host
	guarded := controllerutil.ContainsFinalizer(server, r.finalizer)
	if !server.DeletionTimestamp.IsZero() || (owner != "" && owner != me) || !r.Options.manages(server) {
		r.checked.next(req.NamespacedName, false) // not this host's machine to watch (any more)
	}
	switch {
	case !server.DeletionTimestamp.IsZero():
		if !guarded {
			return ctrl.Result{}, nil
		}
		if owner == me {
			if saved, err := r.saveStatus(ctx, server, desiredServerStatus(serverObservation{server: server})); err != nil || !saved {
				return ctrl.Result{RequeueAfter: conflictRetry}, err
			}
		}
		return ctrl.Result{}, r.release(ctx, server)
	case owner != "" && owner != me:
		if guarded { // this host held it once: release what is left here
			return ctrl.Result{}, r.release(ctx, server)
		}
		if err := r.fence(ctx, server); err != nil {
			return ctrl.Result{}, err
		}
		if r.Options.manages(server) {
			r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, "OwnedByAnotherHost", "Take",
				"Host %s matches this Server but leaves it alone: host %s owns it (status.host)", me, owner)
		}
		return ctrl.Result{}, nil
	case !r.Options.manages(server):
		if owner == me {
			return r.handOver(ctx, server)
		}
		return ctrl.Result{}, r.fence(ctx, server)
	}

	// This host's Server (or free to take): finalizer first, then ownership, then status.
	if controllerutil.AddFinalizer(server, r.finalizer) {
		if err := r.Client.Update(ctx, server); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	if owner == "" {
		next := *server.Status.DeepCopy()
		next.Host = me
		if saved, err := r.saveStatus(ctx, server, next); err != nil || !saved {
			return ctrl.Result{RequeueAfter: conflictRetry}, err // another host may have taken it
		}
		r.Recorder.Eventf(server, nil, corev1.EventTypeNormal, "Taken", "Take", "Host %s owns this Server", me)
	}
	obs, err := r.observe(ctx, server)
	if err != nil {
		return ctrl.Result{}, err
	}
	if saved, err := r.saveStatus(ctx, server, desiredServerStatus(obs)); err != nil || !saved {
		return ctrl.Result{RequeueAfter: conflictRetry}, err
	}
	// A machine can stop (or start) without any Kubernetes change: look again, so powerState and
	// MachineStopped stay true.
	return ctrl.Result{RequeueAfter: r.checked.next(req.NamespacedName, obs.machine != nil && obs.machine.Exists)}, nil
}

// observe reads what the Server's status is computed from: its Operations and its machine.
func (r *ServerReconciler) observe(ctx context.Context, server *stargatev1.Server) (serverObservation, error) {
	obs := serverObservation{server: server, redfishURL: r.Options.RedfishURL}
	ops, err := OperationsOf(ctx, r.Client, client.ObjectKeyFromObject(server))
	if err != nil {
		return obs, err
	}
	obs.ops = ops
	if server.Status.State != "" || len(ops) > 0 {
		info, err := r.Provider.Inspect(ctx, client.ObjectKeyFromObject(server))
		if err != nil {
			return obs, fmt.Errorf("inspecting server: %w", err)
		}
		obs.machine = &info
	}
	return obs, nil
}

// handOver gives up a Server that no longer matches this host's selector, once no Operation runs
// on it: this host releases its machine and lets another host take it.
func (r *ServerReconciler) handOver(ctx context.Context, server *stargatev1.Server) (ctrl.Result, error) {
	ops, err := OperationsOf(ctx, r.Client, client.ObjectKeyFromObject(server))
	if err != nil {
		return ctrl.Result{}, err
	}
	if RunningOperation(ops) != nil {
		return ctrl.Result{RequeueAfter: healthInterval}, nil // the next reconcile hands over
	}
	if err := r.release(ctx, server); err != nil {
		return ctrl.Result{}, err
	}
	next := *server.Status.DeepCopy()
	next.Host = ""
	next.State, next.Message = stargatev1.ServerAvailable, fmt.Sprintf("Released by host %s: the Server no longer matches its selector", r.Options.HostID)
	next.IPAddress, next.MACAddress, next.InstanceID = "", "", ""
	if saved, err := r.saveStatus(ctx, server, next); err != nil || !saved {
		return ctrl.Result{RequeueAfter: conflictRetry}, err
	}
	r.Recorder.Eventf(server, nil, corev1.EventTypeNormal, "HandedOver", "Take", "Host %s released this Server: it no longer matches its selector", r.Options.HostID)
	return ctrl.Result{}, nil
}

// fence destroys this host's machine of a Server that was evacuated from it (status.hostEpoch > 0)
// and that it no longer holds, so that a host that returns — restarted or reconnected — never runs
// a second machine with the Server's identity. It never writes the Server's status: another host
// owns it, or will. Machines are local to their host (each simulator, each mock datacenter).
func (r *ServerReconciler) fence(ctx context.Context, server *stargatev1.Server) error {
	if server.Status.HostEpoch == 0 || controllerutil.ContainsFinalizer(server, r.finalizer) {
		return nil
	}
	info, err := r.Provider.Inspect(ctx, client.ObjectKeyFromObject(server))
	if err != nil || !info.Exists {
		return err
	}
	logf.FromContext(ctx).Info("fencing: destroying the local machine of a Server this host no longer owns",
		"owner", server.Status.Host, "hostEpoch", server.Status.HostEpoch)
	if err := r.Provider.Release(ctx, client.ObjectKeyFromObject(server)); err != nil {
		return fmt.Errorf("fencing server %s: %w", server.Name, err)
	}
	r.Recorder.Eventf(server, nil, corev1.EventTypeNormal, "Fenced", "Fence",
		"Host %s destroyed its stale machine of this Server: it was evacuated from this host (host epoch %d)", r.Options.HostID, server.Status.HostEpoch)
	return nil
}

// saveStatus writes the Server's status when it changed, then records the Event its transition
// deserves. It reports false when the Server changed since it was read (the next reconcile
// computes again from the truth).
func (r *ServerReconciler) saveStatus(ctx context.Context, server *stargatev1.Server, next stargatev1.ServerStatus) (bool, error) {
	if equality.Semantic.DeepEqual(server.Status, next) {
		return true, nil
	}
	orig := server.DeepCopy()
	server.Status = next
	if err := r.Client.Status().Patch(ctx, server, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("updating server status: %w", err)
	}
	if e, ok := serverTransitionEvent(orig.Status, server.Status); ok {
		r.Recorder.Eventf(server, nil, e.eventtype, e.reason, "Status", "%s", e.note)
	}
	return true, nil
}

// release frees what this host held for the Server, then drops this host's finalizer.
func (r *ServerReconciler) release(ctx context.Context, server *stargatev1.Server) error {
	if !controllerutil.ContainsFinalizer(server, r.finalizer) {
		return nil
	}
	if err := r.Provider.Release(ctx, client.ObjectKeyFromObject(server)); err != nil {
		r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, "ReleaseFailed", "Delete", "Releasing the server's resources failed (will retry): %v", err)
		return fmt.Errorf("releasing server %s: %w", server.Name, err)
	}
	if err := r.deleteNode(ctx, server); err != nil {
		return err
	}
	r.Recorder.Eventf(server, nil, corev1.EventTypeNormal, "Released", "Delete", "Machine, disks, network attachment and IP address released")
	controllerutil.RemoveFinalizer(server, r.finalizer)
	if err := r.Client.Update(ctx, server); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	return nil
}

// deleteNode removes the Node the Server's installation registered, so a deleted Server does not
// linger as a NotReady Node. Only a Node named after the Server whose InternalIP is the Server's
// address is removed: a same-named Node of another machine is left alone.
func (r *ServerReconciler) deleteNode(ctx context.Context, server *stargatev1.Server) error {
	if server.Status.IPAddress == "" {
		return nil
	}
	node := &corev1.Node{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: server.Name}, node); err != nil {
		return client.IgnoreNotFound(err)
	}
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address == server.Status.IPAddress {
			if err := r.Client.Delete(ctx, node, client.Preconditions{UID: &node.UID}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting node %s of the deleted server: %w", node.Name, err)
			}
			r.Recorder.Eventf(server, node, corev1.EventTypeNormal, "NodeDeleted", "Delete", "Deleted Node %s registered by this server", node.Name)
			return nil
		}
	}
	return nil
}
