package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// operationScope is what one reconcile of an Operation works on: everything it reads, loaded once,
// and what it decided — the Operation's new status, and the events and metrics that may be emitted
// only once that status is saved.
type operationScope struct {
	op   *stargatev1.Operation
	orig *stargatev1.Operation
	// server and profile are nil when they do not exist.
	server  *stargatev1.Server
	profile *stargatev1.ProvisioningProfile
	// userData is the profile's user-data, read by the references gate.
	userData []byte
	// progress is what the provider reported in this reconcile.
	progress RepaveStatus
	now      time.Time

	events  []event
	metrics []func(*Metrics)
	// afterSave runs once the save was attempted, whatever its result (e.g. to unlock the Server).
	afterSave []func()
}

// event is an Event to record once the status that explains it is saved.
type event struct {
	regarding, related              runtime.Object
	eventtype, reason, action, note string
}

// loadOperation reads the Operation and what it refers to. It returns nil when the Operation no
// longer exists.
func (r *OperationReconciler) loadOperation(ctx context.Context, key types.NamespacedName) (*operationScope, error) {
	op := &stargatev1.Operation{}
	if err := r.Client.Get(ctx, key, op); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	s := &operationScope{op: op, orig: op.DeepCopy(), now: r.Options.Now()}
	server := &stargatev1.Server{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.ServerRef.Name}, server); err == nil {
		s.server = server
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading server %s: %w", op.Spec.ServerRef.Name, err)
	}
	if ref := op.Spec.ProvisioningProfileRef; ref != nil {
		profile := &stargatev1.ProvisioningProfile{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: op.Namespace, Name: ref.Name}, profile); err == nil {
			s.profile = profile
		} else if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading provisioning profile %s: %w", ref.Name, err)
		}
	}
	return s, nil
}

// saveOperation writes the Operation's status when it changed, with the resourceVersion it was
// read at: a reconcile working on a stale cache loses (conflict) instead of finishing an Operation
// twice. It reports whether the status is now as decided.
func (r *OperationReconciler) saveOperation(ctx context.Context, s *operationScope) (bool, error) {
	if equality.Semantic.DeepEqual(s.orig.Status, s.op.Status) {
		return true, nil
	}
	err := r.Client.Status().Patch(ctx, s.op, client.MergeFromWithOptions(s.orig, client.MergeFromWithOptimisticLock{}))
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		return false, nil // gone, or our view was stale: the next reconcile starts from the truth
	default:
		return false, fmt.Errorf("updating operation status: %w", err)
	}
}

// emit records the decided events and metrics; call it only after a successful save.
func (r *OperationReconciler) emit(s *operationScope) {
	for _, e := range s.events {
		r.Recorder.Eventf(e.regarding, e.related, e.eventtype, e.reason, e.action, "%s", e.note)
	}
	for _, m := range s.metrics {
		if r.Metrics != nil {
			m(r.Metrics)
		}
	}
}

func (s *operationScope) event(regarding, related runtime.Object, eventtype, reason, note string) {
	s.events = append(s.events, event{regarding: regarding, related: related, eventtype: eventtype, reason: reason,
		action: actionOf(s.op), note: truncate(note, 1024)})
}

// actionOf names what an Operation does, for Events and messages: Repave, PowerOn, PowerOff, Reboot.
func actionOf(op *stargatev1.Operation) string {
	k := string(op.Spec.Operation)
	if k == "" {
		return "Operation"
	}
	return strings.ToUpper(k[:1]) + k[1:]
}

func isConditionTrue(op *stargatev1.Operation, typ string) bool {
	return meta.IsStatusConditionTrue(op.Status.Conditions, typ)
}

func (s *operationScope) setCondition(c metav1.Condition) {
	c.ObservedGeneration = s.op.Generation
	meta.SetStatusCondition(&s.op.Status.Conditions, c)
}

// serverObject is the Server as an event's related object, or nil (never a typed nil).
func (s *operationScope) serverObject() runtime.Object {
	if s.server == nil {
		return nil
	}
	return s.server
}

func (s *operationScope) key() types.NamespacedName { return client.ObjectKeyFromObject(s.op) }

func (s *operationScope) serverKey() types.NamespacedName {
	return types.NamespacedName{Namespace: s.op.Namespace, Name: s.op.Spec.ServerRef.Name}
}
