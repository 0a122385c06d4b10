package controller

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/userdata"
)

// errSecretNotFound marks a profile whose user-data Secret does not exist (yet).
var errSecretNotFound = errors.New("create it or fix spec.cloudInitSecretRef")

// errSecretNotAllowed marks a Secret that did not opt in to being user-data (its type).
var errSecretNotAllowed = errors.New("secret type not allowed")

// userData returns a profile's user-data: inline, or from the Secret it names. Secrets are read
// with an uncached reader, so the controller needs only "get" on them, never list/watch.
func userData(ctx context.Context, reader client.Reader, p *stargatev1.ProvisioningProfile) ([]byte, error) {
	ref := p.Spec.CloudInitSecretRef
	if ref == nil {
		return []byte(p.Spec.CloudInit), nil
	}
	key := ref.Key
	if key == "" {
		key = "user-data"
	}
	secret := &corev1.Secret{}
	if err := reader.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: ref.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("the Secret %q named by spec.cloudInitSecretRef does not exist in namespace %s: %w", ref.Name, p.Namespace, errSecretNotFound)
		}
		return nil, fmt.Errorf("reading Secret %s: %w", ref.Name, err)
	}
	if secret.Type != stargatev1.UserDataSecretType {
		return nil, fmt.Errorf("the Secret %q named by spec.cloudInitSecretRef is of type %q, and Stargate reads only Secrets of type %s "+
			"(so that no other Secret of the namespace can be copied into a server): recreate it with "+
			"`kubectl create secret generic %s --type=%s --from-file=%s=FILE`: %w",
			ref.Name, secret.Type, stargatev1.UserDataSecretType, ref.Name, stargatev1.UserDataSecretType, key, errSecretNotAllowed)
	}
	data, ok := secret.Data[key]
	if !ok {
		return nil, fmt.Errorf("the Secret %q has no key %q (spec.cloudInitSecretRef.key): put the user-data there", ref.Name, key)
	}
	return data, nil
}

// ValidateUserData checks what the API server cannot: the user-data must be something cloud-init
// can use ("#cloud-config" must be a YAML mapping) and fit in a NoCloud seed.
func ValidateUserData(data []byte) error {
	if err := userdata.Validate(data); err != nil {
		return fmt.Errorf("user-data: %w", err)
	}
	return nil
}

// validateProfile checks a profile's user-data (read by the caller) and its installation part.
func validateProfile(p *stargatev1.ProvisioningProfile, data []byte) error {
	if err := ValidateUserData(data); err != nil {
		return err
	}
	if p.Spec.Installation != nil {
		if err := userdata.Validate([]byte(p.Spec.Installation.CloudInit)); err != nil {
			return fmt.Errorf("spec.installation.cloudInit: %w", err)
		}
	}
	return nil
}

// ProfileReconciler records on each ProvisioningProfile whether it is valid, so a broken profile
// is visible before any Operation uses it.
type ProfileReconciler struct {
	Client    client.Client
	APIReader client.Reader
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
	data, err := userData(ctx, r.APIReader, p)
	if err == nil {
		err = validateProfile(p, data)
	}
	cond := validCondition(err)
	cond.ObservedGeneration = p.Generation
	meta.SetStatusCondition(&p.Status.Conditions, cond)
	p.Status.ObservedGeneration = p.Generation
	if equality.Semantic.DeepEqual(orig.Status, p.Status) {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, client.IgnoreNotFound(r.Client.Status().Patch(ctx, p, client.MergeFrom(orig)))
}
