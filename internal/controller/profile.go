package controller

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/qemu"
)

// ValidateProfile checks what the API server cannot: the user-data must be something cloud-init
// can use ("#cloud-config" must be a YAML mapping) and fit in a NoCloud seed.
func ValidateProfile(p *stargatev1.ProvisioningProfile) error {
	if err := qemu.ValidateUserData([]byte(p.Spec.CloudInit)); err != nil {
		return fmt.Errorf("spec.cloudInit: %w", err)
	}
	return nil
}

// ProfileReconciler records on each ProvisioningProfile whether it is valid, so a broken profile
// is visible before any Operation uses it.
type ProfileReconciler struct {
	Client client.Client
}

// SetupWithManager registers the reconciler.
func (r *ProfileReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("provisioningprofile").For(&stargatev1.ProvisioningProfile{}).Complete(r)
}

// Reconcile sets the Valid condition.
func (r *ProfileReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := &stargatev1.ProvisioningProfile{}
	if err := r.Client.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	orig := p.DeepCopy()
	cond := metav1.Condition{Type: stargatev1.ConditionValid, Status: metav1.ConditionTrue, Reason: "Valid",
		Message: "The user-data passed the checks", ObservedGeneration: p.Generation}
	if err := ValidateProfile(p); err != nil {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "InvalidUserData", err.Error()
	}
	meta.SetStatusCondition(&p.Status.Conditions, cond)
	p.Status.ObservedGeneration = p.Generation
	if equality.Semantic.DeepEqual(orig.Status, p.Status) {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, client.IgnoreNotFound(r.Client.Status().Patch(ctx, p, client.MergeFrom(orig)))
}
