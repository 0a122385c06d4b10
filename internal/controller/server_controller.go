package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// ServerFinalizer makes deleting a Server release its machine, disks, tap and IP first.
const ServerFinalizer = "stargate.io/server"

// ServerReconciler keeps Servers' finalizer and health, and releases what a deleted Server held.
type ServerReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Provider Provider
	Options  Options
}

// SetupWithManager registers the reconciler.
func (r *ServerReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Options.defaults()
	return ctrl.NewControllerManagedBy(mgr).Named("server").For(&stargatev1.Server{}).Complete(r)
}

// healthInterval is how often a Ready server's machine is checked.
const healthInterval = 30 * time.Second

// Reconcile adds the finalizer, releases deleted Servers and notices machines that stopped.
func (r *ServerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	server := &stargatev1.Server{}
	if err := r.Client.Get(ctx, req.NamespacedName, server); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.Options.ServerSelector != nil && !r.Options.ServerSelector.Matches(labelsOf(server)) {
		return ctrl.Result{}, nil
	}
	if !server.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, server)
	}
	if controllerutil.AddFinalizer(server, ServerFinalizer) {
		if err := r.Client.Update(ctx, server); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}
	orig := server.DeepCopy()
	result, err := r.reconcileHealth(ctx, server)
	if !equality.Semantic.DeepEqual(orig.Status, server.Status) {
		if perr := r.Client.Status().Patch(ctx, server, client.MergeFrom(orig)); perr != nil && err == nil {
			err = fmt.Errorf("updating server status: %w", perr)
		}
	}
	return result, err
}

func (r *ServerReconciler) reconcileHealth(ctx context.Context, server *stargatev1.Server) (ctrl.Result, error) {
	switch server.Status.State {
	case "":
		server.Status.State = stargatev1.ServerAvailable
		server.Status.Message = "Not installed by Stargate yet: create a repave Operation"
		server.Status.ObservedGeneration = server.Generation
		return ctrl.Result{}, nil
	case stargatev1.ServerReady:
		info, err := r.Provider.Inspect(ctx, client.ObjectKeyFromObject(server))
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("inspecting server: %w", err)
		}
		if !info.Running {
			setServerState(server, stargatev1.ServerError, metav1.ConditionFalse, "MachineStopped",
				"The server is not running any more (its machine stopped or was removed outside Stargate): repave it to reinstall")
			r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, "MachineStopped", "Inspect", "%s", server.Status.Message)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{RequeueAfter: healthInterval}, nil
	}
	return ctrl.Result{}, nil
}

func (r *ServerReconciler) reconcileDelete(ctx context.Context, server *stargatev1.Server) error {
	if !controllerutil.ContainsFinalizer(server, ServerFinalizer) {
		return nil
	}
	if server.Status.State != stargatev1.ServerDeleting {
		orig := server.DeepCopy()
		server.Status.State = stargatev1.ServerDeleting
		server.Status.Message = "Releasing the machine, disks, network attachment and IP address"
		if err := r.Client.Status().Patch(ctx, server, client.MergeFrom(orig)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("marking server deleting: %w", err)
		}
	}
	if err := r.Provider.Release(ctx, client.ObjectKeyFromObject(server)); err != nil {
		r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, "ReleaseFailed", "Delete", "Releasing the server's resources failed (will retry): %v", err)
		return fmt.Errorf("releasing server %s: %w", server.Name, err)
	}
	if err := r.deleteNode(ctx, server); err != nil {
		return err
	}
	r.Recorder.Eventf(server, nil, corev1.EventTypeNormal, "Released", "Delete", "Machine, disks, network attachment and IP address released")
	controllerutil.RemoveFinalizer(server, ServerFinalizer)
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

// setServerState sets a Server's one-word state and its message for humans, together with the
// Provisioned condition that is their truth (messages there are bounded: they may carry a console tail).
func setServerState(server *stargatev1.Server, state stargatev1.ServerState, provisioned metav1.ConditionStatus, reason, msg string) {
	server.Status.State = state
	server.Status.Message = msg
	meta.SetStatusCondition(&server.Status.Conditions, metav1.Condition{Type: stargatev1.ConditionProvisioned, Status: provisioned,
		Reason: reason, Message: truncate(msg, 1024), ObservedGeneration: server.Generation})
}
