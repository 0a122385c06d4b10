package installer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"stargate.io/stargate/pkg/installspec"
)

// ConfigureNetwork brings up loopback and the interface with the Spec's MAC, gives it the static
// address and default route, and writes resolvConf (when DNS servers are given). It waits up to
// timeout for the interface to appear (its driver may still be probing) and for its carrier; a
// missing carrier is only logged, since some NICs report none until traffic flows.
func ConfigureNetwork(ctx context.Context, n installspec.Network, resolvConf string, timeout time.Duration, logf func(string, ...any)) (string, error) {
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		return "", fmt.Errorf("network.mac: %w", err)
	}
	prefix, err := netip.ParsePrefix(n.Address)
	if err != nil {
		return "", fmt.Errorf("network.address: %w", err)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo) // loopback only matters to local connections; not fatal
	}
	deadline := time.Now().Add(timeout)
	var link netlink.Link
	for link == nil {
		link, err = linkByMAC(mac)
		if err != nil {
			return "", err
		}
		if link != nil {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no network interface has MAC %s after %s: interfaces seen: %s "+
				"(a NIC driver missing from the installer, or the wrong MAC in the Server's spec)", mac, timeout, describeLinks())
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return "", err
		}
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("bringing %s up: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen())}}
	if prefix.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD // duplicate address detection would delay the address for seconds
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return "", fmt.Errorf("adding %s to %s: %w", prefix, name, err)
	}
	if n.Gateway != "" {
		gw := net.ParseIP(n.Gateway)
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}
		if err := netlink.RouteReplace(route); err != nil {
			return "", fmt.Errorf("adding the default route via %s on %s: %w", gw, name, err)
		}
	}
	if len(n.DNS) > 0 {
		var b strings.Builder
		for _, d := range n.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		if err := os.WriteFile(resolvConf, []byte(b.String()), 0o644); err != nil {
			return "", fmt.Errorf("writing %s: %w", resolvConf, err)
		}
	}
	for {
		l, err := netlink.LinkByIndex(link.Attrs().Index)
		if err == nil && l.Attrs().OperState == netlink.OperUp {
			break
		}
		if time.Now().After(deadline) {
			logf("%s has no carrier after %s; trying anyway", name, timeout)
			break
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return "", err
		}
	}
	return name, nil
}

func linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing network interfaces: %w", err)
	}
	for _, l := range links {
		// Bonds, bridges and VLANs copy their MAC from a port; only a device of type "device" is the NIC.
		if l.Type() == "device" && l.Attrs().HardwareAddr.String() == mac.String() {
			return l, nil
		}
	}
	return nil, nil
}

func describeLinks() string {
	links, err := netlink.LinkList()
	if err != nil {
		return "(cannot list: " + err.Error() + ")"
	}
	var out []string
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		out = append(out, l.Attrs().Name+" "+l.Attrs().HardwareAddr.String())
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return errors.Join(errors.New("interrupted"), ctx.Err())
	case <-t.C:
		return nil
	}
}
