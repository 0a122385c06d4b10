package mockdc

import (
	"fmt"
	"slices"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// ImageTries is how many times the mock datacenter tries to download an image before its
// ImageReady step fails: an ImageServerError with fewer failedTries only slows the step down.
const ImageTries = 3

// FaultBody is a fault of a repave (RepaveBody.Faults): the mock makes it strike when the repave
// reaches At.
type FaultBody struct {
	Type        string        `json:"type"`
	At          string        `json:"at"`
	FailedTries int32         `json:"failedTries,omitempty"`
	Duration    time.Duration `json:"duration,omitempty"`
}

// supportedFaults are the faults the mock datacenter makes real, and the steps they may strike at.
// The mock has no guest, disk or network of its own: it reports what the real datacenter would.
var supportedFaults = map[stargatev1.FaultType][]string{
	stargatev1.FaultImageServerError: {stargatev1.ConditionImageReady},
	stargatev1.FaultImageTruncated:   {stargatev1.ConditionImageReady},
	stargatev1.FaultImageCorrupted:   {stargatev1.ConditionImageReady},
	stargatev1.FaultDiskReadError:    {stargatev1.ConditionGuestReady},
	stargatev1.FaultDiskWriteError:   {stargatev1.ConditionGuestReady},
	stargatev1.FaultPowerLoss:        stargatev1.RepaveSteps,
	stargatev1.FaultHang:             stargatev1.RepaveSteps,
	// What the simulator's real guests show for these (its VM tests): a partition stalls the
	// step, no route to the API server fails the join, a kernel crash fails the guest at once.
	stargatev1.FaultNetworkPartition:   {stargatev1.ConditionVMRunning, stargatev1.ConditionGuestReady},
	stargatev1.FaultNoRouteToAPIServer: {stargatev1.ConditionVMRunning, stargatev1.ConditionGuestReady},
	stargatev1.FaultKernelCrash:        {stargatev1.ConditionGuestReady},
}

// SupportsFault reports whether the mock datacenter makes a fault of type t real at step at.
func SupportsFault(t stargatev1.FaultType, at string) bool {
	return slices.Contains(supportedFaults[t], at)
}

// stepOutcome is what the faults at one step do to it.
type stepOutcome struct {
	// extra is how much longer the step takes.
	extra time.Duration
	// powerLoss makes the machine lose power when the step starts.
	powerLoss bool
	// reason and message, when set, make the step fail when it would have been done.
	reason, message string
}

// outcome applies the faults of a repave that strike at step.
func outcome(faults []FaultBody, step string, stepDelay time.Duration) stepOutcome {
	var o stepOutcome
	for _, f := range faults {
		if f.At != step || !SupportsFault(stargatev1.FaultType(f.Type), step) {
			continue
		}
		switch stargatev1.FaultType(f.Type) {
		case stargatev1.FaultHang, stargatev1.FaultNetworkPartition:
			o.extra += f.Duration
		case stargatev1.FaultNoRouteToAPIServer:
			o.reason, o.message = "CloudInitFailed", "mock datacenter: the guest's cloud-init failed: connect to the API server: No route to host"
		case stargatev1.FaultKernelCrash:
			o.reason, o.message = "KernelPanic", "mock datacenter: the guest's kernel panicked: Kernel panic - not syncing: sysrq triggered crash"
		case stargatev1.FaultPowerLoss:
			o.powerLoss = true
		case stargatev1.FaultImageServerError:
			if f.FailedTries >= ImageTries {
				o.reason = "ImageFetchFailed"
				o.message = fmt.Sprintf("mock datacenter: the image server answered 503 Service Unavailable %d times in a row; "+
					"gave up after %d tries", ImageTries, ImageTries)
			} else {
				o.extra += time.Duration(f.FailedTries) * stepDelay // one retry per failed try
			}
		case stargatev1.FaultImageTruncated:
			o.reason, o.message = "ImageFetchFailed", "mock datacenter: the image download ended early: unexpected EOF"
		case stargatev1.FaultImageCorrupted:
			o.reason, o.message = "ChecksumMismatch", "mock datacenter: the image does not match its checksum"
		case stargatev1.FaultDiskReadError:
			o.reason, o.message = "CloudInitFailed", "mock datacenter: the guest's cloud-init failed: I/O error, dev vda, op READ"
		case stargatev1.FaultDiskWriteError:
			o.reason, o.message = "CloudInitFailed", "mock datacenter: the guest's cloud-init failed: I/O error, dev vda, op WRITE"
		}
	}
	return o
}
