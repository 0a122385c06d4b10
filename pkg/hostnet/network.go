// Package hostnet is the simulator's layer-2 network on the host: the Linux bridge VMs attach to,
// its address, NAT and FORWARD rules in Stargate's own iptables chains, one tap device per VM,
// and the tap names and MAC addresses derived from a VM's identity. Every operation converges, so
// it may be repeated after a crash or run concurrently by another process.
package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Defaults of the simulator network, from the product brief.
const (
	DefaultBridge  = "stargate-br0"
	DefaultGateway = "192.168.100.1/24"
)

// Chains Stargate owns. Our rules live in our own chains, jumped to from the built-in ones, so
// teardown removes exactly what setup added and `iptables -S` shows whose rules they are.
const (
	natChain     = "STARGATE-POSTROUTING"
	forwardChain = "STARGATE-FORWARD"
	tapPrefix    = "sg-"
)

// Config describes the simulator's layer-2 network on the host.
type Config struct {
	// Bridge is the name of the Linux bridge VMs attach to.
	Bridge string
	// Gateway is the bridge's address with the subnet's prefix length, e.g. 192.168.100.1/24.
	Gateway netip.Prefix
	// NAT masquerades traffic from the subnet that leaves by another interface, so guests reach
	// package mirrors and the cluster's API server through the host.
	NAT bool
}

// Subnet is the network VMs live on.
func (c Config) Subnet() netip.Prefix { return c.Gateway.Masked() }

// Network sets up and tears down the bridge, NAT and taps. Every method converges: it may be called
// again, after a crash or concurrently with itself in another process, and ends in the same state.
type Network struct {
	cfg Config
}

// New validates cfg.
func New(cfg Config) (*Network, error) {
	if cfg.Bridge == "" || len(cfg.Bridge) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("bridge name %q must be 1-15 characters", cfg.Bridge)
	}
	if !cfg.Gateway.Addr().Is4() || cfg.Gateway.Bits() > 30 {
		return nil, fmt.Errorf("gateway %s must be an IPv4 address with a prefix of /30 or wider, e.g. %s", cfg.Gateway, DefaultGateway)
	}
	return &Network{cfg: cfg}, nil
}

// Config returns the network's configuration.
func (n *Network) Config() Config { return n.cfg }

// Ensure creates the bridge with its address, brings it up, enables IPv4 forwarding and installs
// the NAT and FORWARD rules.
func (n *Network) Ensure() error {
	br, err := n.ensureBridge()
	if err != nil {
		return err
	}
	if err := ensureAddr(br, n.cfg.Gateway); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bringing up bridge %s: %w", n.cfg.Bridge, err)
	}
	if !n.cfg.NAT {
		return nil
	}
	// Forwarding is per network namespace; it is left on at teardown because other software on
	// the host (Docker, libvirt) may rely on it too.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling IPv4 forwarding: %w", err)
	}
	return n.ensureRules()
}

func (n *Network) ensureBridge() (netlink.Link, error) {
	link, err := netlink.LinkByName(n.cfg.Bridge)
	if err == nil {
		if _, ok := link.(*netlink.Bridge); !ok {
			return nil, fmt.Errorf("%s exists but is a %s, not a bridge: remove it or choose another --bridge", n.cfg.Bridge, link.Type())
		}
		return link, nil
	}
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		return nil, fmt.Errorf("looking up bridge %s: %w", n.cfg.Bridge, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.cfg.Bridge, MTU: 1500}}
	if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("creating bridge %s: %w", n.cfg.Bridge, err)
	}
	// Re-read: another process may have won the race, and the kernel fills in the index.
	link, err = netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("looking up bridge %s after creating it: %w", n.cfg.Bridge, err)
	}
	return link, nil
}

func ensureAddr(link netlink.Link, prefix netip.Prefix) error {
	want := &netlink.Addr{IPNet: &net.IPNet{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), 32)}}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() == want.IPNet.String() {
			return nil
		}
	}
	if err := netlink.AddrAdd(link, want); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %s to %s: %w", prefix, link.Attrs().Name, err)
	}
	return nil
}

// rules returns Stargate's iptables rules by table and chain, with the jumps into them.
func (n *Network) rules() []rule {
	subnet := n.cfg.Subnet().String()
	br := n.cfg.Bridge
	return []rule{
		// Guests reach the outside (package mirrors, the cluster API) through the host's uplink.
		{"nat", natChain, []string{"-s", subnet, "!", "-o", br, "-m", "comment", "--comment", "stargate: masquerade VM traffic leaving the host", "-j", "MASQUERADE"}},
		// Hosts running Docker set the FORWARD policy to DROP; let bridge traffic through explicitly.
		{"filter", forwardChain, []string{"-i", br, "-m", "comment", "--comment", "stargate: forward traffic from VMs", "-j", "ACCEPT"}},
		{"filter", forwardChain, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
			"-m", "comment", "--comment", "stargate: forward replies to VMs", "-j", "ACCEPT"}},
	}
}

// jumps are the rules in built-in chains that send packets to ours. FORWARD's is inserted first so
// that it runs before Docker's DOCKER-USER/DROP rules.
var jumps = []rule{
	{"nat", "POSTROUTING", []string{"-m", "comment", "--comment", "stargate: VM NAT", "-j", natChain}},
	{"filter", "FORWARD", []string{"-m", "comment", "--comment", "stargate: VM forwarding", "-j", forwardChain}},
}

type rule struct {
	table, chain string
	spec         []string
}

func (n *Network) ensureRules() error {
	ipt, err := iptables.New()
	if err != nil {
		return fmt.Errorf("iptables is required for NAT (apt-get install iptables): %w", err)
	}
	for _, c := range []struct{ table, chain string }{{"nat", natChain}, {"filter", forwardChain}} {
		exists, err := ipt.ChainExists(c.table, c.chain)
		if err != nil {
			return fmt.Errorf("checking chain %s/%s: %w", c.table, c.chain, err)
		}
		if !exists {
			if err := ipt.NewChain(c.table, c.chain); err != nil {
				if exists, _ := ipt.ChainExists(c.table, c.chain); !exists {
					return fmt.Errorf("creating chain %s/%s: %w", c.table, c.chain, err)
				}
			}
		}
	}
	for _, r := range n.rules() {
		if err := ipt.AppendUnique(r.table, r.chain, r.spec...); err != nil {
			return fmt.Errorf("adding rule to %s/%s: %w", r.table, r.chain, err)
		}
	}
	for _, j := range jumps {
		ok, err := ipt.Exists(j.table, j.chain, j.spec...)
		if err != nil {
			return fmt.Errorf("checking jump from %s/%s: %w", j.table, j.chain, err)
		}
		if !ok {
			if err := ipt.Insert(j.table, j.chain, 1, j.spec...); err != nil {
				return fmt.Errorf("adding jump from %s/%s: %w", j.table, j.chain, err)
			}
		}
	}
	return nil
}

// Teardown removes the rules, chains and the bridge. Taps still attached are removed with the
// bridge's slaves by the caller first (see DeleteTap); what is already gone is not an error.
func (n *Network) Teardown() error {
	var errs []error
	if n.cfg.NAT {
		if ipt, err := iptables.New(); err != nil {
			errs = append(errs, fmt.Errorf("iptables: %w", err))
		} else {
			for _, j := range jumps {
				// iptables cannot even check a jump to a chain that is gone: then the jump is gone too.
				target := j.spec[len(j.spec)-1]
				if exists, err := ipt.ChainExists(j.table, target); err != nil || !exists {
					continue
				}
				if err := ipt.DeleteIfExists(j.table, j.chain, j.spec...); err != nil {
					errs = append(errs, fmt.Errorf("removing jump from %s/%s: %w", j.table, j.chain, err))
				}
			}
			for _, c := range []struct{ table, chain string }{{"nat", natChain}, {"filter", forwardChain}} {
				if exists, err := ipt.ChainExists(c.table, c.chain); err == nil && exists {
					if err := ipt.ClearAndDeleteChain(c.table, c.chain); err != nil {
						errs = append(errs, fmt.Errorf("removing chain %s/%s: %w", c.table, c.chain, err))
					}
				}
			}
		}
	}
	if link, err := netlink.LinkByName(n.cfg.Bridge); err == nil {
		if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("removing bridge %s: %w", n.cfg.Bridge, err))
		}
	}
	return errors.Join(errs...)
}

// EnsureTap creates a persistent tap device, attaches it to the bridge and brings it up.
func (n *Network) EnsureTap(name string) error {
	if !strings.HasPrefix(name, tapPrefix) || len(name) > unix.IFNAMSIZ-1 {
		return fmt.Errorf("tap name %q is not one of Stargate's", name)
	}
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s is missing (the network is not set up): %w", n.cfg.Bridge, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// QEMU opens the tap itself with IFF_NO_PI|IFF_VNET_HDR; match it.
			Flags:  netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Queues: 1,
		}
		if err := netlink.LinkAdd(tap); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("creating tap %s: %w", name, err)
		}
		// netlink keeps the queue open; a single-queue tap accepts one opener, and that is QEMU.
		for _, f := range tap.Fds {
			f.Close()
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("looking up tap %s: %w", name, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attaching tap %s to bridge %s: %w", name, n.cfg.Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing up tap %s: %w", name, err)
	}
	return nil
}

// DeleteTap removes a tap device and its injected network faults (SetTapFaults); a missing one is
// not an error.
func (n *Network) DeleteTap(name string) error {
	if err := ClearTapFaults(name); err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("looking up tap %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("removing tap %s: %w", name, err)
	}
	return nil
}

// Taps lists Stargate's tap devices, for garbage collection and tests.
func Taps() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, tapPrefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// BridgeTaps lists the Stargate taps attached to this network's bridge (none when the bridge does
// not exist): what a garbage collection of this network may consider.
func (n *Network) BridgeTaps() ([]string, error) {
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("finding bridge %s: %w", n.cfg.Bridge, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []string
	for _, l := range links {
		if a := l.Attrs(); strings.HasPrefix(a.Name, tapPrefix) && a.MasterIndex == br.Attrs().Index {
			out = append(out, a.Name)
		}
	}
	return out, nil
}
