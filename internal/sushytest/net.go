package sushytest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"stargate.io/stargate/internal/netnstest"
)

// Bridge creates a Linux bridge with address gateway (e.g. 10.77.0.1/24) in the test's network
// namespace (it goes with the namespace).
func Bridge(t testing.TB, name string, gateway netip.Prefix) {
	t.Helper()
	netnstest.Require(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("creating bridge %s: %v", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gateway.Addr().AsSlice(), Mask: net.CIDRMask(gateway.Bits(), 32)}}
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatalf("adding %s to bridge %s: %v", gateway, name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatalf("bringing up bridge %s: %v", name, err)
	}
}

// Tap creates a tap device owned by BMCUID on bridge, for a domain's
// <interface type='ethernet'><target dev='NAME' managed='no'/>: libvirt in session mode creates
// no network devices, but opens a pre-made tap its user owns. That open goes through
// /dev/net/tun, which is root's alone on Debian: see allowTun.
func Tap(t testing.TB, bridge, name string) {
	t.Helper()
	allowTun(t)
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatalf("bridge %s: %v", bridge, err)
	}
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Queues: 1, Owner: BMCUID, Group: BMCUID}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatalf("creating tap %s: %v", name, err)
	}
	// netlink holds the queue open; a single-queue tap takes one opener, and that is QEMU's.
	for _, f := range tap.Fds {
		_ = f.Close()
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		t.Fatalf("attaching tap %s to %s: %v", name, bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatalf("bringing up tap %s: %v", name, err)
	}
}

var tunOnce sync.Once

// allowTun lets BMCUID open /dev/net/tun, in this test's mount namespace only: a tmpfs over
// /dev/net holds a tun node (the same device) owned by BMCUID. The test runs in `ip netns exec`'s
// mount namespace (package netnstest), whose mounts do not reach the host, so the host's
// /dev/net/tun keeps its permissions; in its parent's mount namespace it refuses to run.
func allowTun(t testing.TB) {
	t.Helper()
	netnstest.Require(t)
	// `ip netns exec` made this process's mount namespace: not its parent's.
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	parent, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err1 != nil || err2 != nil || self == parent {
		t.Fatalf("not in a mount namespace of the test's own (%s, parent's %s; %v, %v): will not change /dev/net", self, parent, err1, err2)
	}
	var err error
	tunOnce.Do(func() {
		if out, merr := exec.Command("mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "sushytest-dev-net", "/dev/net").CombinedOutput(); merr != nil {
			err = fmt.Errorf("mounting a tmpfs on /dev/net: %w: %s", merr, out)
			return
		}
		tun := filepath.Join("/dev/net", "tun")
		if merr := unix.Mknod(tun, unix.S_IFCHR|0o600, int(unix.Mkdev(10, 200))); merr != nil {
			err = fmt.Errorf("making %s: %w", tun, merr)
			return
		}
		err = os.Chown(tun, BMCUID, BMCUID)
	})
	if err != nil {
		t.Fatal(err)
	}
}
