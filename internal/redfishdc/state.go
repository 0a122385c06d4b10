package redfishdc

import (
	"slices"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/imagecache"
)

// An operation's steps and outcome, as the controller reads them (status) and the steps, the
// installer's reports and the BMC record them.

// set records a step's state.
func (o *operation) set(step string, state controller.StepState, reason, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.setLocked(step, state, reason, msg)
}

// setIfNotDone records a step's state unless a report made it Done already.
func (o *operation) setIfNotDone(step string, state controller.StepState, reason, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.steps {
		if s.Type == step && s.State == controller.StepDone {
			return
		}
	}
	o.setLocked(step, state, reason, msg)
}

func (o *operation) setLocked(step string, state controller.StepState, reason, msg string) {
	if o.ended {
		return // a step of a repave that is over no longer changes
	}
	for i := range o.steps {
		if o.steps[i].Type == step {
			o.steps[i] = controller.Step{Type: step, State: state, Reason: reason, Message: msg}
		}
	}
}

// fail fails the repave at step.
func (o *operation) fail(step, reason, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failLocked(step, reason, msg)
}

func (o *operation) failLocked(step, reason, msg string) {
	if o.ended {
		return
	}
	o.setLocked(step, controller.StepFailed, reason, msg)
	o.failed, o.reason, o.message = true, reason, msg
	o.endLocked()
}

// end ends the repave: its URLs answer 410, its BMC work stops.
func (o *operation) end() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.endLocked()
}

// stopByController ends a repave the controller stops (PowerOff) and reports whether it never
// touched the server, the first time only: later PowerOffs are power Operations'.
func (o *operation) stopByController() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.settled || o.done {
		return false
	}
	o.settled = true
	o.endLocked()
	return !o.touched
}

// settle marks the controller's stop as past (a power Operation runs).
func (o *operation) settle() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.settled = true
}

func (o *operation) endLocked() {
	o.ended = true
	if o.cancel != nil {
		o.cancel()
	}
}

func (o *operation) succeeded() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.done
}

// status is the repave's status for the controller.
func (o *operation) status() controller.RepaveStatus {
	o.mu.Lock()
	defer o.mu.Unlock()
	return controller.RepaveStatus{Steps: slices.Clone(o.steps), Done: o.done, Failed: o.failed, Reason: o.reason, Message: o.message,
		IPAddress: o.ip, MACAddress: o.mac, Timeline: slices.Clone(o.timeline)}
}

// The messages of sizes and downloads are the image cache's, as the simulator's are.
var (
	downloadMessage = imagecache.DownloadMessage
	formatBytes     = imagecache.FormatBytes
)
