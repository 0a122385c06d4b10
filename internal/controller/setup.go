package controller

import (
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Setup registers Stargate's reconcilers with a manager, all using provider.
func Setup(mgr ctrl.Manager, provider Provider, opts Options, metrics *Metrics) error {
	opts.defaults()
	// A provider with background work of its own (the simulator's console watchers) runs, and
	// stops, with the manager.
	if run, ok := provider.(manager.Runnable); ok {
		if err := mgr.Add(run); err != nil {
			return fmt.Errorf("adding the provider's background work: %w", err)
		}
	}
	recorder := mgr.GetEventRecorder("stargate-simulator")
	operations := &OperationReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder,
		Provider: provider, Options: opts, Metrics: metrics}
	if err := operations.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up operation controller: %w", err)
	}
	if sharer, ok := provider.(CapacitySharer); ok {
		sharer.ShareCapacity(lentCapacity{operations.capacity})
	}
	if err := (&ServerReconciler{Client: mgr.GetClient(), Recorder: recorder, Provider: provider, Options: opts}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up server controller: %w", err)
	}
	if err := (&ProfileReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up profile controller: %w", err)
	}
	if err := (&FaultInjectionReconciler{Client: mgr.GetClient(), Recorder: recorder, Provider: provider, Options: opts}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up fault injection controller: %w", err)
	}
	if opts.Liveness != nil {
		observer, err := setupHostObserver(mgr, *opts.Liveness)
		if err != nil {
			return err
		}
		if err := (&EvacuateReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder,
			observer: observer, now: opts.Now}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("setting up evacuate controller: %w", err)
		}
	}
	return nil
}

// lentCapacity is the Operation controller's capacity as a provider sees it.
type lentCapacity struct{ c *capacity }

func (l lentCapacity) TryHold(key string, memoryBytes int64) bool {
	return l.c.tryHold(key, memoryBytes)
}
func (l lentCapacity) Release(key string) { l.c.release(backgroundKey(key)) }
