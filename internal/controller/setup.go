package controller

import (
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Setup registers Stargate's reconcilers with a manager, all using provider.
func Setup(mgr ctrl.Manager, provider Provider, opts Options, metrics *Metrics) error {
	opts.defaults()
	recorder := mgr.GetEventRecorder("stargate-simulator")
	operations := &OperationReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder,
		Provider: provider, Options: opts, Metrics: metrics}
	if err := operations.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up operation controller: %w", err)
	}
	if err := (&ServerReconciler{Client: mgr.GetClient(), Recorder: recorder, Provider: provider, Options: opts}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up server controller: %w", err)
	}
	if err := (&ProfileReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up profile controller: %w", err)
	}
	return nil
}
