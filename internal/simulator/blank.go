package simulator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

// A blank machine is the VM of a Server that was never repaved, as a new server in a rack is: the
// Server's CPUs, memory and MAC, an address on the bridge, an empty disk of spec.disk and no
// cloud-init seed. The Server's BMC makes it (EnsureBlankMachine) before it changes the Server, so
// virtual media and the boot override have a machine to belong to; its first power-on creates the
// disk, and it boots the virtual CD or finds no bootable device. filenames.BlankFile marks it; a
// repave removes the mark first and replaces the machine (install), and Release removes all of it
// with the VM directory, as for an installed VM.

// blankFile is the JSON of filenames.BlankFile.
type blankFile struct {
	CPUs      int    `json:"cpus"`
	MemoryMiB int64  `json:"memoryMiB"`
	DiskBytes int64  `json:"diskBytes"`
	MAC       string `json:"mac"`
}

var _ controller.BlankMachines = (*Provider)(nil)

// EnsureBlankMachine makes the blank machine of m.Server in its VM directory — MAC claim, address,
// settings — without starting it, or updates the settings of one that is off. A server with an
// installation (instance-id), or whose VM runs, is left as it is. A MAC another VM of this host
// has is refused with controller.ErrUnsupported, as a repave refuses it.
func (p *Provider) EnsureBlankMachine(_ context.Context, m controller.BlankMachine) (bool, error) {
	if m.CPUs <= 0 || m.MemoryMiB <= 0 || m.DiskBytes <= 0 {
		return false, fmt.Errorf("blank machine %s: %d CPUs, %d MiB of memory and a disk of %d bytes: all must be positive",
			identity(m.Server), m.CPUs, m.MemoryMiB, m.DiskBytes)
	}
	defer p.lock(m.Server)()
	dir := p.VMDir(m.Server)
	if installed, err := hasInstallation(dir); err != nil || installed {
		return false, err
	}
	if vm, err := p.vms.Status(dir); err != nil || vm.Running {
		return false, err // a running machine keeps the hardware it started with, as a real one does
	}
	id := identity(m.Server)
	mac := m.MAC
	if mac == "" {
		mac = hostnet.MACAddress(id)
	}
	owner, err := claimMAC(p.layout, dir, mac)
	if err != nil {
		return false, err
	}
	if owner != "" {
		return false, fmt.Errorf("MAC address %s is already used by %s on this host: give this Server another spec.macAddress, "+
			"or leave it empty for one derived from its name: %w", mac, owner, controller.ErrUnsupported)
	}
	if _, err := p.ipam.Allocate(id); err != nil {
		if errors.Is(err, ipam.ErrPoolExhausted) {
			return false, fmt.Errorf("no address left on this host's bridge for the blank machine: %w", err)
		}
		return false, fmt.Errorf("claiming the blank machine's address: %w", err)
	}
	// The settings first, the mark last: a crash between them leaves no blank machine, and the
	// next call makes it again.
	if err := writeVMSpec(dir, qemu.VMSpec{Name: m.Server.Namespace + "." + m.Server.Name, CPUs: m.CPUs, MemoryMiB: m.MemoryMiB,
		MAC: mac, NoSeed: true}); err != nil {
		return false, err
	}
	want := blankFile{CPUs: m.CPUs, MemoryMiB: m.MemoryMiB, DiskBytes: m.DiskBytes, MAC: mac}
	var cur blankFile
	if ok, err := readJSON(filepath.Join(dir, filenames.BlankFile), &cur); err == nil && ok && cur == want {
		return false, nil
	}
	if err := writeJSON(dir, filenames.BlankFile, want); err != nil {
		return false, err
	}
	p.cfg.Log.Info("blank machine ready", "server", id, "cpus", m.CPUs, "memoryMiB", m.MemoryMiB, "disk", formatBytes(m.DiskBytes), "mac", mac)
	return true, nil
}

// hasInstallation reports whether the VM directory holds an installation a repave started.
func hasInstallation(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, filenames.InstanceIDFile))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("reading instance-id: %w", err)
}

// readBlank returns the blank machine recorded in dir; ok is false when there is none: no mark,
// or an installation (whose repave removed the mark, or a crash left both).
func readBlank(dir string) (b blankFile, ok bool, err error) {
	if installed, err := hasInstallation(dir); err != nil || installed {
		return blankFile{}, false, err
	}
	ok, err = readJSON(filepath.Join(dir, filenames.BlankFile), &b)
	if err == nil && ok && b.DiskBytes <= 0 {
		return blankFile{}, false, fmt.Errorf("reading %s: no disk size", filenames.BlankFile)
	}
	return b, ok, err
}

// ensureBlankDisk creates the blank machine's empty disk when it has none yet: at its first
// power-on, so that a machine never powered on costs no disk at all. A disk that exists is kept,
// with whatever the machine's user wrote on it, as a real disk is.
func ensureBlankDisk(ctx context.Context, dir string, b blankFile) error {
	disk := filepath.Join(dir, filenames.DiskFile)
	if _, err := os.Stat(disk); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading the blank machine's disk: %w", err)
	}
	return qemu.CreateBlankDisk(ctx, disk, b.DiskBytes)
}

// isBlank reports whether server's VM is a blank machine, for Inspect.
func (p *Provider) isBlank(server types.NamespacedName) bool {
	_, ok, err := readBlank(p.VMDir(server))
	return err == nil && ok
}
