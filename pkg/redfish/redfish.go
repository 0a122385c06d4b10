// Package redfish serves the part of the DMTF Redfish protocol that provisioning tools use to drive
// a server's BMC — the endpoint set of OpenStack Ironic's Redfish driver, tested with its sushy
// library: the service root, Systems with power state and boot override, ComputerSystem.Reset,
// Managers, VirtualMedia under both the System and the Manager, and EthernetInterfaces.
//
// The protocol lives here; the datacenter behind it is a Backend. Each System is its own BMC: it
// has its own credentials (HTTP basic auth, as BMCs do), checked by Backend.Authorize for every
// request that names it, and its Manager has the System's id. A request without that system's
// credentials is answered 401 — also for a system that does not exist, so that nobody learns
// which ones do — and the collections list only the systems the credentials open. The service
// root alone is served without credentials, as on real BMCs. Everything that arrives over the
// network is treated as hostile: ids are validated before they reach the Backend, request bodies
// are limited and strictly decoded, and a request without valid credentials changes nothing.
//
//	svc := &redfish.Service{Backend: backend}
//	cert, err := redfish.EnsureCertificate(dir, []string{"localhost", "10.0.0.1"})
//	...
//	srv := &redfish.Server{Handler: svc, Certificate: &cert}
//	err = srv.ListenAndServe(ctx, ":8443")
package redfish

import (
	"context"
	"errors"
	"regexp"
)

// Backend is what a Redfish service needs from a datacenter: systems, their power, boot override
// and virtual media. Its methods are called concurrently, from many requests at once; a Backend
// serialises changes to one system itself (e.g. under the same lock its other operations take).
// Ids are those Systems returns and must satisfy ValidID; the service never passes another.
//
// Errors: ErrNotFound when the system is unknown (404), a *BadRequestError when the request cannot
// be honoured as asked (400), ErrConflict when the system is busy or the change conflicts with
// its state (409), a *ServiceError to answer with its status and message (e.g. a BMC's failure);
// any other error is a 500 whose text the client does not see. A Backend may also be a Gatekeeper.
type Backend interface {
	// Authorize reports whether user/password may act on the system (its BMC credentials). It is
	// false for an unknown system, so that a client without credentials learns nothing about
	// which systems exist. Compare secrets in constant time.
	Authorize(ctx context.Context, systemID, user, password string) bool
	// Systems returns the ids of all systems, in a stable order.
	Systems(ctx context.Context) ([]string, error)
	// System returns the system's current state.
	System(ctx context.Context, id string) (System, error)
	// Reset changes the system's power as t asks; user is the BMC user who asked, for events and
	// audit.
	Reset(ctx context.Context, id string, t ResetType, user string) error
	// SetBoot changes the boot override. A field left empty in b is left as it is.
	SetBoot(ctx context.Context, id string, b Boot, user string) error
	// InsertMedia attaches the image at imageURL (http or https, already checked to be an
	// absolute URL) as the system's virtual CD, inserted and write-protected. A drive that already
	// holds media may be replaced or fail with ErrConflict.
	InsertMedia(ctx context.Context, id, imageURL, user string) error
	// EjectMedia detaches the virtual CD's media; ejecting an empty drive succeeds.
	EjectMedia(ctx context.Context, id, user string) error
}

// System is one ComputerSystem as the Backend sees it.
type System struct {
	// ID is the system's stable id (see ValidID); the Manager has the same id.
	ID string
	// Name is shown as the System's Name; empty means the ID.
	Name string
	// UUID is the system's SMBIOS UUID, e.g. the VM's.
	UUID       string
	PowerState PowerState
	// MACAddresses are the system's NICs, in order; each becomes an EthernetInterface.
	MACAddresses []string
	Boot         Boot
	Media        Media
	MemoryMiB    int64
	CPUs         int
}

// PowerState is a System's power state, as Redfish names it. Any other value (e.g. "Unknown") is
// shown as null.
type PowerState string

// The power states Redfish knows.
const (
	PowerOn          PowerState = "On"
	PowerOff         PowerState = "Off"
	PowerPoweringOn  PowerState = "PoweringOn"
	PowerPoweringOff PowerState = "PoweringOff"
)

// ResetType is a ComputerSystem.Reset action's ResetType. The service accepts exactly the five
// below (the ones Ironic uses); other Redfish reset types (PowerCycle, Nmi, ForceOn,
// PushPowerButton) are refused with 400 before the Backend sees them.
type ResetType string

// The reset types the service accepts.
const (
	// ResetOn powers the system on; it is a no-op when the system is on.
	ResetOn ResetType = "On"
	// ResetForceOff cuts the power at once.
	ResetForceOff ResetType = "ForceOff"
	// ResetGracefulShutdown asks the OS to shut down (ACPI power button).
	ResetGracefulShutdown ResetType = "GracefulShutdown"
	// ResetForceRestart resets the system at once.
	ResetForceRestart ResetType = "ForceRestart"
	// ResetGracefulRestart asks the OS to reboot.
	ResetGracefulRestart ResetType = "GracefulRestart"
)

// ResetTypes are the reset types the service accepts, in the order it advertises them.
func ResetTypes() []ResetType {
	return []ResetType{ResetOn, ResetForceOff, ResetGracefulShutdown, ResetForceRestart, ResetGracefulRestart}
}

// Boot is a System's boot source override.
type Boot struct {
	// Target is BootSourceOverrideTarget: BootTargetNone, BootTargetPxe, BootTargetCd or BootTargetHdd.
	Target string
	// Enabled is BootSourceOverrideEnabled: BootDisabled, BootOnce or BootContinuous.
	Enabled string
	// Mode is BootSourceOverrideMode: BootModeUEFI or BootModeLegacy.
	Mode string
}

// Boot override values (the Redfish spellings).
const (
	BootTargetNone = "None"
	BootTargetPxe  = "Pxe"
	BootTargetCd   = "Cd"
	BootTargetHdd  = "Hdd"

	BootDisabled   = "Disabled"
	BootOnce       = "Once"
	BootContinuous = "Continuous"

	BootModeUEFI   = "UEFI"
	BootModeLegacy = "Legacy"
)

var (
	bootTargets = []string{BootTargetNone, BootTargetPxe, BootTargetCd, BootTargetHdd}
	bootEnabled = []string{BootDisabled, BootOnce, BootContinuous}
	bootModes   = []string{BootModeUEFI, BootModeLegacy}
)

// Media is the state of a System's virtual CD drive.
type Media struct {
	// Image is the URL of the attached image; empty when none is.
	Image          string
	Inserted       bool
	WriteProtected bool
}

// ErrNotFound is returned by a Backend for an unknown system (404 ResourceNotFound).
var ErrNotFound = errors.New("redfish: system not found")

// ErrConflict is returned by a Backend when the system is busy (e.g. another operation holds it)
// or the change conflicts with its state (409 ResourceInUse).
var ErrConflict = errors.New("redfish: resource in use")

// BadRequestError is returned by a Backend when a request is well-formed but cannot be honoured
// as asked (400); Message is shown to the client, so it must not hold secrets.
type BadRequestError struct {
	Message string
}

func (e *BadRequestError) Error() string { return e.Message }

// idPattern is what ValidID accepts: it fits a URL path segment unescaped, cannot be "." or "..",
// and holds Kubernetes names, UIDs and "namespace_name" forms.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// ValidID reports whether id can name a System: 1 to 253 characters, letters, digits, '.', '_'
// and '-', starting with a letter or digit. The service answers 404 for any other id in a URL
// without asking the Backend, and leaves systems with other ids out of its collections.
func ValidID(id string) bool { return idPattern.MatchString(id) }
