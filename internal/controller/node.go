package controller

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// Node names are cluster-wide while Server names are per namespace, and any tenant may name a
// Server like a Node that is not theirs. So Stargate deletes, or takes as proof of readiness, only
// a Node that is provably the Server's: one whose InternalIP is the address Stargate gave the
// Server (its IPAM hands each address to one Server at a time).

// nodeOwnership says whether a Node belongs to a Server with address ip.
type nodeOwnership int

const (
	nodeAbsent nodeOwnership = iota
	// nodeUnproven: the Node has no InternalIP yet (a kubelet that is registering).
	nodeUnproven
	nodeOurs
	nodeForeign
)

// ownership is a pure function of the Node and the Server's address.
func ownership(node *corev1.Node, ip string) (nodeOwnership, string) {
	if node == nil {
		return nodeAbsent, ""
	}
	var addrs []string
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			if ip != "" && a.Address == ip {
				return nodeOurs, a.Address
			}
			addrs = append(addrs, a.Address)
		}
	}
	if len(addrs) == 0 {
		return nodeUnproven, ""
	}
	return nodeForeign, fmt.Sprint(addrs)
}

func nodeTakenMessage(name, nodeAddrs, ip string) string {
	if ip == "" {
		ip = "none yet"
	}
	return fmt.Sprintf("Node %s already exists and is not this Server's: its InternalIP is %s, this Server's address is %s. "+
		"Stargate deletes or trusts only a Node whose InternalIP is the Server's address: rename the Server, "+
		"or delete the Node if it is a leftover of this Server", name, nodeAddrs, ip)
}

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

// gateNodeName checks, before a joining repave touches its server, that the Node name it will
// register is free or already this Server's, and that no Server of another namespace installs a
// Node of the same name.
func gateNodeName(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if !s.profile.Spec.JoinsCluster {
		return pass()
	}
	node, err := r.node(ctx, s.server.Name)
	if err != nil {
		return stop(ctrl.Result{}, err)
	}
	if own, addrs := ownership(node, s.server.Status.IPAddress); own == nodeForeign || own == nodeUnproven {
		if own == nodeUnproven {
			addrs = "not reported"
		}
		s.fail("NodeNameTaken", nodeTakenMessage(s.server.Name, addrs, s.server.Status.IPAddress))
		return stop(ctrl.Result{}, nil)
	}
	other, err := r.otherJoiningServer(ctx, s.server)
	if err != nil {
		return stop(ctrl.Result{}, err)
	}
	if other != "" {
		s.fail("NodeNameConflict", fmt.Sprintf("Server %s/%s already joins the cluster as Node %s, and Node names are cluster-wide: "+
			"give this Server another name, or use a profile without joinsCluster", other, s.server.Name, s.server.Name))
		return stop(ctrl.Result{}, nil)
	}
	return pass()
}

// otherJoiningServer names the namespace of another Server with the same name that is installed,
// or being installed, with a profile that joins the cluster ("" when there is none).
func (r *OperationReconciler) otherJoiningServer(ctx context.Context, server *stargatev1.Server) (string, error) {
	var servers stargatev1.ServerList
	if err := r.Client.List(ctx, &servers); err != nil {
		return "", fmt.Errorf("listing servers: %w", err)
	}
	for i := range servers.Items {
		o := &servers.Items[i]
		if o.Name != server.Name || o.Namespace == server.Namespace || o.Status.LastOperation == "" ||
			(o.Status.State != stargatev1.ServerProvisioning && o.Status.State != stargatev1.ServerReady) {
			continue
		}
		op := &stargatev1.Operation{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: o.Namespace, Name: o.Status.LastOperation}, op); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return "", err
		}
		if op.Spec.ProvisioningProfileRef == nil {
			continue
		}
		p := &stargatev1.ProvisioningProfile{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: o.Namespace, Name: op.Spec.ProvisioningProfileRef.Name}, p); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return "", err
		}
		if p.Spec.JoinsCluster {
			return o.Namespace, nil
		}
	}
	return "", nil
}

// deleteStaleNode deletes the Node of the previous installation — this Server's by address, and
// registered before this repave started — so the new one can join under the same name: kubeadm
// refuses to join over a Ready Node of that name, and a kubelet does not re-create a Node deleted
// after it registered. It runs only until the guest finishes cloud-init (which runs the join), so
// it never deletes the new Node.
func (r *OperationReconciler) deleteStaleNode(ctx context.Context, s *operationScope) error {
	node, err := r.node(ctx, s.server.Name)
	if err != nil || node == nil {
		return err
	}
	if own, _ := ownership(node, s.progress.IPAddress); own != nodeOurs {
		return nil
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

// NodeReady reports whether the Node named name is Ready and provably the one of the machine at
// ip (its InternalIP is ip): what a provider that injects node faults waits for.
func NodeReady(ctx context.Context, reader client.Reader, name string, ip netip.Addr) (bool, error) {
	var node corev1.Node
	if err := reader.Get(ctx, types.NamespacedName{Name: name}, &node); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if own, _ := ownership(&node, ip.String()); own != nodeOurs {
		return false, nil
	}
	return nodeReadyCondition(name, &node).Status == metav1.ConditionTrue, nil
}
