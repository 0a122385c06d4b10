package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
)

// Injected network faults live in one nftables table per tap, of the netdev family: its chains
// hook the tap device itself (ingress: frames the VM sends; egress: frames to the VM), so a rule
// can never match another VM's traffic or the host's own, and removing the table removes exactly
// that VM's faults. nftables rather than tc: this kernel family often lacks netem, and the
// bridge family cannot reject; the netdev family can drop, sample at random and reject.
//
// The script handed to nft is built only from values this package validates (a tap name of
// Stargate's, parsed addresses, numbers), never from a tenant's text.

// faultTablePrefix names the tables; the rest of the name is the tap's.
const faultTablePrefix = "stargate-faults-"

// TapFaults are a VM's network faults, made at its tap.
type TapFaults struct {
	// LossPercent of the frames in each direction are dropped at random (0-100).
	LossPercent int
	// Partition drops every frame to and from the VM.
	Partition bool
	// NoDNS drops the VM's DNS queries (UDP and TCP to port 53), so lookups time out.
	NoDNS bool
	// Unreachable are the destinations the VM's TCP connections to are answered "no route to
	// host" (ICMP host unreachable), as when a router has no route to them.
	Unreachable []netip.AddrPort
	// Silenced are the destinations the VM's TCP segments to are dropped without an answer, as
	// when a process stopped talking to them (a kubelet that stopped posting its status).
	Silenced []netip.AddrPort
}

// Empty reports whether f injects nothing.
func (f TapFaults) Empty() bool {
	return f.LossPercent == 0 && !f.Partition && !f.NoDNS && len(f.Unreachable) == 0 && len(f.Silenced) == 0
}

func (f TapFaults) validate() error {
	if f.LossPercent < 0 || f.LossPercent > 100 {
		return fmt.Errorf("loss %d%% is not a percentage", f.LossPercent)
	}
	for _, a := range slices.Concat(f.Unreachable, f.Silenced) {
		if !a.IsValid() || !a.Addr().Is4() || a.Port() == 0 {
			return fmt.Errorf("unreachable destination %s must be an IPv4 address and a port", a)
		}
	}
	return nil
}

func faultTable(tap string) string { return faultTablePrefix + tap }

// faultScript is the nft script that makes tap's faults exactly f, in one transaction: the
// table is created (so that deleting it cannot fail), deleted, and created again with f's rules;
// with no faults it is only deleted. Pure, so that its output is tested as text.
func faultScript(tap string, f TapFaults) string {
	table := faultTable(tap)
	var b strings.Builder
	fmt.Fprintf(&b, "table netdev %s {}\ndelete table netdev %s\n", table, table)
	if f.Empty() {
		return b.String()
	}
	var from, to []string
	if f.Partition {
		from = append(from, `counter drop comment "NetworkPartition"`)
		to = append(to, `counter drop comment "NetworkPartition"`)
	}
	if f.NoDNS {
		from = append(from, `meta l4proto { tcp, udp } th dport 53 counter drop comment "NoDNS"`)
	}
	for _, a := range f.Unreachable {
		from = append(from, fmt.Sprintf(`ip daddr %s tcp dport %d counter reject with icmp type host-unreachable comment "NoRouteTo %s"`,
			a.Addr(), a.Port(), a))
	}
	for _, a := range f.Silenced {
		from = append(from, fmt.Sprintf(`ip daddr %s tcp dport %d counter drop comment "Silenced %s"`, a.Addr(), a.Port(), a))
	}
	if f.LossPercent > 0 {
		// numgen draws 0-99 per frame: the frames under the percentage are lost.
		rule := fmt.Sprintf(`numgen random mod 100 < %d counter drop comment "NetworkLoss %d%%"`, f.LossPercent, f.LossPercent)
		from, to = append(from, rule), append(to, rule)
	}
	fmt.Fprintf(&b, "table netdev %s {\n", table)
	chain := func(name, hook string, rules []string) {
		if len(rules) == 0 {
			return
		}
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s device %q priority -500; policy accept;\n", name, hook, tap)
		for _, r := range rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	chain("from-vm", "ingress", from)
	chain("to-vm", "egress", to)
	b.WriteString("}\n")
	return b.String()
}

// SetTapFaults makes the network faults of the VM on tap exactly f (none: removes them). It
// converges: run it again, after a crash or with the same f, and the result is the same. The tap
// must exist while f has faults: a netdev chain hooks a device.
func SetTapFaults(tap string, f TapFaults) error {
	if !isTapName(tap) {
		return fmt.Errorf("tap name %q is not one of Stargate's", tap)
	}
	if err := f.validate(); err != nil {
		return err
	}
	if err := nft(faultScript(tap, f)); err != nil {
		return fmt.Errorf("setting the network faults of tap %s: %w", tap, err)
	}
	return nil
}

// FaultTaps lists the taps that have a table of network faults, for garbage collection.
func FaultTaps() ([]string, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, nil // nft missing: no fault was ever set here
	}
	out, err := exec.Command("nft", "list", "tables", "netdev").Output()
	if err != nil {
		return nil, fmt.Errorf("listing nftables tables: %w%s", err, stderrOf(err))
	}
	var taps []string
	for _, line := range strings.Split(string(out), "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "table netdev "+faultTablePrefix)
		if ok && isTapName(name) {
			taps = append(taps, name)
		}
	}
	slices.Sort(taps)
	return taps, nil
}

// ClearTapFaults removes the network faults of tap, if it has any. A host whose nft cannot list
// tables has none of ours (SetTapFaults needs it too), and nothing to clear.
func ClearTapFaults(tap string) error {
	if taps, _ := FaultTaps(); !slices.Contains(taps, tap) {
		return nil
	}
	return SetTapFaults(tap, TapFaults{})
}

func isTapName(name string) bool {
	if !strings.HasPrefix(name, tapPrefix) || len(name) > 15 {
		return false
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
			return false
		}
	}
	return true
}

// nft runs an nft script in one transaction (nft -f -), with no shell.
func nft(script string) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return errors.New("nft is required for injected network faults (apt-get install nftables)")
	}
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}
