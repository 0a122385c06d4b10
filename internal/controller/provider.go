package controller

import (
	"context"
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// Provider does the datacenter-specific work of Operations: the simulator (QEMU VMs on this host)
// or a real or mock datacenter API. The controller core is provider-agnostic: it decides what
// should happen and records it; a provider makes it happen.
//
// Every method must return quickly — slow work (downloads, boots) runs in the background and is
// reported on the next call — and be idempotent: the first call after a controller restart must
// pick up from whatever state the datacenter is in.
type Provider interface {
	// Repave drives the installation described by req towards completion and reports where it
	// is. Calling it again with the same InstanceID continues the same installation; a new
	// InstanceID replaces whatever the server ran before.
	Repave(ctx context.Context, req RepaveRequest) (RepaveStatus, error)

	// Inspect reports what the datacenter knows about a server right now.
	Inspect(ctx context.Context, server types.NamespacedName) (ServerInfo, error)

	// PowerOff stops a server at once, without releasing it (an interrupted repave must not leave a
	// half-built server running). A server that is off or unknown is not an error. A provider of
	// real servers may instead return ErrUntouched when the repave being stopped never changed the
	// server: it then runs on as before, and is left alone.
	PowerOff(ctx context.Context, server types.NamespacedName) error

	// Shutdown asks the server to power off gracefully (the ACPI power button) and returns without
	// waiting. A server that is off is not an error.
	Shutdown(ctx context.Context, server types.NamespacedName) error

	// PowerOn boots the server's installed machine from its disk, as it was installed (nothing is
	// reinstalled), and returns once it started. A running server is not an error; one that was
	// never installed is ErrNotInstalled.
	PowerOn(ctx context.Context, server types.NamespacedName) error

	// SetBoot sets the boot device override a BMC offers (Redfish BootSourceOverride*); empty
	// fields keep their value. The next power-on honours it; "Once" is then used up.
	SetBoot(ctx context.Context, server types.NamespacedName, boot BootOverride) error

	// InsertMedia attaches the image at imageURL as the server's virtual CD, fetched under the same
	// rules as OS images; it returns once the image is attached (or refused).
	InsertMedia(ctx context.Context, server types.NamespacedName, imageURL string) error

	// EjectMedia detaches the virtual CD. No CD is not an error.
	EjectMedia(ctx context.Context, server types.NamespacedName) error

	// Release removes everything the provider holds for a server: machine, disks, network
	// attachment, IP address. Releasing an unknown server is not an error.
	Release(ctx context.Context, server types.NamespacedName) error
}

// HostCapacity is the host's budget for work at once (--max-parallel, --max-memory), lent to a
// provider for VMs of its own, so that they count like the Operations' (see CapacitySharer).
type HostCapacity interface {
	// TryHold reserves memoryBytes under key if the budget has room now, and reports whether it
	// did. Holding a key that holds already succeeds.
	TryHold(key string, memoryBytes int64) bool
	// Release returns what key holds; releasing a key that holds nothing is not an error.
	Release(key string)
}

// CapacitySharer is an optional interface of a Provider that runs machines of its own, outside any
// Operation (the simulator's golden image bakes): Setup gives it the host's capacity.
type CapacitySharer interface {
	ShareCapacity(HostCapacity)
}

// BlankMachines is an optional interface of a Provider whose servers are machines before anything
// is installed on them, as new servers in a rack are (the simulator). A Server's BMC makes that
// machine before it changes a Server that was never repaved, so that its user can insert virtual
// media, set the boot override and power it on: it powers on into an empty disk.
type BlankMachines interface {
	// EnsureBlankMachine makes the blank machine of m.Server — its CPUs, memory, disk size and MAC,
	// its network claims — or brings a powered-off one up to date with m, and reports whether it
	// did either. A server with an installation, or whose machine runs, is left as it is. Calling
	// it again changes nothing.
	EnsureBlankMachine(ctx context.Context, m BlankMachine) (changed bool, err error)
}

// BlankMachine is the hardware of a server that has no installation, from its Server's spec.
type BlankMachine struct {
	Server    types.NamespacedName
	CPUs      int
	MemoryMiB int64
	// DiskBytes is the size of the empty disk.
	DiskBytes int64
	// MAC is spec.macAddress, or empty for one derived from the Server's identity.
	MAC string
}

// ErrUntouched is returned by PowerOff when the server's repave being stopped never changed the
// server (it failed before the first power or media change): the server runs as it did, nothing
// half-built runs, and a real machine someone relies on is not powered off for nothing.
var ErrUntouched = errors.New("the repave never touched the server")

// ErrNotInstalled is returned by PowerOn for a server with no installation to boot.
var ErrNotInstalled = errors.New("the server has no installation to boot: repave it first")

// Boot override values, as Redfish names them.
const (
	BootTargetNone = "None"
	BootTargetHdd  = "Hdd"
	BootTargetCd   = "Cd"
	BootTargetPxe  = "Pxe"

	BootDisabled   = "Disabled"
	BootOnce       = "Once"
	BootContinuous = "Continuous"
)

// BootOverride is the boot device a BMC was told to use instead of the disk.
type BootOverride struct {
	// Target is None, Hdd, Cd or Pxe.
	Target string
	// Enabled is Disabled, Once (used up by the next boot) or Continuous.
	Enabled string
	// Mode is Legacy or UEFI.
	Mode string
}

// Media is a server's virtual CD.
type Media struct {
	// Image is the URL the CD was inserted from.
	Image string
	// Inserted is true while a CD is in the drive.
	Inserted bool
}

// ErrUnsupported wraps a request the datacenter cannot carry out (e.g. PXE in the simulator); the
// message says what to do instead.
var ErrUnsupported = errors.New("not supported")

// RepaveRequest describes one installation.
type RepaveRequest struct {
	// Server identifies the server; its name is also the host name.
	Server types.NamespacedName
	// InstanceID is unique per repave (derived from the Operation's UID).
	InstanceID string
	CPUs       int
	MemoryMiB  int64
	DiskBytes  int64
	// MAC is the fixed MAC address from the Server spec, or empty for a derived one.
	MAC string
	// ImageURL and ImageChecksum ("", "sha256:..." or "sha512:...") name the OS image.
	ImageURL      string
	ImageChecksum string
	// UserData is the profile's cloud-init user-data: the per-instance part when Installation is set.
	UserData []byte
	// Installation is the profile's reusable installation user-data (spec.installation), to bake
	// into a golden image once and boot from then on; empty without one. A provider that cannot
	// bake must still install it (the mock datacenter, which runs no guest, ignores it).
	Installation []byte
	// Faults are the faults to make strike this installation, each when it reaches Fault.At (only
	// for a FaultInjector, only types it supports). The same on every call for one InstanceID.
	Faults []stargatev1.Fault
}

// StepState is the state of one step of a repave.
type StepState string

const (
	// StepPending is a step that has not started yet.
	StepPending StepState = "Pending"
	// StepInProgress is a step running now.
	StepInProgress StepState = "InProgress"
	// StepDone is a step that finished successfully.
	StepDone StepState = "Done"
	// StepFailed is a step that failed; the repave failed with it.
	StepFailed StepState = "Failed"
)

// Step is one step of a repave; Type is the Operation condition it maps to (ImageReady, ...).
type Step struct {
	Type    string
	State   StepState
	Reason  string
	Message string
}

// RepaveStatus is where a repave is.
type RepaveStatus struct {
	// Steps in execution order.
	Steps []Step
	// Done is true when every step is done.
	Done bool
	// Failed is true when a step failed; Reason and Message say which and why (with whatever
	// diagnostics help, such as the tail of the console).
	Failed  bool
	Reason  string
	Message string
	// IPAddress and MACAddress of the server, once known.
	IPAddress  string
	MACAddress string
	// Timeline is the guest's boot as it reported it (see stargatev1.TimelineStep), once done.
	Timeline []TimelineStep
}

// TimelineStep is one step of a guest's boot, as the guest reported it.
type TimelineStep struct {
	Name     string
	Duration time.Duration
}

// ServerInfo is what a provider knows about a server.
type ServerInfo struct {
	// Exists is true when the provider holds resources for the server.
	Exists bool
	// Running is true when the server is powered on.
	Running bool
	// InstanceID of the installation on the server, if any.
	InstanceID string
	// Blank is true for a blank machine (see BlankMachines): one that exists with no installation.
	Blank      bool
	IPAddress  string
	MACAddress string
	// Boot is the boot override in effect; Media the virtual CD.
	Boot  BootOverride
	Media Media
}
