package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// run drives a Running Operation through its provider until it succeeds or fails.
func (r *OperationReconciler) run(ctx context.Context, s *operationScope) (ctrl.Result, error) {
	if s.op.Spec.Operation.IsPower() {
		return r.throughGates(ctx, s, gateServerStillExists, gateTimeout, gatePowerStep, gateSucceed)
	}
	return r.throughGates(ctx, s, gateServerStillExists, gateTimeout, gateProfileStillExists, gateRunUserData,
		gateProviderStep, gateNode, gateSucceed)
}

func gateServerStillExists(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if s.server != nil && s.server.DeletionTimestamp.IsZero() {
		r.capacity.hold(s.key(), s.server.Spec.MemoryBytes()) // after a restart
		return pass()
	}
	if s.server == nil {
		// The Server's finalizer released it already; release again in case a step of ours raced
		// with that and re-created something.
		if err := r.Provider.Release(ctx, s.serverKey()); err != nil {
			return stop(ctrl.Result{}, fmt.Errorf("releasing deleted server %s: %w", s.op.Spec.ServerRef.Name, err))
		}
	}
	s.fail("ServerDeleted", fmt.Sprintf("Server %s was deleted during the %s", s.op.Spec.ServerRef.Name, s.op.Spec.Operation))
	return stop(ctrl.Result{}, nil)
}

// gateTimeout fails an Operation that ran longer than spec.timeout and powers its server off.
// Powering off is destructive, so the Operation is read uncached first: a stale cache must not
// power off a server whose Operation has in fact finished.
func gateTimeout(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if s.op.Spec.Timeout == nil || s.op.Status.StartTime == nil || s.now.Sub(s.op.Status.StartTime.Time) <= s.op.Spec.Timeout.Duration {
		return pass()
	}
	live := &stargatev1.Operation{}
	if err := r.APIReader.Get(ctx, s.key(), live); err != nil {
		return stop(ctrl.Result{}, client.IgnoreNotFound(err))
	}
	if live.ResourceVersion != s.op.ResourceVersion {
		return stop(ctrl.Result{RequeueAfter: conflictRetry}, nil)
	}
	return r.failRunning(ctx, s, "Timeout", fmt.Sprintf("Timed out after %s (spec.timeout) %s", s.op.Spec.Timeout.Duration, stuckAt(s.op.Status.Conditions)))
}

// failRunning fails an Operation that has touched its server, and powers the server off (the one
// rule for every failure: a half-installed server must not run, nor join a cluster, while its
// Server says Error) unless the operator keeps failed machines for debugging.
func (r *OperationReconciler) failRunning(ctx context.Context, s *operationScope, reason, msg string) (ctrl.Result, bool, error) {
	if r.Options.KeepFailedMachines {
		s.fail(reason, msg+"\n(the server is left running: --keep-failed-vms)")
		return stop(ctrl.Result{}, nil)
	}
	what := "; the server was powered off"
	if err := r.Provider.PowerOff(ctx, s.serverKey()); errors.Is(err, ErrUntouched) {
		what = "; the server was not touched and runs as before"
	} else if err != nil {
		return stop(ctrl.Result{}, fmt.Errorf("powering off server %s after %s: %w", s.op.Spec.ServerRef.Name, reason, err))
	}
	head, rest, _ := strings.Cut(msg, "\n")
	if rest != "" {
		rest = "\n" + rest
	}
	s.fail(reason, head+what+rest)
	return stop(ctrl.Result{}, nil)
}

// gateProfileStillExists fails a repave whose profile was deleted: what it asked for (such as
// joining the cluster) can no longer be known.
func gateProfileStillExists(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if s.profile == nil {
		return r.failRunning(ctx, s, "ProfileDeleted", fmt.Sprintf("ProvisioningProfile %s was deleted during the repave", s.op.Spec.ProvisioningProfileRef.Name))
	}
	return pass()
}

// gateRunUserData reads the user-data again for the provider; once the machine runs with it, a
// deleted Secret no longer matters.
func gateRunUserData(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	data, err := userData(ctx, r.APIReader, s.profile)
	switch {
	case errors.Is(err, errSecretNotFound) && (isConditionTrue(s.op, stargatev1.ConditionVMRunning) || isConditionTrue(s.op, stargatev1.ConditionInstallerReady)):
		// The machine runs with its user-data already, or its installer carries it: the Secret is
		// no longer needed.
		return pass()
	case errors.Is(err, errSecretNotFound):
		return r.failRunning(ctx, s, "SecretDeleted", err.Error()+" (deleted during the repave, before the server received it)")
	case err != nil:
		return stop(ctrl.Result{}, err)
	}
	s.userData = data
	return pass()
}

// gateProviderStep asks the provider to continue the installation and records each step as a
// condition.
func gateProviderStep(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if err := r.decideFaults(ctx, s); err != nil {
		return stop(ctrl.Result{}, err)
	}
	st, err := r.Provider.Repave(ctx, repaveRequest(s.op, s.server, s.profile, s.userData))
	if err != nil {
		return stop(ctrl.Result{}, fmt.Errorf("repave of server %s: %w", s.server.Name, err))
	}
	for _, step := range st.Steps {
		wasDone := isConditionTrue(s.op, step.Type)
		c := stepCondition(step)
		s.setCondition(c)
		if !wasDone && c.Status == metav1.ConditionTrue {
			op, typ, at := s.op, step.Type, s.now
			s.metrics = append(s.metrics, func(m *Metrics) { m.stepDone(op, typ, at) })
		}
	}
	s.progress = st
	s.recordTimeline(newSteps(s.op.Status.Timeline, st.Timeline)...)
	switch {
	case st.Failed:
		return r.failRunning(ctx, s, st.Reason, st.Message)
	case !st.Done:
		s.op.Status.Message = progressMessage(st.Steps)
		if s.profile.Spec.JoinsCluster {
			// While the guest installs, before its kubeadm join, the previous installation's Node goes.
			if err := r.deleteStaleNode(ctx, s); err != nil {
				return stop(ctrl.Result{}, err)
			}
		}
		return stop(ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil)
	}
	return pass()
}

// gateNode waits, for profiles that join the cluster, until the Server's Node — provably its own,
// by address — is Ready.
func gateNode(ctx context.Context, r *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	if !s.profile.Spec.JoinsCluster {
		return pass()
	}
	node, err := r.node(ctx, s.server.Name)
	if err != nil {
		return stop(ctrl.Result{}, err)
	}
	own, addrs := ownership(node, s.progress.IPAddress)
	switch own {
	case nodeForeign:
		return r.failRunning(ctx, s, "NodeNameTaken", nodeTakenMessage(s.server.Name, addrs, s.progress.IPAddress))
	case nodeUnproven:
		node = nil // not proof of anything yet
	}
	c := nodeReadyCondition(s.server.Name, node)
	if c.Status == metav1.ConditionTrue && !isConditionTrue(s.op, stargatev1.ConditionNodeReady) {
		if at := nodeReadySince(node); s.op.Status.StartTime != nil && at.After(s.op.Status.StartTime.Time) {
			s.recordTimeline(TimelineStep{Name: "node-ready", Duration: at.Sub(s.op.Status.StartTime.Time)})
		}
	}
	s.setCondition(c)
	if c.Status != metav1.ConditionTrue {
		s.op.Status.Message = c.Message
		return stop(ctrl.Result{RequeueAfter: r.Options.PollInterval}, nil)
	}
	return pass()
}

func gateSucceed(_ context.Context, _ *OperationReconciler, s *operationScope) (ctrl.Result, bool, error) {
	t := metav1.NewTime(s.now)
	s.op.Status.Phase = stargatev1.OperationSucceeded
	s.op.Status.CompletionTime = &t
	took := ""
	if s.op.Status.StartTime != nil {
		took = " in " + s.now.Sub(s.op.Status.StartTime.Time).Round(time.Second).String()
	}
	s.op.Status.Message = successMessage(s.op, s.server.Name, took, s.progress.IPAddress)
	s.setCondition(succeededCondition(true, "Succeeded", s.op.Status.Message))
	s.event(s.op, s.server, corev1.EventTypeNormal, "Succeeded", s.op.Status.Message)
	op := s.op
	s.metrics = append(s.metrics, func(m *Metrics) { m.finished(op) })
	return stop(ctrl.Result{}, nil)
}

// repaveRequest describes the installation to the provider; the API's defaults fill unset fields.
func repaveRequest(op *stargatev1.Operation, server *stargatev1.Server, profile *stargatev1.ProvisioningProfile, userData []byte) RepaveRequest {
	return RepaveRequest{
		Server:        client.ObjectKeyFromObject(server),
		InstanceID:    InstanceID(op),
		CPUs:          server.Spec.CPUCount(),
		MemoryMiB:     server.Spec.MemoryBytes() >> 20,
		DiskBytes:     server.Spec.DiskBytes(),
		MAC:           server.Spec.MACAddress,
		ImageURL:      profile.Spec.ImageURL(),
		ImageChecksum: profile.Spec.Image.Checksum,
		UserData:      userData,
		Installation:  []byte(profile.Spec.InstallationUserData()),
		Faults:        faultsOf(op),
	}
}

// newSteps are the steps of a provider's timeline the Operation's does not hold yet. A provider's
// timeline may grow as the repave goes (the Redfish datacenter's image write, then the installed
// OS's boot), and each step is recorded once, by name.
func newSteps(recorded []stargatev1.TimelineStep, steps []TimelineStep) []TimelineStep {
	var out []TimelineStep
	for _, step := range steps {
		if !slices.ContainsFunc(recorded, func(r stargatev1.TimelineStep) bool { return r.Name == step.Name }) {
			out = append(out, step)
		}
	}
	return out
}

// recordTimeline adds steps to the Operation's timeline, and to the metrics once saved.
func (s *operationScope) recordTimeline(steps ...TimelineStep) {
	for _, step := range steps {
		s.op.Status.Timeline = append(s.op.Status.Timeline, stargatev1.TimelineStep{Name: step.Name, Duration: metav1.Duration{Duration: step.Duration}})
		st := step
		s.metrics = append(s.metrics, func(m *Metrics) { m.guestStep(st.Name, st.Duration) })
	}
}

// nodeReadySince is when the Node last became Ready, as its kubelet reported.
func nodeReadySince(node *corev1.Node) time.Time {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.LastTransitionTime.Time
		}
	}
	return time.Time{}
}
