package app

import (
	"context"
	"net/netip"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
)

// clusterView is what the simulator's node faults see of the cluster (simulator.Cluster).
type clusterView struct {
	reader   client.Reader
	recorder events.EventRecorder
	log      logr.Logger
}

func (v *clusterView) NodeReady(ctx context.Context, name string, ip netip.Addr) (bool, error) {
	return controller.NodeReady(ctx, v.reader, name, ip)
}

func (v *clusterView) Warn(ctx context.Context, server types.NamespacedName, reason, note string) {
	var s stargatev1.Server
	if err := v.reader.Get(ctx, server, &s); err != nil {
		v.log.Error(err, "no Event for the Server", "server", server, "reason", reason, "note", note)
		return
	}
	v.recorder.Eventf(&s, nil, corev1.EventTypeWarning, reason, reason, "%s", note)
}
