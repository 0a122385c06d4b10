// Package v1alpha1 contains the Stargate API: Server, ProvisioningProfile and Operation in the
// stargate.io group.
//
// +kubebuilder:object:generate=true
// +groupName=stargate.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every Stargate kind.
	GroupVersion = schema.GroupVersion{Group: "stargate.io", Version: "v1alpha1"}

	// SchemeBuilder registers the Stargate kinds with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the Stargate kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
