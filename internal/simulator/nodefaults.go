package simulator

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/faults"
)

// Node faults (KubeletStops, NodeFlapping) strike an installation that joined a cluster, once its
// Node is Ready (at Running). The host has no way into a running guest, so it stops what the
// cluster sees of the kubelet: the guest's TCP segments to the API server are dropped at its tap
// (hostnet.TapFaults.Silenced), so its status updates and lease renewals stop arriving, and the
// cluster's node lifecycle controller marks the Node NotReady (Unknown, "Kubelet stopped posting
// node status") after its grace period. KubeletStops lasts until the Server's next installation
// or release; NodeFlapping silences and lets through in turns, for its duration each.
//
// A node fault is recorded with the installation's other network faults (network-faults.json)
// when the installation starts, waiting; the provider's loop strikes it when the Node is Ready and
// flips a flapping one on time, also after a restart.

// nodeFault is the node fault of an installation.
type nodeFault struct {
	Name string               `json:"name"`
	Type stargatev1.FaultType `json:"type"`
	// Every is how long each silence and each pause of a NodeFlapping lasts.
	Every time.Duration `json:"every,omitempty"`
	// Node and IP identify the installation's Node: named after the Server, with its address.
	Node string     `json:"node"`
	IP   netip.Addr `json:"ip"`
	// APIServer is where the guest's kubelet talks to.
	APIServer []netip.AddrPort `json:"apiServer"`
	// Since is when the Node was first seen Ready and the fault struck; nil while it waits.
	Since *time.Time `json:"since,omitempty"`
}

// Cluster is what node faults need of the management cluster. The simulator has no client of
// its own: its host wires one (internal/app).
type Cluster interface {
	// NodeReady reports whether the Node named name is Ready and provably the one of the VM at
	// ip (its InternalIP is ip).
	NodeReady(ctx context.Context, name string, ip netip.Addr) (bool, error)
	// Warn records a Warning Event on the Server, for what the user must see in kubectl.
	Warn(ctx context.Context, server types.NamespacedName, reason, note string)
}

// SetCluster lets the simulator see Nodes and tell Servers, which node faults need; without it
// they are not supported. Call it before Start.
func (p *Provider) SetCluster(c Cluster) { p.cluster = c }

func isNodeFault(t stargatev1.FaultType) bool {
	return t == stargatev1.FaultKubeletStops || t == stargatev1.FaultNodeFlapping
}

// silenced reports whether the kubelet's traffic is dropped at now.
func (f *nodeFault) silenced(now time.Time) bool {
	if f == nil || f.Since == nil {
		return false
	}
	if f.Type == stargatev1.FaultKubeletStops || f.Every <= 0 {
		return true
	}
	return (now.Sub(*f.Since)/f.Every)%2 == 0
}

// nodeFaultOf picks the installation's node fault from its faults: a KubeletStops before any
// NodeFlapping (it silences for good), else the first NodeFlapping.
func nodeFaultOf(fs []stargatev1.Fault) (stargatev1.Fault, bool) {
	var picked stargatev1.Fault
	found := false
	for _, f := range fs {
		if !isNodeFault(f.Type) || f.At != stargatev1.FaultAtRunning || faults.Validate(f) != nil {
			continue
		}
		if f.Type == stargatev1.FaultKubeletStops {
			return f, true
		}
		if !found {
			picked, found = f, true
		}
	}
	return picked, found
}

// recordNodeFault records the installation's node fault, waiting for its Node, in its network
// faults (the installation's first: the previous ones were just forgotten).
func (p *Provider) recordNodeFault(in installation) error {
	f, ok := nodeFaultOf(in.req.Faults)
	if !ok || !p.SupportsFault(f.Type, f.At) {
		return nil
	}
	dests, err := p.apiServerDestinations()
	if err != nil {
		p.cfg.Log.Error(err, "fault not injected", "server", identity(in.req.Server), "fault", f.Name, "type", f.Type)
		return nil
	}
	nf := &nodeFault{Name: f.Name, Type: f.Type, Node: in.req.Server.Name, IP: in.ip, APIServer: dests}
	if f.Duration != nil {
		nf.Every = f.Duration.Duration
	}
	return writeNetworkFaults(in.dir, networkFaults{Node: nf})
}

// updateNodeFault strikes the VM's node fault once its Node is Ready, and makes its silence
// follow its schedule (the provider's loop calls it, the VM's lock held).
func (p *Provider) updateNodeFault(ctx context.Context, server types.NamespacedName, dir, tap, qmp string) error {
	n, ok, err := readNetworkFaults(dir)
	if err != nil || !ok || n.Node == nil {
		return err
	}
	now := time.Now()
	if n.Node.Since == nil {
		if vm, err := p.vms.Status(dir); err != nil || !vm.Running || p.cluster == nil {
			return err
		}
		ready, err := p.cluster.NodeReady(ctx, n.Node.Node, n.Node.IP)
		if err != nil || !ready {
			return err
		}
		n.Node.Since = &now
		p.cfg.Log.Info("fault: the Node is Ready, its kubelet's traffic to the API server is dropped from now on",
			"node", n.Node.Node, "fault", n.Node.Name, "type", n.Node.Type, "every", n.Node.Every)
		p.cluster.Warn(ctx, server, "FaultStruck", strikeNote(n.Node))
	}
	silenced := n.Node.silenced(now)
	if silenced == n.Silenced {
		return nil
	}
	n.Silenced = silenced
	if err := writeNetworkFaults(dir, n); err != nil {
		return err
	}
	p.cfg.Log.Info("fault: node", "node", n.Node.Node, "fault", n.Node.Name, "kubeletSilenced", silenced)
	return p.makeNetworkFaults(dir, tap, qmp, n)
}

// strikeNote tells the Server's user what a node fault does from now on.
func strikeNote(f *nodeFault) string {
	what := "for good (until the Server's next installation or its release)"
	if f.Type == stargatev1.FaultNodeFlapping {
		what = fmt.Sprintf("for %s, then let through for %s, in turns", f.Every, f.Every)
	}
	return fmt.Sprintf("fault %s (%s) struck: Node %s is Ready, so its kubelet's traffic to the API server (%s) is dropped at the Server's tap %s; "+
		"the cluster marks the Node NotReady after its grace period", f.Name, f.Type, f.Node, joinAddrPorts(f.APIServer), what)
}
