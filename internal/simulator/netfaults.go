package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/qemu"
)

// Network faults strike a VM's network when its repave reaches their step: loss, a partition, no
// DNS and no route to the API server at its tap (hostnet.SetTapFaults: an nftables table on that
// tap alone), a delay in its QEMU (filter-buffer). They are recorded in the VM directory before
// they are made, so that a simulator restarted (even after kill -9) sets exactly them again, and a
// partition ends on time. They last until the Server's next installation or its release; a
// partition ends after its duration.

// networkFaults records a VM's network faults (filenames.NetworkFaultsFile).
type networkFaults struct {
	Delay          time.Duration    `json:"delay,omitempty"`
	LossPercent    int              `json:"lossPercent,omitempty"`
	NoDNS          bool             `json:"noDNS,omitempty"`
	Unreachable    []netip.AddrPort `json:"unreachable,omitempty"`
	PartitionUntil *time.Time       `json:"partitionUntil,omitempty"`
	// Notes say what was made, for the step messages.
	Notes []string `json:"notes,omitempty"`
	// Node is the installation's node fault (nodefaults.go), and Silenced whether it silences
	// the kubelet now, as last made.
	Node     *nodeFault `json:"node,omitempty"`
	Silenced bool       `json:"silenced,omitempty"`
}

// hasNFT reports whether nft is installed (apt-get install nftables).
func hasNFT() bool {
	_, err := exec.LookPath("nft")
	return err == nil
}

func isNetworkFault(t stargatev1.FaultType) bool {
	switch t {
	case stargatev1.FaultNetworkLatency, stargatev1.FaultNetworkLoss, stargatev1.FaultNetworkPartition,
		stargatev1.FaultNoDNS, stargatev1.FaultNoRouteToAPIServer:
		return true
	}
	return false
}

// atTap is what of n the tap makes at now: a partition only until it ends, a node fault's silence
// only while its schedule says so.
func (n networkFaults) atTap(now time.Time) hostnet.TapFaults {
	f := hostnet.TapFaults{LossPercent: n.LossPercent, NoDNS: n.NoDNS, Unreachable: n.Unreachable,
		Partition: n.PartitionUntil != nil && now.Before(*n.PartitionUntil)}
	if n.Node.silenced(now) {
		f.Silenced = n.Node.APIServer
	}
	return f
}

func readNetworkFaults(dir string) (networkFaults, bool, error) {
	var n networkFaults
	b, err := os.ReadFile(filepath.Join(dir, filenames.NetworkFaultsFile))
	if errors.Is(err, os.ErrNotExist) {
		return n, false, nil
	}
	if err != nil {
		return n, false, fmt.Errorf("reading the injected network faults: %w", err)
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return n, false, fmt.Errorf("decoding the injected network faults %s: %w", filenames.NetworkFaultsFile, err)
	}
	return n, true, nil
}

func writeNetworkFaults(dir string, n networkFaults) error {
	b, err := json.Marshal(n)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, filenames.NetworkFaultsFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("recording the injected network faults: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, filenames.NetworkFaultsFile))
}

// add merges fault f, striking at now, into n and says what it made of it.
func (p *Provider) addNetworkFault(n *networkFaults, f stargatev1.Fault, now time.Time) string {
	switch f.Type {
	case stargatev1.FaultNetworkLatency:
		d := min(f.Duration.Duration, qemu.MaxNetworkDelay)
		n.Delay = max(n.Delay, d)
		return fmt.Sprintf("%s: the NIC's frames held up to %s each way (QEMU filter-buffer)", f.Name, d)
	case stargatev1.FaultNetworkLoss:
		n.LossPercent = max(n.LossPercent, int(*f.Percent))
		return fmt.Sprintf("%s: %d%% of the frames to and from the VM dropped at its tap (nftables)", f.Name, *f.Percent)
	case stargatev1.FaultNetworkPartition:
		until := now.Add(f.Duration.Duration)
		if n.PartitionUntil != nil && n.PartitionUntil.After(until) {
			until = *n.PartitionUntil
		}
		n.PartitionUntil = &until
		return fmt.Sprintf("%s: the VM cut off from the network until %s (nftables, at its tap)", f.Name, until.UTC().Format(time.RFC3339))
	case stargatev1.FaultNoDNS:
		n.NoDNS = true
		return fmt.Sprintf("%s: the VM's DNS queries dropped (nftables, at its tap)", f.Name)
	case stargatev1.FaultNoRouteToAPIServer:
		dests, err := p.apiServerDestinations()
		if err != nil {
			return fmt.Sprintf("%s not injected: %v", f.Name, err)
		}
		for _, d := range dests {
			if !slices.Contains(n.Unreachable, d) {
				n.Unreachable = append(n.Unreachable, d)
			}
		}
		return fmt.Sprintf("%s: the VM's connections to the API server (%s) answered no route to host (nftables, at its tap)",
			f.Name, joinAddrPorts(dests))
	}
	return ""
}

// strikeNetworkFault records f in the VM's network faults, then makes them.
func (p *Provider) strikeNetworkFault(dir, tap, qmp string, f stargatev1.Fault) error {
	n, _, err := readNetworkFaults(dir)
	if err != nil {
		return err
	}
	n.Notes = append(n.Notes, p.addNetworkFault(&n, f, time.Now()))
	if err := writeNetworkFaults(dir, n); err != nil {
		return err
	}
	return p.makeNetworkFaults(dir, tap, qmp, n)
}

// makeNetworkFaults sets the VM's network to n, at its tap and, while QEMU runs, in QEMU.
func (p *Provider) makeNetworkFaults(dir, tap, qmp string, n networkFaults) error {
	if err := hostnet.SetTapFaults(tap, n.atTap(time.Now())); err != nil {
		return err
	}
	if n.Delay > 0 {
		if vm, err := p.vms.Status(dir); err != nil || !vm.Running {
			return err
		}
		return p.vms.SetNetworkDelay(qmp, n.Delay)
	}
	return nil
}

// endPartition lifts the VM's partition once its time has passed (by a poll of its repave or the
// provider's loop, whichever comes first, also after a restart), keeping its other faults.
func (p *Provider) endPartition(dir, tap, qmp string) error {
	n, ok, err := readNetworkFaults(dir)
	if err != nil || !ok || n.PartitionUntil == nil || time.Now().Before(*n.PartitionUntil) {
		return err
	}
	n.PartitionUntil = nil
	if err := p.makeNetworkFaults(dir, tap, qmp, n); err != nil {
		return err
	}
	p.cfg.Log.Info("fault: network partition ended", "dir", dir, "tap", tap)
	return writeNetworkFaults(dir, n)
}

// forgetNetworkFaults removes the previous installation's network faults: a new one starts with
// a clean network (QEMU's delay goes with the QEMU that is replaced).
func forgetNetworkFaults(dir, tap string) error {
	if err := os.Remove(filepath.Join(dir, filenames.NetworkFaultsFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the previous installation's network faults: %w", err)
	}
	return hostnet.ClearTapFaults(tap)
}

// restoreNetworkFaults runs at startup, after the garbage collection: the network faults of the
// VMs this host holds (owners: tap → Server identity) are set again from their records, and every
// other fault table of this host's taps (or of taps that are gone) is removed, so that nothing a
// killed simulator set outlives it. Fault tables of taps on another bridge (another simulator's)
// are left alone.
func (p *Provider) restoreNetworkFaults(owners map[string]string, bridgeTaps []string) error {
	faultTaps, err := hostnet.FaultTaps()
	if err != nil {
		// Then no fault was set here either: the records of the VMs still say what to set.
		p.cfg.Log.Error(err, "listing the tables of injected network faults")
	}
	existing, err := hostnet.Taps()
	if err != nil {
		return err
	}
	var errs []error
	for _, tap := range faultTaps {
		if _, held := owners[tap]; held || (slices.Contains(existing, tap) && !slices.Contains(bridgeTaps, tap)) {
			continue
		}
		p.cfg.Log.Info("garbage: removing the injected network faults of a tap no VM of this host uses", "tap", tap)
		errs = append(errs, hostnet.SetTapFaults(tap, hostnet.TapFaults{}))
	}
	for tap, owner := range owners {
		dir := p.VMDir(serverOf(owner))
		n, ok, err := readNetworkFaults(dir)
		if err != nil || !ok {
			errs = append(errs, err)
			if slices.Contains(faultTaps, tap) {
				errs = append(errs, hostnet.SetTapFaults(tap, hostnet.TapFaults{}))
			}
			continue
		}
		qmp, err := p.layout.QMPSocket(dir)
		if err == nil {
			err = p.makeNetworkFaults(dir, tap, qmp, n)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("setting the injected network faults of %s again: %w", owner, err))
			continue
		}
		p.cfg.Log.Info("fault: network faults set again after a restart", "server", owner, "tap", tap)
	}
	return errors.Join(errs...)
}

// networkNote says, for a step's message, what the VM's network faults are now.
func networkNote(dir string) string {
	n, ok, err := readNetworkFaults(dir)
	if err != nil || !ok || len(n.Notes) == 0 {
		return ""
	}
	notes := slices.Clone(n.Notes)
	if n.PartitionUntil == nil {
		for i, s := range notes {
			if strings.Contains(s, "cut off from the network until") {
				notes[i] = s + " (ended)"
			}
		}
	}
	return "injected network faults: " + strings.Join(notes, "; ")
}

// apiServerDestinations are the addresses and port by which guests reach the API server of this
// host's kubeconfig: its address (resolved, IPv4), or, when it is this host's loopback (a cluster
// on this host), the bridge's gateway, by which guests reach this host.
func (p *Provider) apiServerDestinations() ([]netip.AddrPort, error) {
	hostport := p.cfg.APIServer
	if hostport == "" {
		return nil, errors.New("this host was not told its API server's address")
	}
	if u, err := url.Parse(hostport); err == nil && u.Host != "" {
		hostport = u.Host
		if u.Port() == "" {
			port := "443"
			if u.Scheme == "http" {
				port = "80"
			}
			hostport = net.JoinHostPort(u.Hostname(), port)
		}
	}
	host, portText, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("the API server %q has no port: %w", p.cfg.APIServer, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("the API server %q has no valid port", p.cfg.APIServer)
	}
	addrs := []netip.Addr{}
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = append(addrs, a)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip4", host); err != nil {
			return nil, fmt.Errorf("resolving the API server %s: %w", host, err)
		}
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		a = a.Unmap()
		if a.IsLoopback() {
			a = p.cfg.Network.Gateway.Addr()
		}
		if d := netip.AddrPortFrom(a, uint16(port)); a.Is4() && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the API server %s has no IPv4 address", host)
	}
	return out, nil
}

// serverOf is the Server of an identity (namespace/name).
func serverOf(id string) types.NamespacedName {
	ns, name, _ := strings.Cut(id, "/")
	return types.NamespacedName{Namespace: ns, Name: name}
}

func joinAddrPorts(as []netip.AddrPort) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
