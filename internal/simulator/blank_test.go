package simulator

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

// These tests decide what a blank machine is from its VM directory's files alone: they need
// neither root nor a VM. Booting one is TestBlankMachineWithQEMU.

// blankTestProvider is a Provider over workDir with what blank machines need on disk: layout,
// address pool, VMs (never started here). Two over one directory are a simulator and its restart.
func blankTestProvider(t *testing.T, workDir string) *Provider {
	t.Helper()
	layout := Layout{WorkDir: workDir}
	return &Provider{
		cfg:    Config{Log: logr.Discard()},
		layout: layout,
		ipam: &ipam.Pool{Dir: layout.poolDir("sgtest0"), First: netip.MustParseAddr("192.168.100.11"),
			Last: netip.MustParseAddr("192.168.100.12")},
		locks: map[types.NamespacedName]*sync.Mutex{},
	}
}

func blankMachine(name string, cpus int) controller.BlankMachine {
	return controller.BlankMachine{Server: types.NamespacedName{Namespace: "hardware", Name: name}, CPUs: cpus, MemoryMiB: 1024, DiskBytes: 5 << 30}
}

// A blank machine is made from the Server's hardware — MAC claim, address, settings without a
// seed — and nothing else; making it again changes nothing, and a simulator restarted over the
// same work directory sees the same machine.
func TestBlankMachineIsMadeOnceAndSurvivesRestarts(t *testing.T) {
	work := t.TempDir()
	p := blankTestProvider(t, work)
	m := blankMachine("new-1", 2)
	if changed, err := p.EnsureBlankMachine(t.Context(), m); err != nil || !changed {
		t.Fatalf("making a blank machine: changed %v, %v", changed, err)
	}
	dir := p.VMDir(m.Server)
	mac := hostnet.MACAddress(identity(m.Server))
	var spec qemu.VMSpec
	if b, err := os.ReadFile(filepath.Join(dir, filenames.VMSpecFile)); err != nil || json.Unmarshal(b, &spec) != nil {
		t.Fatalf("vm.json: %v", err)
	}
	if !spec.NoSeed || spec.CPUs != 2 || spec.MemoryMiB != 1024 || spec.MAC != mac {
		t.Errorf("blank machine settings %+v, want 2 CPUs, 1024 MiB, MAC %s, no seed", spec, mac)
	}
	for _, f := range []string{filenames.DiskFile, filenames.SeedFile, filenames.InstanceIDFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists before the first power-on (%v): a blank machine has no seed, no installation, and its disk comes at power-on", f, err)
		}
	}
	info, err := p.Inspect(t.Context(), m.Server)
	if err != nil {
		t.Fatal(err)
	}
	want := controller.ServerInfo{Exists: true, Blank: true, MACAddress: mac, IPAddress: "192.168.100.11", Boot: defaultBoot()}
	if info != want {
		t.Errorf("Inspect: %+v, want %+v", info, want)
	}

	before, _ := os.Stat(filepath.Join(dir, filenames.BlankFile))
	if changed, err := p.EnsureBlankMachine(t.Context(), m); err != nil || changed {
		t.Fatalf("making the same blank machine again: changed %v, %v", changed, err)
	}
	if after, _ := os.Stat(filepath.Join(dir, filenames.BlankFile)); !os.SameFile(before, after) {
		t.Error("making the same blank machine again rewrote it")
	}
	restarted := blankTestProvider(t, work)
	if info, err := restarted.Inspect(t.Context(), m.Server); err != nil || info != want {
		t.Errorf("after a restart: %+v %v, want %+v", info, err, want)
	}

	// Powered off, it follows the Server's spec: 4 CPUs now, same address.
	if changed, err := restarted.EnsureBlankMachine(t.Context(), blankMachine("new-1", 4)); err != nil || !changed {
		t.Fatalf("following the spec: changed %v, %v", changed, err)
	}
	b, _, err := readBlank(dir)
	if err != nil || b.CPUs != 4 || b.DiskBytes != 5<<30 {
		t.Errorf("after the spec changed: %+v %v, want 4 CPUs", b, err)
	}
	if ip, _, _ := restarted.ipam.Lookup(identity(m.Server)); ip.String() != "192.168.100.11" {
		t.Errorf("address %s after the spec changed, want the same one", ip)
	}
}

// What is refused: hardware that is not positive, a MAC another VM of the host has (as a repave
// refuses it), an address pool that is full; a power-on of a Server that has neither an
// installation nor a blank machine. An installed Server is never turned into a blank machine.
func TestBlankMachineRefusals(t *testing.T) {
	p := blankTestProvider(t, t.TempDir())
	ctx := t.Context()
	if _, err := p.EnsureBlankMachine(ctx, blankMachine("zero", 0)); err == nil {
		t.Error("a blank machine of 0 CPUs was made")
	}

	nothing := types.NamespacedName{Namespace: "hardware", Name: "nothing"}
	if err := p.PowerOn(ctx, nothing); !errors.Is(err, controller.ErrNotInstalled) {
		t.Errorf("PowerOn of a Server with no machine: %v, want ErrNotInstalled", err)
	}
	// A crash after the MAC claim and before the mark leaves no blank machine to boot.
	if _, err := claimMAC(p.layout, p.VMDir(nothing), "52:54:00:00:00:99"); err != nil {
		t.Fatal(err)
	}
	if err := p.PowerOn(ctx, nothing); !errors.Is(err, controller.ErrNotInstalled) {
		t.Errorf("PowerOn of a half-made blank machine: %v, want ErrNotInstalled", err)
	}

	dup := blankMachine("dup", 1)
	dup.MAC = "52:54:00:00:00:99"
	if _, err := p.EnsureBlankMachine(ctx, dup); !errors.Is(err, controller.ErrUnsupported) {
		t.Errorf("a MAC Server hardware/nothing has: %v, want ErrUnsupported", err)
	}
	if _, ok, _ := readBlank(p.VMDir(dup.Server)); ok {
		t.Error("a blank machine was made with a duplicate MAC")
	}

	// Two addresses in the pool: the third machine finds none.
	for _, name := range []string{"a", "b"} {
		if _, err := p.EnsureBlankMachine(ctx, blankMachine(name, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.EnsureBlankMachine(ctx, blankMachine("c", 1)); !errors.Is(err, ipam.ErrPoolExhausted) {
		t.Errorf("a third machine on a pool of two addresses: %v, want ErrPoolExhausted", err)
	}

	installed := blankMachine("installed", 1)
	dir := p.VMDir(installed.Server)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filenames.InstanceIDFile), []byte("i-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := p.EnsureBlankMachine(ctx, installed); err != nil || changed {
		t.Fatalf("an installed Server: changed %v, %v", changed, err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 1 {
		t.Errorf("an installed Server's directory holds %d files after EnsureBlankMachine, want it untouched", len(des))
	}
	if info, _ := p.Inspect(ctx, installed.Server); info.Blank || info.InstanceID != "i-1" {
		t.Errorf("installed Server inspected as %+v", info)
	}
}

// The disk comes at the first power-on, empty, of the recorded size; later power-ons keep it with
// whatever was written on it.
func TestBlankDiskIsMadeOnce(t *testing.T) {
	testreq.Command(t, "qemu-img", "apt-get install -y qemu-utils")
	dir := t.TempDir()
	b := blankFile{CPUs: 1, MemoryMiB: 512, DiskBytes: 3 << 30}
	if err := ensureBlankDisk(t.Context(), dir, b); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, filenames.DiskFile)
	info, err := qemu.InspectBaseImage(t.Context(), disk)
	if err != nil || info.VirtualSize != 3<<30 || info.Format != "qcow2" {
		t.Fatalf("blank disk %+v %v, want qcow2 of 3 GiB", info, err)
	}
	first, _ := os.Stat(disk)
	if err := ensureBlankDisk(t.Context(), dir, blankFile{DiskBytes: 4 << 30}); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Stat(disk); !os.SameFile(first, again) {
		t.Error("a second power-on replaced the blank machine's disk")
	}
}
