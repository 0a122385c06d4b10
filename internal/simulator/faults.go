package simulator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/faults"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/qemu"
)

// The faults of FaultInjections the simulator makes real in its QEMU VMs. They need a VM, so they
// strike at the steps it runs in: the VM's hardware (disk errors, a slow disk, a skewed clock) is
// set when QEMU starts, whichever of the two steps the fault names; a power loss or a hang strikes
// as the VM starts (VMRunning) or once the guest's cloud-init started (GuestReady). What Stargate
// then reports is what it reports for any such machine: nothing here makes up a failure.

var (
	vmSteps         = []string{stargatev1.ConditionVMRunning, stargatev1.ConditionGuestReady}
	supportedFaults = map[stargatev1.FaultType][]string{
		stargatev1.FaultDiskReadError:  vmSteps,
		stargatev1.FaultDiskWriteError: vmSteps,
		stargatev1.FaultDiskSlow:       vmSteps,
		stargatev1.FaultClockSkew:      vmSteps,
		stargatev1.FaultPowerLoss:      vmSteps,
		stargatev1.FaultHang:           vmSteps,
		stargatev1.FaultKernelCrash:    {stargatev1.ConditionGuestReady}, // vendorData
		// imagefaults.go
		stargatev1.FaultImageServerError: {stargatev1.ConditionImageReady},
		stargatev1.FaultImageSlow:        {stargatev1.ConditionImageReady},
		stargatev1.FaultImageTruncated:   {stargatev1.ConditionImageReady},
		stargatev1.FaultImageCorrupted:   {stargatev1.ConditionImageReady},
		// netfaults.go
		stargatev1.FaultNetworkLatency:     vmSteps,
		stargatev1.FaultNetworkLoss:        vmSteps,
		stargatev1.FaultNetworkPartition:   vmSteps,
		stargatev1.FaultNoDNS:              vmSteps,
		stargatev1.FaultNoRouteToAPIServer: vmSteps,
		// nodefaults.go
		stargatev1.FaultKubeletStops: {stargatev1.FaultAtRunning},
		stargatev1.FaultNodeFlapping: {stargatev1.FaultAtRunning},
	}
)

var _ controller.FaultInjector = (*Provider)(nil)

// SupportsFault reports whether the simulator makes a fault of type t real at step at
// (controller.FaultInjector).
func (p *Provider) SupportsFault(t stargatev1.FaultType, at string) bool {
	if (isNetworkFault(t) && t != stargatev1.FaultNetworkLatency || isNodeFault(t)) && !p.nft {
		return false // made with nftables, which this host lacks: FaultsUnsupported says so
	}
	if isNodeFault(t) && (p.cluster == nil || p.cfg.APIServer == "") {
		return false // it cannot see Nodes, or does not know the API server
	}
	return slices.Contains(supportedFaults[t], at)
}

// maxBytesPerSecond bounds DiskSlow as the CRD does (checked again: tenants write these, and the
// CRD may be older than the binary).
const minBytesPerSecond, maxBytesPerSecond = 1024, 10 << 30

// machineFaults are the faults of a repave that set the VM's hardware, decided from its faults.
type machineFaults struct {
	disk qemu.DiskErrors // -1: that kind never fails
	bps  int64
	skew time.Duration
	// notes say what was made, or why a fault could not be, for the VMRunning step's message.
	notes []string
}

// machineFaultsOf reads the hardware faults of fs: the smallest count and rate win when several
// give one, skews add up.
func machineFaultsOf(fs []stargatev1.Fault) machineFaults {
	m := machineFaults{disk: qemu.DiskErrors{ReadAfter: -1, WriteAfter: -1}}
	for _, f := range fs {
		if !slices.Contains(supportedFaults[f.Type], f.At) || faults.Validate(f) != nil {
			continue
		}
		switch f.Type {
		case stargatev1.FaultDiskReadError, stargatev1.FaultDiskWriteError:
			kind, after := "reads", &m.disk.ReadAfter
			if f.Type == stargatev1.FaultDiskWriteError {
				kind, after = "writes", &m.disk.WriteAfter
			}
			switch n := f.AfterOperations; {
			case n == nil || *n < 0:
			case *n > qemu.MaxCountedOperations:
				m.notes = append(m.notes, fmt.Sprintf("%s (%s after %d operations) not injected: this host counts at most %d",
					f.Name, f.Type, *n, qemu.MaxCountedOperations))
			case *after < 0 || *n < *after:
				*after = *n
				m.notes = append(m.notes, fmt.Sprintf("%s: disk %s fail with EIO after %d operations (QEMU blkdebug)", f.Name, kind, *n))
			}
		case stargatev1.FaultDiskSlow:
			if b := f.BytesPerSecond; b != nil && *b >= minBytesPerSecond && *b <= maxBytesPerSecond && (m.bps == 0 || *b < m.bps) {
				m.bps = *b
				m.notes = append(m.notes, fmt.Sprintf("%s: disk throttled to %d bytes/s (QEMU throttling)", f.Name, *b))
			}
		case stargatev1.FaultClockSkew:
			if f.Duration != nil {
				m.skew += f.Duration.Duration
				m.notes = append(m.notes, fmt.Sprintf("%s: clock %s ahead from power-on (QEMU -rtc base)", f.Name, f.Duration.Duration))
			}
		}
	}
	return m
}

// apply sets the VM's hardware faults on spec, and writes or removes its blkdebug rules.
func (m machineFaults) apply(spec *qemu.VMSpec) error {
	path := filepath.Join(spec.Dir, filenames.BlkdebugFile)
	spec.Blkdebug = m.disk.ReadAfter >= 0 || m.disk.WriteAfter >= 0
	spec.DiskBytesPerSecond, spec.ClockSkew = m.bps, m.skew
	if !spec.Blkdebug {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the previous installation's disk errors: %w", err)
		}
		return nil
	}
	conf, err := qemu.BlkdebugConfig(m.disk)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, conf, 0o600); err != nil {
		return fmt.Errorf("writing the injected disk errors: %w", err)
	}
	return nil
}

// forgetStrikes removes what the previous installation's faults left in dir: a new one starts
// with none struck and no hang.
func forgetStrikes(dir string) error {
	for _, f := range []string{filenames.FaultsStruckFile, filenames.HangFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the previous installation's faults: %w", err)
		}
	}
	return nil
}

// strikeFaults makes the power losses, hangs and network faults of req strike whose step the
// installation reached: VMRunning at once, GuestReady once the console shows cloud-init. Each
// strikes once: it is recorded in dir before it strikes, so that no poll or restart strikes it again.
func (p *Provider) strikeFaults(ctx context.Context, req controller.RepaveRequest, dir, tap, qmp string) error {
	struckFile := filepath.Join(dir, filenames.FaultsStruckFile)
	b, err := os.ReadFile(struckFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading the faults struck: %w", err)
	}
	struck := strings.Split(string(b), "\n")
	var console []byte
	for i, f := range req.Faults {
		strikes := f.Type == stargatev1.FaultPowerLoss || f.Type == stargatev1.FaultHang || isNetworkFault(f.Type)
		if !strikes || !p.SupportsFault(f.Type, f.At) || faults.Validate(f) != nil {
			continue
		}
		// Faults come in the same order on every call for one installation.
		key := fmt.Sprintf("%d %s %s %s", i, f.Name, f.Type, f.At)
		if slices.Contains(struck, key) {
			continue
		}
		if vm, err := p.vms.Status(dir); err != nil || !vm.Running {
			return err // it went down by itself: nothing to strike
		}
		if f.At == stargatev1.ConditionGuestReady {
			if console == nil {
				console, _ = p.consoleLog(dir).Read()
			}
			if !bytes.Contains(console, []byte("cloud-init")) {
				continue
			}
		}
		if err := appendLine(struckFile, key); err != nil {
			return fmt.Errorf("recording fault %s: %w", f.Name, err)
		}
		struck = append(struck, key)
		if isNetworkFault(f.Type) {
			if err := p.strikeNetworkFault(dir, tap, qmp, f); err != nil {
				return fmt.Errorf("fault %s: %w", f.Name, err)
			}
			p.cfg.Log.Info("fault: network", "server", identity(req.Server), "fault", f.Name, "type", f.Type, "at", f.At)
			continue
		}
		if f.Type == stargatev1.FaultPowerLoss {
			p.cfg.Log.Info("fault: power loss, killing QEMU", "server", identity(req.Server), "fault", f.Name, "at", f.At)
			if err := p.vms.Stop(ctx, dir, qmp, 0); err != nil {
				return fmt.Errorf("fault %s: power loss: %w", f.Name, err)
			}
			return nil
		}
		if err := p.hang(dir, qmp, f.Duration.Duration); err != nil {
			return fmt.Errorf("fault %s: hang: %w", f.Name, err)
		}
		p.cfg.Log.Info("fault: hang, VM stopped", "server", identity(req.Server), "fault", f.Name, "at", f.At, "for", f.Duration.Duration)
	}
	return nil
}

// vendorData is the installation's vendor-data: the readiness report, and a kernel crash first
// when a KernelCrash fault strikes it (it strikes as cloud-init's final stage starts, GuestReady).
func vendorData(req controller.RepaveRequest) []byte {
	vd := cloudinit.ReadinessVendorData(req.InstanceID)
	for _, f := range req.Faults {
		if f.Type == stargatev1.FaultKernelCrash && slices.Contains(supportedFaults[f.Type], f.At) && faults.Validate(f) == nil {
			return cloudinit.CrashKernel(vd)
		}
	}
	return vd
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// withFaultNotes tells, in the step messages, what the injected faults made of the VM: its
// hardware faults on VMRunning, a hang in progress and its network faults on GuestReady.
func withFaultNotes(st controller.RepaveStatus, fs []stargatev1.Fault, dir string) controller.RepaveStatus {
	notes := machineFaultsOf(fs).notes
	network := networkNote(dir)
	for i := range st.Steps {
		s := &st.Steps[i]
		switch {
		case s.Type == stargatev1.ConditionVMRunning && s.State == controller.StepDone && len(notes) > 0:
			s.Message += "; injected faults: " + strings.Join(notes, "; ")
		case s.Type == stargatev1.ConditionGuestReady && s.State == controller.StepInProgress:
			s.Message = hangNote(dir) + s.Message
			if network != "" {
				s.Message += "; " + network
			}
		case s.Type == stargatev1.ConditionGuestReady && network != "":
			s.Message += "; " + network
		}
	}
	return st
}
