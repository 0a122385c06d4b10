package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// node returns the Node of that name, or nil.
func (r *OperationReconciler) node(ctx context.Context, name string) (*corev1.Node, error) {
	node := &corev1.Node{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: name}, node); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading node %s: %w", name, err)
	}
	return node, nil
}

// deleteStaleNode deletes the Node of the previous installation — registered before this repave
// started — so the new one can join under the same name: kubeadm refuses to join over a Ready Node
// of that name, and a kubelet does not re-create a Node deleted after it registered. It runs only
// until the guest finishes cloud-init (which runs the join), so it never deletes the new Node.
func (r *OperationReconciler) deleteStaleNode(ctx context.Context, s *operationScope) error {
	node, err := r.node(ctx, s.server.Name)
	if err != nil || node == nil {
		return err
	}
	if s.op.Status.StartTime == nil || !node.CreationTimestamp.Before(s.op.Status.StartTime) {
		return nil
	}
	if err := r.Client.Delete(ctx, node, client.Preconditions{UID: &node.UID}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting stale node %s: %w", node.Name, err)
	}
	s.event(s.op, node, corev1.EventTypeNormal, "StaleNodeDeleted", fmt.Sprintf("Deleted Node %s of the previous installation so the new one can join", node.Name))
	return nil
}
