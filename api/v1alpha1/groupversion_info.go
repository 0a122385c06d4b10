// Package v1alpha1 contains the Stargate API: Server, ProvisioningProfile and Operation in the
// stargate.io group.
//
// +kubebuilder:object:generate=true
// +groupName=stargate.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every Stargate kind.
	GroupVersion = schema.GroupVersion{Group: "stargate.io", Version: "v1alpha1"}

	// SchemeBuilder collects the functions that register the Stargate kinds with a runtime.Scheme;
	// each kind's file adds its types with addKnownTypes. Only apimachinery is needed (controller-runtime's
	// scheme.Builder is deprecated for API packages).
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		metav1.AddToGroupVersion(s, GroupVersion)
		return nil
	})

	// AddToScheme adds the Stargate kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// addKnownTypes registers objs under GroupVersion.
func addKnownTypes(objs ...runtime.Object) {
	SchemeBuilder.Register(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, objs...)
		return nil
	})
}
