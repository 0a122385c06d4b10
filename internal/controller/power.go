package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// Power Operations change a Server's power state and keep what is installed. powerOff presses the
// ACPI power button once and forces the machine off when it is still on after spec.gracePeriod;
// powerOn boots the installed disk; reboot is a powerOff followed by a powerOn. Each half is a
// condition (PoweredOff, PoweredOn), so a reconcile after a restart picks up where it was.

// gatePowerStep moves a power Operation one step and passes once its power state is reached.
func gatePowerStep(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	info, err := r.Provider.Inspect(ctx, s.serverKey())
	if err != nil {
		return stop(ctrl.Result{}, fmt.Errorf("inspecting server %s: %w", s.server.Name, err))
	}
	if !info.Exists {
		s.fail("NotInstalled", fmt.Sprintf("Server %s has no machine on this host to power: repave it first", s.server.Name))
		return stop(ctrl.Result{}, nil)
	}
	kind := s.op.Spec.Operation
	if (kind == stargatev1.OperationPowerOff || kind == stargatev1.OperationReboot) && !isConditionTrue(s.op, stargatev1.ConditionPoweredOff) {
		if done, result, err := r.powerOffStep(ctx, s, info); !done || err != nil {
			return stop(result, err)
		}
		if kind == stargatev1.OperationReboot {
			// Save "off" before powering on: were this reconcile's status lost (a conflict with a
			// write this reconcile did not see), the next one would find the machine running
			// again and the button pressed long ago, and force it off after the grace period.
			return stop(ctrl.Result{RequeueAfter: time.Millisecond}, nil)
		}
		info.Running = false
	}
	if kind == stargatev1.OperationPowerOn || kind == stargatev1.OperationReboot {
		if done, result, err := r.powerOnStep(ctx, s, info); !done || err != nil {
			return stop(result, err)
		}
	}
	return pass()
}

// powerOffStep presses the power button once, then waits; after the grace period it forces the
// machine off. It reports done once the machine is off.
func (r *OperationReconciler) powerOffStep(ctx context.Context, s *operationScope, info ServerInfo) (bool, ctrl.Result, error) {
	pressed := meta.FindStatusCondition(s.op.Status.Conditions, stargatev1.ConditionPoweredOff)
	grace := s.op.Spec.Grace()
	switch {
	case !info.Running:
		reason, msg := "ShutDown", "The guest shut down"
		if pressed == nil {
			reason, msg = "AlreadyOff", "The server was already off"
		}
		s.setCondition(powerCondition(stargatev1.ConditionPoweredOff, true, reason, msg))
		return true, ctrl.Result{}, nil
	case pressed == nil:
		if err := r.Provider.Shutdown(ctx, s.serverKey()); err != nil {
			return false, ctrl.Result{}, fmt.Errorf("shutting down server %s: %w", s.server.Name, err)
		}
		s.setCondition(powerCondition(stargatev1.ConditionPoweredOff, false, "ShuttingDown",
			fmt.Sprintf("ACPI power button pressed; forcing the server off if it still runs after %s (spec.gracePeriod)", grace)))
		s.op.Status.Message = "Shutting down"
		return false, ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil
	case s.now.Sub(pressed.LastTransitionTime.Time) < grace:
		s.op.Status.Message = "Waiting for the guest to shut down"
		return false, ctrl.Result{RequeueAfter: min(r.Options.PollInterval, grace-s.now.Sub(pressed.LastTransitionTime.Time))}, nil
	}
	if err := r.Provider.PowerOff(ctx, s.serverKey()); err != nil {
		return false, ctrl.Result{}, fmt.Errorf("forcing server %s off: %w", s.server.Name, err)
	}
	s.setCondition(powerCondition(stargatev1.ConditionPoweredOff, true, "ForcedOff",
		fmt.Sprintf("The guest did not shut down within %s (spec.gracePeriod): forced off", grace)))
	return true, ctrl.Result{}, nil
}

// powerOnStep boots the installed disk and reports done once the machine runs.
func (r *OperationReconciler) powerOnStep(ctx context.Context, s *operationScope, info ServerInfo) (bool, ctrl.Result, error) {
	if info.Running {
		s.setCondition(powerCondition(stargatev1.ConditionPoweredOn, true, "Running", "The server runs"))
		return true, ctrl.Result{}, nil
	}
	err := r.Provider.PowerOn(ctx, s.serverKey())
	if errors.Is(err, ErrNotInstalled) {
		s.fail("NotInstalled", fmt.Sprintf("Server %s: %v", s.server.Name, err))
		return false, ctrl.Result{}, nil
	}
	if err != nil {
		return false, ctrl.Result{}, fmt.Errorf("powering on server %s: %w", s.server.Name, err)
	}
	s.setCondition(powerCondition(stargatev1.ConditionPoweredOn, false, "PoweringOn", "Booting the installed disk"))
	s.op.Status.Message = "Powering on"
	return false, ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil
}
