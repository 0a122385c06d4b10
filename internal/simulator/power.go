package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/qemu"
)

// writeVMSpec records how the VM in dir is started, for later power-ons.
func writeVMSpec(dir string, spec qemu.VMSpec) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encoding VM settings: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, filenames.VMSpecFile), b, 0o600); err != nil {
		return fmt.Errorf("recording VM settings: %w", err)
	}
	return nil
}

// Shutdown presses the VM's ACPI power button; the guest shuts down and QEMU exits.
func (p *Provider) Shutdown(_ context.Context, server types.NamespacedName) error {
	defer p.lock(server)()
	dir := p.VMDir(server)
	qmp, err := p.layout.QMPSocket(dir)
	if err != nil {
		return err
	}
	return p.vms.Powerdown(dir, qmp)
}

// PowerOn boots the server's installed disk again with the settings it was installed with: same
// CPUs, memory, MAC, tap and address; the seed keeps the instance-id, so cloud-init does not run
// the installation again. A blank machine (blank.go) boots its disk, empty at its first
// power-on, without a seed. A server that is neither is controller.ErrNotInstalled. The virtual
// CD, when one is inserted, is attached, and booted first when the boot override says Cd (Once or
// Continuous); a Once override is used up by this boot.
func (p *Provider) PowerOn(ctx context.Context, server types.NamespacedName) error {
	defer p.lock(server)()
	dir := p.VMDir(server)
	if vm, err := p.vms.Status(dir); err != nil || vm.Running {
		return err
	}
	installed, err := hasInstallation(dir)
	if err != nil {
		return err
	}
	blank, isBlank, err := readBlank(dir)
	if err != nil {
		return err
	}
	if !installed && !isBlank {
		return controller.ErrNotInstalled
	}
	b, err := os.ReadFile(filepath.Join(dir, filenames.VMSpecFile))
	if errors.Is(err, os.ErrNotExist) {
		return controller.ErrNotInstalled
	}
	if err != nil {
		return fmt.Errorf("reading VM settings: %w", err)
	}
	var spec qemu.VMSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("reading VM settings: %w", err)
	}
	// The file is ours, but the paths must still be this Server's: never boot another directory.
	qmp, err := p.layout.QMPSocket(dir)
	if err != nil {
		return err
	}
	spec.Dir, spec.QMPSocket, spec.Accel, spec.Tap = dir, qmp, p.cfg.Accel, hostnet.TapName(identity(server))
	// An installation boots with its seed, a blank machine without any, its firmware on the
	// console to say what it boots or that it finds nothing: whatever the file says.
	spec.NoSeed, spec.FirmwareConsole = isBlank, isBlank
	if isBlank {
		if err := ensureBlankDisk(ctx, dir, blank); err != nil {
			return err
		}
	}
	if mac := recordedMAC(dir); mac != "" {
		spec.MAC = mac
	}
	cd, bootCD, boot, err := p.bootDevices(ctx, server, dir)
	if err != nil {
		return err
	}
	spec.CD, spec.BootCD = cd, bootCD
	if err := p.net.Ensure(); err != nil {
		return fmt.Errorf("setting up the simulator network: %w", err)
	}
	if err := p.net.EnsureTap(spec.Tap); err != nil {
		return fmt.Errorf("attaching the VM: %w", err)
	}
	if err := p.vms.Start(ctx, spec); err != nil {
		return fmt.Errorf("starting the VM: %w", err)
	}
	// The installation's injected network delay lives in QEMU: set it again in the new one.
	if n, ok, err := readNetworkFaults(dir); err != nil || (ok && n.Delay > 0) {
		if err == nil {
			err = p.makeNetworkFaults(dir, spec.Tap, spec.QMPSocket, n)
		}
		if err != nil {
			return fmt.Errorf("the VM started, but setting its injected network faults again failed: %w", err)
		}
	}
	// Used up only once the VM started: a failed start leaves the override for the next try.
	if boot.Enabled == controller.BootOnce {
		boot.Enabled = controller.BootDisabled
		if err := writeBoot(dir, boot); err != nil {
			return fmt.Errorf("the VM started, but recording that its one-time boot override is used up failed: %w", err)
		}
	}
	from := "disk"
	if bootCD {
		from = "cd"
	}
	p.cfg.Log.Info("VM powered on", "server", identity(server), "bootFrom", from, "cdAttached", cd != "", "blank", isBlank)
	return nil
}
