// Package qemu runs the simulator's VMs: QEMU's command line (a pure function, tested against
// golden files), starting, finding and stopping detached QEMU processes, the QMP commands that
// stop them gracefully, the choice of accelerator, and the qcow2 overlay disks qemu-img creates
// on a cached base image. Images, seeds, networking and addresses live in their own packages.
package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"stargate.io/stargate/pkg/filenames"
)

// Accel selects the QEMU accelerator.
type Accel string

const (
	// AccelAuto uses KVM when /dev/kvm can create a VM, TCG otherwise. On some hosts /dev/kvm works
	// yet guests hang (nested virtualisation): the boot watchdog reports that.
	AccelAuto Accel = "auto"
	// AccelKVM requires KVM.
	AccelKVM Accel = "kvm"
	// AccelTCG is QEMU's software emulation: slow, works everywhere.
	AccelTCG Accel = "tcg"
)

// unixPathMax is the longest unix socket path Linux accepts (sun_path minus the NUL).
const unixPathMax = 107

// ResolveAccel turns auto into kvm or tcg, probing /dev/kvm. The string explains a fallback.
func ResolveAccel(a Accel) (Accel, string, error) {
	switch a {
	case AccelTCG:
		return AccelTCG, "", nil
	case AccelKVM:
		if err := probeKVM(); err != nil {
			return "", "", fmt.Errorf("accel=kvm requested but KVM is not usable: %w", err)
		}
		return AccelKVM, "", nil
	case AccelAuto, "":
		if err := probeKVM(); err != nil {
			return AccelTCG, fmt.Sprintf("KVM is not usable (%v): using TCG software emulation, expect boots to take minutes", err), nil
		}
		return AccelKVM, "", nil
	}
	return "", "", fmt.Errorf("unknown accelerator %q: use auto, kvm or tcg", a)
}

// probeKVM checks that /dev/kvm opens and can create a VM (KVM_CREATE_VM).
func probeKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	const kvmCreateVM = 0xAE01
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_CREATE_VM: %w", errno)
	}
	unix.Close(int(fd))
	return nil
}

// VMSpec is everything QEMU needs to run one VM.
type VMSpec struct {
	// Name labels the process (-name); informational.
	Name string
	// Dir is the VM directory holding disk, seed, console, pidfile.
	Dir string
	// QMPSocket is the QMP control socket; see QMPSocketPath.
	QMPSocket string
	// CPUs is the number of vCPUs.
	CPUs int
	// MemoryMiB is the guest's memory.
	MemoryMiB int64
	// MAC of the virtio NIC, attached to the tap device Tap.
	MAC string
	// Tap is the host tap device (see hostnet.TapName); it must exist before Start.
	Tap string
	// Accel must be resolved (kvm or tcg).
	Accel Accel
	// CD is the path of an image attached, read-only, as the VM's CD-ROM (virtual media); empty
	// means no CD drive, and the command line is exactly what it was before virtual media existed.
	CD string `json:",omitempty"`
	// BootCD boots the CD before the disk (a boot override); otherwise the disk boots first and
	// the CD is only there for the guest to read.
	BootCD bool `json:",omitempty"`
	// NoReboot makes a reboot of the guest exit QEMU instead (a bake VM must not boot twice).
	NoReboot bool `json:",omitempty"`
	// NoSeed leaves out the cloud-init seed drive: a blank machine (a server never installed)
	// has nothing but its empty disk, as a new server has.
	NoSeed bool `json:",omitempty"`
	// FirmwareConsole makes the firmware (SeaBIOS) print on the serial console: its boot messages
	// and "No bootable device", which a machine with nothing to boot (a blank machine) shows there
	// as a real server shows them over serial-over-LAN. Installed VMs keep a console that starts
	// with their boot loader.
	FirmwareConsole bool `json:",omitempty"`
	// Blkdebug puts QEMU's blkdebug driver between the guest and its disk, with the rules of
	// Dir's blkdebug file (see BlkdebugConfig): injected I/O errors. The path is not recorded: it
	// is always the one in Dir.
	Blkdebug bool `json:",omitempty"`
	// DiskBytesPerSecond throttles the disk's reads and writes together to this many bytes a
	// second (an injected slow disk); 0 means no limit.
	DiskBytesPerSecond int64 `json:",omitempty"`
	// ClockSkew starts the guest's real-time clock this far ahead of the host's (an injected
	// clock skew); the guest reads it at boot.
	ClockSkew time.Duration `json:",omitempty"`
	// StartedAt is when Start runs QEMU: the base of a skewed clock. Start sets it; it is not
	// recorded, so a later power-on skews from its own start.
	StartedAt time.Time `json:"-"`
}

// serconPort is the I/O port of the first serial port (COM1), where SeaBIOS's serial console
// writes when the fw_cfg file etc/sercon-port names it (a little-endian 16-bit integer).
var serconPort = []byte{0xf8, 0x03}

// Cmdline returns QEMU's arguments for spec. It is a pure function so the command line can be
// tested byte for byte (golden test) without running anything.
func Cmdline(spec VMSpec) []string {
	args := []string{"-name", "guest=" + spec.Name + ",process=stargate-" + spec.Name}
	switch spec.Accel {
	case AccelKVM:
		args = append(args, "-machine", "q35", "-accel", "kvm", "-cpu", "host")
	default:
		// thread=multi: one host thread per vCPU, the only way TCG uses more than one core.
		args = append(args, "-machine", "q35", "-accel", "tcg,thread=multi")
	}
	args = append(args,
		"-smp", strconv.Itoa(spec.CPUs),
		"-m", strconv.FormatInt(spec.MemoryMiB, 10),
		"-nodefaults", "-display", "none", "-vga", "none",
		"-drive", diskDrive(spec),
	)
	if !spec.NoSeed {
		// The seed on virtio too: minimal cloud kernels may have no ATA/CD-ROM drivers, and
		// cloud-init finds the seed by its label on any block device.
		args = append(args, "-drive", "file="+filepath.Join(spec.Dir, filenames.SeedFile)+",if=virtio,format=raw,readonly=on")
	}
	if spec.CD != "" {
		// A real CD-ROM on the q35 machine's built-in AHCI controller, at the port QEMU's own
		// -cdrom uses, so installers find it as a CD (ISO 9660, El Torito). Always raw: QEMU never
		// probes the format of a file a tenant chose.
		cd := "ide-cd,drive=cd0,bus=ide.2"
		if spec.BootCD {
			// A bootindex puts the CD first in SeaBIOS's boot order; devices without one (the
			// disk) follow. Without it the firmware's default order boots the disk first.
			cd += ",bootindex=0"
		}
		args = append(args,
			"-drive", "if=none,id=cd0,file="+escapeOpt(spec.CD)+",format=raw,readonly=on,media=cdrom",
			"-device", cd,
		)
	}
	args = append(args,
		"-netdev", "tap,id=net0,ifname="+spec.Tap+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,mac="+spec.MAC,
		"-device", "virtio-rng-pci",
		"-chardev", "file,id=serial0,path="+filepath.Join(spec.Dir, filenames.ConsoleFile),
		"-serial", "chardev:serial0",
		"-qmp", "unix:"+spec.QMPSocket+",server=on,wait=off",
		"-pidfile", filepath.Join(spec.Dir, filenames.PIDFile),
		// Detached: the VM outlives the controller, which finds it again by pidfile and socket.
		"-daemonize",
	)
	if spec.FirmwareConsole {
		args = append(args, "-fw_cfg", "name=etc/sercon-port,file="+filepath.Join(spec.Dir, filenames.SerconPortFile))
	}
	if spec.NoReboot {
		args = append(args, "-no-reboot")
	}
	if spec.ClockSkew != 0 {
		args = append(args, "-rtc", "base="+spec.StartedAt.Add(spec.ClockSkew).UTC().Format("2006-01-02T15:04:05"))
	}
	return args
}

// escapeOpt escapes a value for a QEMU option list, where a comma ends the value unless doubled.
func escapeOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// QMPSocketPath returns a short socket path for the VM in dir. VM directories can be long
// (namespace and name are up to 63 characters each) and unix sockets are limited to 107 bytes, so
// the socket lives in runDir under a hash of the directory.
func QMPSocketPath(runDir, dir string) (string, error) {
	sum := sha256.Sum256([]byte(dir))
	p := filepath.Join(runDir, hex.EncodeToString(sum[:])[:16]+filenames.QMPSocketSuffix)
	if len(p) > unixPathMax {
		return "", fmt.Errorf("QMP socket path %s is longer than %d bytes: choose a shorter --work-dir", p, unixPathMax)
	}
	return p, nil
}

// VMs starts, inspects and stops QEMU processes.
type VMs struct {
	// QEMU is the emulator binary; default qemu-system-x86_64.
	QEMU string
}

func (v VMs) binary() string {
	if v.QEMU != "" {
		return v.QEMU
	}
	return "qemu-system-x86_64"
}

// Start launches QEMU for spec, detached. The disk and, unless NoSeed, the seed must exist. The console log is
// truncated first and its markers (lines kept from dropped parts, see pkg/consolelog) removed:
// everything in them belongs to this boot.
func (v VMs) Start(ctx context.Context, spec VMSpec) error {
	if st, err := v.Status(spec.Dir); err != nil {
		return err
	} else if st.Running {
		return fmt.Errorf("VM in %s is already running (pid %d)", spec.Dir, st.PID)
	}
	files := []string{filenames.DiskFile, filenames.SeedFile}
	if spec.NoSeed {
		files = files[:1]
	}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(spec.Dir, f)); err != nil {
			return fmt.Errorf("cannot start VM: %w", err)
		}
	}
	if spec.CD != "" {
		if _, err := os.Stat(spec.CD); err != nil {
			return fmt.Errorf("cannot start VM with its virtual CD: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(spec.QMPSocket), 0o700); err != nil {
		return fmt.Errorf("creating QMP socket directory: %w", err)
	}
	_ = os.Remove(spec.QMPSocket)
	_ = os.Remove(filepath.Join(spec.Dir, filenames.PIDFile))
	if err := os.Remove(filepath.Join(spec.Dir, filenames.ConsoleMarkersFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the previous boot's console markers: %w", err)
	}
	// The console may echo user-data (and its tokens): root only.
	if err := os.WriteFile(filepath.Join(spec.Dir, filenames.ConsoleFile), nil, 0o600); err != nil {
		return fmt.Errorf("creating console log: %w", err)
	}
	if spec.FirmwareConsole {
		if err := os.WriteFile(filepath.Join(spec.Dir, filenames.SerconPortFile), serconPort, 0o600); err != nil {
			return fmt.Errorf("writing the firmware console setting: %w", err)
		}
	}
	if spec.Blkdebug {
		if _, err := os.Stat(filepath.Join(spec.Dir, filenames.BlkdebugFile)); err != nil {
			return fmt.Errorf("cannot start VM with its injected disk errors: %w", err)
		}
	}
	spec.StartedAt = time.Now()
	args := Cmdline(spec)
	cmd := exec.CommandContext(ctx, v.binary(), args...)
	cmd.Dir = spec.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not in the controller's process group
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		_ = os.WriteFile(filepath.Join(spec.Dir, filenames.QEMULogFile), out.Bytes(), 0o600)
		return fmt.Errorf("starting QEMU (%s %s): %w: %s", v.binary(), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// VMStatus is what the host knows about a VM process.
type VMStatus struct {
	// Running is true while this VM's QEMU process lives.
	Running bool
	// PID is QEMU's process id when Running.
	PID int
}

// Status reports whether the VM of dir runs. A pidfile whose process is gone, or is not this VM's
// QEMU (PID reuse), counts as not running.
func (v VMs) Status(dir string) (VMStatus, error) {
	b, err := os.ReadFile(filepath.Join(dir, filenames.PIDFile))
	if errors.Is(err, os.ErrNotExist) {
		return VMStatus{}, nil
	}
	if err != nil {
		return VMStatus{}, fmt.Errorf("reading pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return VMStatus{}, nil
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return VMStatus{}, nil // gone
	}
	if !usesDisk(cmdline, dir) {
		return VMStatus{}, nil // the PID now belongs to someone else
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if fields := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:])); len(fields) > 0 && fields[0] == "Z" && !threadsLeft(pid) {
			return VMStatus{}, nil // exited, not yet reaped
		}
	}
	return VMStatus{Running: true, PID: pid}, nil
}

// threadsLeft reports whether threads of pid other than its main one still exist. A killed QEMU's
// main thread turns zombie before its vCPU threads are gone, and those still hold the disk's lock
// and the tap: until they are gone the VM is not off, and a new QEMU on the same disk and tap
// would fail to start.
func threadsLeft(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return err == nil && len(tasks) > 1
}

// Stop stops the VM of dir. With a positive grace period it asks the guest to power down over
// QMP (ACPI) and waits that long; then, or at once with grace 0, it kills QEMU. A VM that is not
// running is not an error.
func (v VMs) Stop(ctx context.Context, dir, qmpSocket string, grace time.Duration) error {
	st, err := v.Status(dir)
	if err != nil || !st.Running {
		return err
	}
	if grace > 0 {
		if err := qmpCommand(qmpSocket, `{"execute":"system_powerdown"}`); err == nil {
			if waitGone(ctx, v, dir, grace) {
				return nil
			}
		}
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing QEMU pid %d: %w", st.PID, err)
	}
	if !waitGone(ctx, v, dir, 10*time.Second) {
		return fmt.Errorf("QEMU pid %d did not exit after SIGKILL", st.PID)
	}
	return nil
}

func waitGone(ctx context.Context, v VMs, dir string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if st, err := v.Status(dir); err == nil && !st.Running {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}
