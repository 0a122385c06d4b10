package v1alpha1

// Condition types on an Operation. Each step of a repave owns one; a user can
// `kubectl wait --for=condition=Succeeded operation/NAME`.
const (
	// ConditionSucceeded is True when the Operation succeeded and False when it failed; it is absent
	// (or Unknown) while the Operation is not finished.
	ConditionSucceeded = "Succeeded"
	// ConditionScheduled is True once the Operation holds its Server and host capacity and may run.
	ConditionScheduled = "Scheduled"
	// ConditionImageReady is True once the OS image is downloaded, verified and cached (reason
	// Cached) or, for a profile with spec.installation, its golden image is booted (GoldenImage).
	ConditionImageReady = "ImageReady"
	// ConditionCloudInitReady is True once the cloud-init data source is built for this install.
	ConditionCloudInitReady = "CloudInitReady"
	// ConditionNetworkReady is True once the server has its network interface and IP address.
	ConditionNetworkReady = "NetworkReady"
	// ConditionVMRunning is True once the server (VM) is powered on with the fresh disk.
	ConditionVMRunning = "VMRunning"
	// ConditionGuestReady is True once cloud-init in the freshly installed OS finished without
	// errors, in this boot.
	ConditionGuestReady = "GuestReady"
	// ConditionNodeReady is True once the Node named after the Server is Ready (only for profiles
	// with joinsCluster).
	ConditionNodeReady = "NodeReady"
	// ConditionInstallerReady is True once the per-Operation installer ISO is built and served (a
	// Redfish datacenter's repave).
	ConditionInstallerReady = "InstallerReady"
	// ConditionMediaInserted is True once the BMC holds the installer ISO as its virtual CD and is
	// told to boot from it once.
	ConditionMediaInserted = "MediaInserted"
	// ConditionInstallerBooted is True once the installer, booted from the virtual CD, made its
	// first report.
	ConditionInstallerBooted = "InstallerBooted"
	// ConditionImageWritten is True once the installer wrote the image (its sha256 checked) and the
	// cloud-init seed to the server's disk; while it writes, its message says bytes, % and rate.
	ConditionImageWritten = "ImageWritten"
	// ConditionBootedFromDisk is True once the virtual CD is ejected and the server powered on from
	// its disk.
	ConditionBootedFromDisk = "BootedFromDisk"
	// ConditionPoweredOff is True once the server is off (powerOff, and the first half of reboot);
	// its reason says whether the guest shut down (ShutDown) or was forced (ForcedOff).
	ConditionPoweredOff = "PoweredOff"
	// ConditionPoweredOn is True once the server runs again (powerOn, and the second half of reboot).
	ConditionPoweredOn = "PoweredOn"
)

// Steps returns the step conditions of an Operation of this type, in order.
func (t OperationType) Steps() []string {
	switch t {
	case OperationPowerOn:
		return []string{ConditionPoweredOn}
	case OperationPowerOff:
		return []string{ConditionPoweredOff}
	case OperationReboot:
		return []string{ConditionPoweredOff, ConditionPoweredOn}
	case OperationEvacuate:
		return nil
	}
	return RepaveSteps
}

// Condition types on a Server.
const (
	// ConditionProvisioned is True while the Server runs an installation that finished successfully.
	ConditionProvisioned = "Provisioned"
	// ConditionHostReachable is False (reason HostLost) once the host that owns the Server stopped
	// renewing its Lease for the grace period, and True again (HostRenewed) when it renews it. The
	// unfinished Operations of such a Server carry it too. Only the elected host observer writes it.
	ConditionHostReachable = "HostReachable"
)

// Condition types on a ProvisioningProfile.
const (
	// ConditionValid is True when the profile passed the checks made before any server is touched.
	ConditionValid = "Valid"
)

// RepaveSteps are the condition types of a repave's steps in the simulator and the mock datacenter,
// in the order they run them: the two report against this one list, so they cannot drift apart.
// The Redfish datacenter drives a real machine through other steps (RedfishRepaveSteps); the
// controller records whichever steps its provider reports.
var RepaveSteps = []string{
	ConditionImageReady,
	ConditionCloudInitReady,
	ConditionNetworkReady,
	ConditionVMRunning,
	ConditionGuestReady,
}

// RedfishRepaveSteps are the condition types of a repave through a server's BMC, in order.
var RedfishRepaveSteps = []string{
	ConditionImageReady,
	ConditionInstallerReady,
	ConditionMediaInserted,
	ConditionInstallerBooted,
	ConditionImageWritten,
	ConditionBootedFromDisk,
	ConditionGuestReady,
}
