package controller

import (
	"context"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// Notifier is an optional interface of a Provider that learns by itself when an installation
// changed (the simulator follows each installing guest's serial console). Without it, a running
// Operation sees a finished guest only at its next poll (Options.PollInterval).
type Notifier interface {
	// Changes delivers the keys of Servers whose installation changed: finished, failed or
	// stopped. The provider must never block on a send; a lost notification costs only the
	// poll's delay, since a running Operation is still polled.
	Changes() <-chan types.NamespacedName
}

// changesSource makes each Server key a Notifier sends a request for the Operation running on
// that Server. It is a source of the Operation controller, so it runs and stops with it.
func (r *OperationReconciler) changesSource(n Notifier) source.Source {
	return source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		changes := n.Changes()
		go func() { // a source's Start must not block
			for {
				select {
				case <-ctx.Done():
					return
				case server, ok := <-changes:
					if !ok {
						return
					}
					for _, req := range r.runningOperationOf(ctx, server) {
						q.Add(req)
					}
				}
			}
		}()
		return nil
	})
}

// runningOperationOf is the request for the Operation running on server, if any: only a running
// Operation asks its provider for progress.
func (r *OperationReconciler) runningOperationOf(ctx context.Context, server types.NamespacedName) []reconcile.Request {
	ops, err := OperationsOf(ctx, r.Client, server)
	if err != nil {
		logf.FromContext(ctx).Error(err, "mapping a provider notification to an Operation; the poll will catch up", "server", server)
		return nil
	}
	if op := RunningOperation(ops); op != nil {
		return []reconcile.Request{{NamespacedName: client.ObjectKeyFromObject(op)}}
	}
	return nil
}
