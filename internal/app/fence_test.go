package app

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// At startup the simulator keeps only the machines of Servers it owns: a Server evacuated from
// it (no owner) or owned by another host is fenced, like a deleted one.
func TestStartupKeepsOnlyOwnedServersMachines(t *testing.T) {
	srv := func(name, host string) *stargatev1.Server {
		return &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Status: stargatev1.ServerStatus{Host: host}}
	}
	c := fake.NewClientBuilder().WithScheme(Scheme()).
		WithObjects(srv("mine", "host-a"), srv("evacuated", ""), srv("taken", "host-b")).Build()
	owned := ownedBy(c, "host-a")
	for name, want := range map[string]bool{"mine": true, "evacuated": false, "taken": false, "deleted": false} {
		got, err := owned(context.Background(), types.NamespacedName{Namespace: "ns", Name: name})
		if err != nil || got != want {
			t.Errorf("%s: owned %v (%v), want %v", name, got, err, want)
		}
	}
}
