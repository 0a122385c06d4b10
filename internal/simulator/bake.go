package simulator

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

const (
	// bakeOwnerPrefix starts the IPAM owner (and tap and MAC identity) of a bake VM. It has no
	// '/', so it is never taken for a Server's namespace/name.
	bakeOwnerPrefix = "bake:"
	// bakeHeadroom is added to the OS image's size for the bake VM's disk: cloud images come
	// nearly full and grow their root file system to the disk, and an installation needs room.
	// The golden image has that size; a VM's disk is never smaller than its golden image.
	bakeHeadroom = 4 << 30
	// bakePowerOffTimeout is how long a bake VM may take to power off after cloud-init finished.
	bakePowerOffTimeout = 2 * time.Minute
	// bakePoll is how often a bake's console and VM are checked.
	bakePoll = time.Second
	// DefaultBakeTimeout bounds a bake, whoever waits for it: an installation that never
	// finishes must not hold a VM, an address and disk space for good.
	DefaultBakeTimeout = time.Hour
)

// bake boots the OS image with the installation, waits for cloud-init to finish and the guest to
// power off (BakeVendorData cleans the instance state first), and keeps the disk, flattened, as
// the golden image of key. Whatever happens, the bake VM and its directory, tap and address are
// gone when it returns; a failed bake caches nothing.
func (p *Provider) bake(ctx context.Context, b *bakeJob, key string, req controller.RepaveRequest, base imagecache.Image) (err error) {
	owner := bakeOwnerPrefix + short(key)
	defer func() {
		if cerr := p.cleanBake(context.Background(), b.dir); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up the bake: %w", cerr))
		}
	}()
	// The OS image and the golden image being made stay while the bake needs them; a prune
	// that ran before the pin may have removed the OS image: it is fetched again.
	defer p.pinImage(base.Path)()
	golden := p.goldenPath(req.Server.Namespace, key)
	defer p.pinImage(golden)()
	if _, err := os.Stat(base.Path); err != nil {
		return fmt.Errorf("the OS image was removed from the host's cache (--image-cache-size) as the bake began: %w", errRetry)
	}
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(p.cfg.BakeTimeout, DefaultBakeTimeout))
	defer cancel()
	p.bakesStarted.Add(1)
	p.cfg.Log.Info("baking a golden image", "key", short(key), "image", req.ImageURL, "for", identity(req.Server))
	if err := p.cleanBake(ctx, b.dir); err != nil { // an earlier attempt's leftovers
		return err
	}
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return fmt.Errorf("creating the bake directory: %w", err)
	}
	mac, tap := hostnet.MACAddress(owner), hostnet.TapName(owner)
	if err := p.claimBakeMAC(b.dir, mac); err != nil {
		return err
	}
	ip, err := p.ipam.Allocate(owner)
	if err != nil {
		return fmt.Errorf("allocating the bake VM's address: %w", err)
	}
	instanceID := "stargate-bake-" + short(key)
	err = cloudinit.WriteNoCloudISO(filepath.Join(b.dir, filenames.SeedFile), cloudinit.Config{
		InstanceID: instanceID,
		Hostname:   "stargate-bake",
		UserData:   req.Installation,
		VendorData: cloudinit.BakeVendorData(instanceID),
		Network: &cloudinit.GuestNetwork{MAC: mac, Address: netip.PrefixFrom(ip, p.cfg.Network.Subnet().Bits()),
			Gateway: p.cfg.Network.Gateway.Addr(), DNS: p.cfg.DNS},
	})
	if err != nil {
		return fmt.Errorf("writing the bake's cloud-init seed: %w", err)
	}
	if err := p.net.Ensure(); err != nil {
		return err
	}
	if err := p.net.EnsureTap(tap); err != nil {
		return err
	}
	info, err := qemu.InspectBaseImage(ctx, base.Path)
	if err != nil {
		return fmt.Errorf("OS image: %w", err)
	}
	disk := filepath.Join(b.dir, filenames.DiskFile)
	if err := qemu.CreateOverlay(ctx, base.Path, disk, info.VirtualSize+bakeHeadroom); err != nil {
		return err
	}
	qmp, err := p.layout.QMPSocket(b.dir)
	if err != nil {
		return err
	}
	spec := qemu.VMSpec{Name: "bake." + short(key), Dir: b.dir, QMPSocket: qmp, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB,
		MAC: mac, Tap: tap, Accel: p.cfg.Accel, NoReboot: true}
	if err := p.vms.Start(ctx, spec); err != nil {
		return err
	}
	if err := p.awaitBake(ctx, b.dir, instanceID); err != nil {
		return err
	}
	if err := qemu.Flatten(ctx, disk, golden); err != nil {
		return err
	}
	// The new image counts, and stays: it is pinned until this returns.
	p.pruneNamespace(req.Server.Namespace)
	p.prune()
	p.cfg.Log.Info("golden image baked", "key", short(key), "took", time.Since(b.started).Round(time.Second))
	return nil
}

// claimBakeMAC claims the bake VM's MAC in dir like a Server's VM claims its own: a Server whose
// spec.macAddress is that MAC must not share the bridge with the bake VM. The claim goes with the
// directory (cleanBake).
func (p *Provider) claimBakeMAC(dir, mac string) error {
	owner, err := claimMAC(p.layout, dir, mac)
	if err != nil {
		return fmt.Errorf("claiming the bake VM's MAC address: %w", err)
	}
	if owner != "" {
		return fmt.Errorf("the bake VM's MAC address %s is already used by %s on this host (spec.macAddress): "+
			"the bake cannot run while that Server holds it", mac, owner)
	}
	return nil
}

// awaitBake waits until the bake VM in dir finished cloud-init without errors, cleaned its
// instance state and powered off. It keeps the bake's console within --console-size as it
// goes: a chatty installation is no failure, and its console takes no more disk than a VM's.
func (p *Provider) awaitBake(ctx context.Context, dir, instanceID string) error {
	console := p.consoleLog(dir)
	read := func() []byte {
		b, _ := console.Read()
		return b
	}
	started := time.Now()
	var finished time.Time
	tick := time.NewTicker(bakePoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("bake stopped after %s: %w%s", time.Since(started).Round(time.Second), context.Cause(ctx),
				consoleDiagnosis(read(), "bake VM"))
		case <-tick.C:
		}
		p.capConsole("bake "+short(filepath.Base(dir)), dir)
		console := read()
		result := cloudinit.ParseGuestResult(console, instanceID)
		cleaned := bytes.Contains(console, []byte(cloudinit.BakedMarker(instanceID)))
		vm, err := p.vms.Status(dir)
		if err != nil {
			return err
		}
		switch {
		case result.Done && len(result.Errors) > 0:
			return fmt.Errorf("cloud-init finished with errors: %s%s", strings.Join(result.Errors, "; "), consoleDiagnosis(console, "bake VM"))
		case result.Done && !vm.Running && cleaned:
			return nil
		case result.Done && !vm.Running:
			return fmt.Errorf("the bake VM powered off after cloud-init finished but before its instance state was cleaned "+
				"(an installation must not power off or reboot the machine itself)%s", consoleDiagnosis(console, "bake VM"))
		case result.Done && finished.IsZero():
			finished = time.Now()
		case result.Done && time.Since(finished) > bakePowerOffTimeout:
			return fmt.Errorf("the bake VM did not power off within %s after cloud-init finished "+
				"(does the installation keep it from shutting down?)%s", bakePowerOffTimeout, consoleDiagnosis(console, "bake VM"))
		case !vm.Running:
			return fmt.Errorf("the bake VM exited %s after starting, before cloud-init finished "+
				"(an installation must not power off or reboot the machine itself)%s", time.Since(started).Round(time.Second), consoleDiagnosis(console, "bake VM"))
		case time.Since(started) > p.cfg.BootTimeout && !bytes.Contains(console, []byte("cloud-init")):
			return fmt.Errorf("the bake VM showed no sign of cloud-init within %s of starting (boot watchdog)%s",
				p.cfg.BootTimeout, consoleDiagnosis(console, "bake VM"))
		}
	}
}

// cleanBake stops the bake VM of dir and removes the directory, its QMP socket, tap and address.
// Nothing there is an error.
func (p *Provider) cleanBake(ctx context.Context, dir string) error {
	qmp, err := p.layout.QMPSocket(dir)
	if err != nil {
		return err
	}
	var errs []error
	errs = append(errs, p.vms.Stop(ctx, dir, qmp, 0))
	if key := filepath.Base(dir); len(key) >= 16 {
		owner := bakeOwnerPrefix + short(key)
		errs = append(errs, p.net.DeleteTap(hostnet.TapName(owner)), p.ipam.Release(owner))
	}
	errs = append(errs, os.RemoveAll(dir))
	p.caps.forget(dir)
	if err := os.Remove(qmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
