package simulator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

// Repave drives one installation: image, seed, network, VM, guest readiness.
func (p *Provider) Repave(ctx context.Context, req controller.RepaveRequest) (controller.RepaveStatus, error) {
	defer p.lock(req.Server)()
	st := newStatus()
	id := identity(req.Server)
	mac := req.MAC
	if mac == "" {
		mac = hostnet.MACAddress(id)
	}
	st.MACAddress = mac

	dir := p.VMDir(req.Server)
	current, _ := os.ReadFile(filepath.Join(dir, filenames.InstanceIDFile))
	installed := strings.TrimSpace(string(current)) == req.InstanceID
	if !installed {
		// Two NICs with one MAC on a bridge break both: refuse before anything boots.
		owner, err := claimMAC(p.layout, dir, mac)
		if err != nil {
			return controller.RepaveStatus{}, err
		}
		if owner != "" {
			return st.fail(stargatev1.ConditionNetworkReady, "DuplicateMAC", fmt.Sprintf("MAC address %s is already used by %s on this host: "+
				"give this Server another spec.macAddress, or leave it empty for one derived from its name", mac, owner)), nil
		}
	}

	// 1. Image, downloaded in the background; only needed until this installation has started
	// (after a controller restart the running installation needs no image check).
	var boot bootPlan
	if installed {
		reason, msg := "Cached", fmt.Sprintf("Image %s in use by this installation", req.ImageURL)
		if recorded, err := os.ReadFile(filepath.Join(dir, filenames.BootImageFile)); err == nil {
			reason, msg, _ = strings.Cut(string(recorded), "\n")
		}
		st.set(stargatev1.ConditionImageReady, controller.StepDone, reason, msg)
	} else if boot = p.bootImage(ctx, st, req); boot.image == "" {
		return st.finish(), nil
	} else {
		// Pinned until the disk overlays it, so --image-cache-size's pruning cannot remove it
		// first; a prune that ran between the lookup and the pin removed it: look it up again.
		defer p.pinImage(boot.image)()
		if _, err := os.Stat(boot.image); err != nil {
			st.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Pruned",
				"The image was removed from the host's cache (--image-cache-size) as this repave was about to use it: fetching (or baking) it again")
			return st.finish(), nil
		}
	}

	qmp, err := p.layout.QMPSocket(dir)
	if err != nil {
		return st.fail(stargatev1.ConditionVMRunning, "InvalidWorkDir", err.Error()), nil
	}
	tap := hostnet.TapName(id)
	ip, err := p.ipam.Allocate(id)
	if err != nil {
		reason := "IPAllocationFailed"
		if errors.Is(err, ipam.ErrPoolExhausted) {
			reason = "IPPoolExhausted"
		}
		return st.fail(stargatev1.ConditionNetworkReady, reason, err.Error()), nil
	}
	st.IPAddress = ip.String()

	if !installed {
		// A new installation: replace whatever runs now.
		in := installation{req: req, dir: dir, qmp: qmp, tap: tap, mac: mac, ip: ip, base: boot.image, userData: boot.userData}
		if err := p.install(ctx, st, in); err != nil {
			return controller.RepaveStatus{}, err
		}
		if st.Failed {
			return st.finish(), nil
		}
	}
	st.set(stargatev1.ConditionCloudInitReady, controller.StepDone, "Written", "NoCloud seed written for instance "+req.InstanceID)
	st.set(stargatev1.ConditionNetworkReady, controller.StepDone, "Attached", fmt.Sprintf("Tap %s on bridge %s, address %s, MAC %s", tap, p.cfg.Network.Bridge, ip, mac))
	if err := p.resumeHang(dir, qmp); err != nil {
		return controller.RepaveStatus{}, err
	}
	if err := p.endPartition(dir, tap, qmp); err != nil {
		return controller.RepaveStatus{}, err
	}
	if err := p.strikeFaults(ctx, req, dir, tap, qmp); err != nil {
		return controller.RepaveStatus{}, err
	}
	return p.watched(req, dir, withFaultNotes(p.observeGuest(st, req, dir), req.Faults, dir)), nil
}

// bootImage is what a new installation boots: the cached OS image with the user-data, or, for a
// profile with an installation, its golden image with the per-instance user-data, or the OS image
// with both while there is no golden image (golden). No image while the OS image is not ready
// yet, or when a step failed (ImageReady or CloudInitReady says which).
func (p *Provider) bootImage(ctx context.Context, st *status, req controller.RepaveRequest) bootPlan {
	img := p.image(ctx, st, req)
	if img.Path == "" || len(req.Installation) == 0 {
		return bootPlan{image: img.Path, userData: req.UserData}
	}
	return p.golden(ctx, st, req, img)
}

// installation is what one install needs, decided by Repave before anything on the host changes.
type installation struct {
	req  controller.RepaveRequest
	dir  string     // the VM directory
	qmp  string     // the VM's QMP socket
	tap  string     // the VM's tap device
	mac  string     // the guest NIC's MAC address
	ip   netip.Addr // the guest's address on the bridge
	base string     // the cached base image the disk overlays
	// userData is what cloud-init runs: the profile's, or its installation and per-instance
	// user-data together when no golden image is booted.
	userData []byte
}

// install stops the old VM, writes the seed, attaches the network, creates a fresh disk and starts
// QEMU. The instance-id file is written last: it marks the installation as started, so a crash
// before it simply redoes the installation.
func (p *Provider) install(ctx context.Context, st *status, in installation) error {
	req, dir := in.req, in.dir
	if err := p.vms.Stop(ctx, dir, in.qmp, 0); err != nil {
		return fmt.Errorf("stopping the previous VM: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating VM directory: %w", err)
	}
	_ = os.Remove(filepath.Join(dir, filenames.InstanceIDFile))
	if err := forgetStrikes(dir); err != nil {
		return err
	}
	if err := forgetNetworkFaults(dir, in.tap); err != nil {
		return err
	}
	if err := p.recordNodeFault(in); err != nil {
		return err
	}
	p.mu.Lock()
	delete(p.imageFaultsStruck, req.InstanceID) // from here on the installation needs no image
	p.mu.Unlock()
	// No longer a blank machine: from here on it is this installation, or nothing if it fails.
	if err := os.Remove(filepath.Join(dir, filenames.BlankFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the blank machine's mark: %w", err)
	}

	subnet := p.cfg.Network.Subnet()
	err := cloudinit.WriteNoCloudISO(filepath.Join(dir, filenames.SeedFile), cloudinit.Config{
		InstanceID: req.InstanceID,
		Hostname:   req.Server.Name,
		UserData:   in.userData,
		VendorData: vendorData(req),
		Network: &cloudinit.GuestNetwork{MAC: in.mac, Address: netip.PrefixFrom(in.ip, subnet.Bits()),
			Gateway: p.cfg.Network.Gateway.Addr(), DNS: p.cfg.DNS},
	})
	if err != nil {
		st.failStep(stargatev1.ConditionCloudInitReady, "SeedFailed", fmt.Sprintf("Writing the cloud-init seed failed: %v", err))
		return nil
	}
	st.set(stargatev1.ConditionCloudInitReady, controller.StepDone, "Written", "NoCloud seed written")

	if err := p.net.Ensure(); err != nil {
		st.failStep(stargatev1.ConditionNetworkReady, "NetworkFailed", err.Error())
		return nil
	}
	if err := p.net.EnsureTap(in.tap); err != nil {
		st.failStep(stargatev1.ConditionNetworkReady, "TapFailed", err.Error())
		return nil
	}
	if err := qemu.CreateOverlay(ctx, in.base, filepath.Join(dir, filenames.DiskFile), req.DiskBytes); err != nil {
		if errors.Is(err, qemu.ErrUnsupportedImage) && filepath.Dir(in.base) == p.layout.GoldenDir() {
			// Damaged since it was baked (by hand, a full disk): not kept, so the next repave bakes it again.
			_ = os.Remove(in.base)
			st.failStep(stargatev1.ConditionImageReady, "GoldenImageDamaged", fmt.Sprintf("The golden image %s cannot be booted (%v): "+
				"it was removed, and the next repave bakes it again", in.base, err))
			return nil
		}
		if errors.Is(err, qemu.ErrUnsupportedImage) { // checked when cached: only if changed since
			reason, hint := imageFailureReason(err, req.ImageURL)
			st.failStep(stargatev1.ConditionImageReady, reason, fmt.Sprintf("The OS image cannot be booted: %v%s", err, hint))
			return nil
		}
		st.failStep(stargatev1.ConditionVMRunning, "DiskFailed", fmt.Sprintf("Creating the VM disk failed: %v", err))
		return nil
	}
	spec := qemu.VMSpec{Name: req.Server.Namespace + "." + req.Server.Name, Dir: dir, QMPSocket: in.qmp,
		CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, MAC: in.mac, Tap: in.tap, Accel: p.cfg.Accel}
	// Recorded with the spec: a power-on of this installation has the same hardware faults, a
	// new installation without them a clean disk.
	if err := machineFaultsOf(req.Faults).apply(&spec); err != nil {
		return err
	}
	if err := writeVMSpec(dir, spec); err != nil {
		return err
	}
	if err := p.vms.Start(ctx, spec); err != nil {
		st.failStep(stargatev1.ConditionVMRunning, "QEMUFailed", err.Error())
		return nil
	}
	if img := st.step(stargatev1.ConditionImageReady); img.State == controller.StepDone {
		if err := os.WriteFile(filepath.Join(dir, filenames.BootImageFile), []byte(img.Reason+"\n"+img.Message), 0o600); err != nil {
			return fmt.Errorf("recording the boot image: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, filenames.InstanceIDFile), []byte(req.InstanceID+"\n"), 0o600); err != nil {
		return fmt.Errorf("recording instance-id: %w", err)
	}
	p.cfg.Log.Info("VM started", "server", identity(req.Server), "instanceID", req.InstanceID, "ip", in.ip, "accel", p.cfg.Accel)
	return nil
}

// observeGuest reports the VM and what its console says about cloud-init.
func (p *Provider) observeGuest(st *status, req controller.RepaveRequest, dir string) controller.RepaveStatus {
	// Head, kept markers and newest output: within --console-size however much the guest printed.
	console, _ := p.consoleLog(dir).Read()
	result := cloudinit.ParseGuestResult(console, req.InstanceID)
	vm, err := p.vms.Status(dir)
	startedAt := time.Now()
	if fi, err := os.Stat(filepath.Join(dir, filenames.InstanceIDFile)); err == nil {
		startedAt = fi.ModTime()
	}
	up := time.Since(startedAt).Round(time.Second)
	// A guest that will never report, whatever the cause: its kernel panicked, or every stage of
	// its cloud-init crashed (a root file system gone read-only, as an injected DiskWriteError makes it).
	panicLine, panicked := cloudinit.KernelPanic(console)
	exception, crashed := cloudinit.Crashed(console)
	switch {
	case result.Done && len(result.Errors) > 0:
		st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", "VM running")
		return st.fail(stargatev1.ConditionGuestReady, "CloudInitFailed",
			fmt.Sprintf("cloud-init finished with errors: %s\n--- last lines of the serial console (%s) ---\n%s",
				strings.Join(result.Errors, "; "), filepath.Join(dir, filenames.ConsoleFile), cloudinit.ConsoleTail(console, 25, 3000)))
	case result.Done:
		st.Timeline = guestTimeline(result, startedAt)
		st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", "VM running")
		st.set(stargatev1.ConditionGuestReady, controller.StepDone, "CloudInitDone", fmt.Sprintf("cloud-init finished without errors %s after QEMU started", up))
		st.Done = true
		return st.finish()
	case panicked:
		st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", "VM running")
		return st.fail(stargatev1.ConditionGuestReady, "KernelPanic",
			fmt.Sprintf("The guest's kernel panicked %s after QEMU started: %s\n--- last lines of the serial console (%s) ---\n%s",
				up, panicLine, filepath.Join(dir, filenames.ConsoleFile), cloudinit.ConsoleTail(console, 25, 3000)))
	case crashed:
		st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", "VM running")
		msg := fmt.Sprintf("cloud-init crashed in every stage %s after QEMU started, on %s: the guest can never report, "+
			"so the repave fails now rather than at its spec.timeout", up, exception)
		// Why: the kernel's lines (an I/O error, a file system gone read-only), not cloud-init's
		// tracebacks or status line, which the message quotes already.
		errs := slices.DeleteFunc(cloudinit.GuestErrors(console, 50), func(l string) bool {
			return strings.Contains(l, "cloud-init[") || strings.Contains(l, cloudinit.StatusMarker)
		})
		if len(errs) > 0 {
			msg += "; the guest's kernel reported: " + strings.Join(errs[max(0, len(errs)-3):], " | ")
		}
		return st.fail(stargatev1.ConditionGuestReady, "CloudInitCrashed", fmt.Sprintf("%s\n--- last lines of the serial console (%s) ---\n%s",
			msg, filepath.Join(dir, filenames.ConsoleFile), cloudinit.ConsoleTail(console, 25, 3000)))
	case err != nil || !vm.Running:
		return st.fail(stargatev1.ConditionVMRunning, "VMExited",
			fmt.Sprintf("The VM exited %s after starting, before cloud-init finished\n--- last lines of the serial console (%s) ---\n%s",
				up, filepath.Join(dir, filenames.ConsoleFile), cloudinit.ConsoleTail(console, 25, 3000)))
	}
	st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", fmt.Sprintf("QEMU pid %d, accel %s", vm.PID, p.cfg.Accel))
	if up > p.cfg.BootTimeout && !strings.Contains(string(console), "cloud-init") {
		hint := ""
		if p.cfg.Accel == qemu.AccelKVM {
			hint = " With KVM this usually means /dev/kvm exists but does not work on this host (nested virtualisation): run the simulator with --accel=tcg."
		}
		return st.fail(stargatev1.ConditionGuestReady, "BootHung",
			fmt.Sprintf("The guest showed no sign of cloud-init within %s of starting (boot watchdog).%s\n--- last lines of the serial console ---\n%s",
				p.cfg.BootTimeout, hint, cloudinit.ConsoleTail(console, 25, 3000)))
	}
	msg := fmt.Sprintf("Waiting for cloud-init to finish (VM up %s); console: %s", up, lastLine(console))
	if errs := cloudinit.GuestErrors(console, 3); len(errs) > 0 {
		// A guest stuck on a broken disk or kernel never reports: the reason is in these lines,
		// and a timeout's message (the step's message) keeps them.
		msg += "; the guest reported errors: " + strings.Join(errs, " | ")
	}
	st.set(stargatev1.ConditionGuestReady, controller.StepInProgress, "Booting", msg)
	return st.finish()
}

// lastLine is the console's last line, for a progress message.
func lastLine(console []byte) string {
	return strings.TrimSpace(cloudinit.ConsoleTail(console, 1, 200))
}

// guestTimeline is the guest's own report, preceded by the firmware and boot loader: from QEMU's
// start (on the host) to the kernel's (as the guest's clock, set from the host's, tells it).
func guestTimeline(r cloudinit.GuestResult, qemuStart time.Time) []controller.TimelineStep {
	var out []controller.TimelineStep
	if !r.KernelStart.IsZero() {
		if d := r.KernelStart.Sub(qemuStart); d >= 0 && d < time.Hour {
			out = append(out, controller.TimelineStep{Name: "firmware-and-loader", Duration: d.Round(time.Second)})
		}
	}
	for _, s := range r.Timeline {
		out = append(out, controller.TimelineStep{Name: s.Name, Duration: s.Duration})
	}
	return out
}
