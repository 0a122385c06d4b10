package controller

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// serverObservation is everything a Server's status is computed from.
type serverObservation struct {
	server *stargatev1.Server
	// ops are the Server's Operations.
	ops []stargatev1.Operation
	// machine is what the provider reports about the server, nil when not asked.
	machine *ServerInfo
	// redfishURL is where this host serves Redfish ("" when it does not).
	redfishURL string
}

// BMCSystemID is the Redfish ComputerSystem id of a Server: <namespace>.<name> (both DNS labels,
// so the dot cannot be ambiguous), stable for the Server's life.
func BMCSystemID(server types.NamespacedName) string { return server.Namespace + "." + server.Name }

// bmcStatus is what the Server's BMC shows, from its spec and its machine.
func bmcStatus(o serverObservation) *stargatev1.BMCStatus {
	var st *stargatev1.BMCStatus
	switch {
	case o.server.Spec.DrivesBMC():
		// A BMC Stargate drives: its address as given, and how far Stargate trusts it.
		st = &stargatev1.BMCStatus{Address: o.server.Spec.BMC.Address, TLS: o.server.Spec.BMC.TLS()}
	case o.server.Spec.BMC == nil || o.redfishURL == "":
		return nil
	default:
		st = &stargatev1.BMCStatus{Address: strings.TrimRight(o.redfishURL, "/") + "/redfish/v1/Systems/" +
			BMCSystemID(types.NamespacedName{Namespace: o.server.Namespace, Name: o.server.Name})}
	}
	if o.server.Status.BMC != nil {
		st.BootOverride, st.VirtualMedia = o.server.Status.BMC.BootOverride, o.server.Status.BMC.VirtualMedia
	}
	if m := o.machine; m != nil {
		st.BootOverride = ""
		if m.Boot.Target != "" {
			st.BootOverride = fmt.Sprintf("%s/%s/%s", m.Boot.Target, m.Boot.Enabled, m.Boot.Mode)
		}
		st.VirtualMedia = ""
		if m.Media.Inserted {
			st.VirtualMedia = m.Media.Image
		}
	}
	return st
}

// desiredServerStatus computes a Server's status from its Operations and its machine: the Server
// reconciler is its only writer, and this function is its only author. The state follows the
// newest Operation that started on the Server; when that Operation is gone the status keeps what it
// recorded (an Operation deleted while running leaves the Server in Error, as interrupted).
func desiredServerStatus(o serverObservation) stargatev1.ServerStatus {
	st := *o.server.Status.DeepCopy()
	st.ObservedGeneration = o.server.Generation
	set := func(state stargatev1.ServerState, ok bool, reason, msg string) {
		st.State, st.Message = state, msg
		c := provisionedCondition(ok, reason, msg)
		c.ObservedGeneration = o.server.Generation
		meta.SetStatusCondition(&st.Conditions, c)
	}

	switch cur := currentOperation(o.ops, st); {
	case !o.server.DeletionTimestamp.IsZero():
		st.State, st.Message = stargatev1.ServerDeleting, "Releasing the machine, disks, network attachment and IP address"
	case cur == nil && st.State == stargatev1.ServerProvisioning:
		set(stargatev1.ServerError, false, "OperationDeleted", fmt.Sprintf("Repave interrupted: Operation %s was deleted while running; "+
			"the server is powered off. Create a new repave Operation to install it.", st.LastOperation))
	case cur == nil && st.State == "":
		st.State, st.Message = stargatev1.ServerAvailable, "Not installed by Stargate yet: create a repave Operation"
	case cur == nil:
		// Nothing new happened to the server.
	case cur.Status.Phase == stargatev1.OperationRunning:
		st.LastOperation = cur.Name
		set(stargatev1.ServerProvisioning, false, "Repaving", fmt.Sprintf("Repave by Operation %s with profile %s in progress", cur.Name, profileName(cur)))
	case cur.Status.Phase == stargatev1.OperationSucceeded:
		if st.LastOperation != cur.Name || st.State != stargatev1.ServerReady {
			st.LastOperation = cur.Name
			st.ProvisioningProfile = profileName(cur)
			st.InstanceID = InstanceID(cur)
			st.ProvisionedAt = cur.Status.CompletionTime
		}
		set(stargatev1.ServerReady, true, "Repaved", fmt.Sprintf("Installed with profile %s by Operation %s", st.ProvisioningProfile, cur.Name))
	case cur.Status.Phase == stargatev1.OperationFailed:
		st.LastOperation = cur.Name
		reason := "RepaveFailed"
		if c := meta.FindStatusCondition(cur.Status.Conditions, stargatev1.ConditionSucceeded); c != nil && c.Reason != "" {
			reason = c.Reason
		}
		set(stargatev1.ServerError, false, reason, fmt.Sprintf("Repave by Operation %s failed: %s", cur.Name, firstLine(cur.Status.Message)))
	}

	st.BMC = bmcStatus(o)
	latest := latestOperation(o.ops)
	if latest != nil && latest.Spec.Operation.IsPower() && o.server.DeletionTimestamp.IsZero() {
		st.LastOperation = latest.Name
	}
	if m := o.machine; m != nil {
		if m.IPAddress != "" {
			st.IPAddress, st.MACAddress = m.IPAddress, m.MACAddress
		}
		st.PowerState = powerStateOf(m)
		if m.Blank && st.State == stargatev1.ServerAvailable && o.server.DeletionTimestamp.IsZero() {
			set(stargatev1.ServerAvailable, false, "BlankMachine", blankMachineMessage(m.Running))
		}
		if st.State == stargatev1.ServerReady && !m.Running && !expectedOff(latest) {
			set(stargatev1.ServerError, false, "MachineStopped",
				"The server stopped without a powerOff Operation (guest poweroff, crash, or removed outside Stargate): "+
					"create a powerOn Operation to boot it again, or a repave to reinstall it")
		}
	}
	return st
}

// blankMachineMessage says what a blank machine is and what can be done with it.
func blankMachineMessage(running bool) string {
	power := "powered off"
	if running {
		power = "powered on"
	}
	return "Blank machine, " + power + ": nothing installed by Stargate; its disk holds only what software booted from its BMC's virtual media wrote. " +
		"Create a repave Operation to install it"
}

func powerStateOf(m *ServerInfo) stargatev1.PowerState {
	switch {
	case !m.Exists:
		return stargatev1.PowerUnknown
	case m.Running:
		return stargatev1.PowerOn
	}
	return stargatev1.PowerOff
}

// latestOperation is the Operation that started last, of any kind (nil if none started).
func latestOperation(ops []stargatev1.Operation) *stargatev1.Operation {
	var latest *stargatev1.Operation
	for i := range ops {
		op := &ops[i]
		if op.Status.StartTime != nil && (latest == nil || startedAfter(op, latest)) {
			latest = op
		}
	}
	return latest
}

// expectedOff reports whether the machine may be off because of the last Operation: a power
// Operation still running, a powerOff, or any failure (failures power the server off).
func expectedOff(latest *stargatev1.Operation) bool {
	if latest == nil || !latest.Spec.Operation.IsPower() {
		return false
	}
	return latest.Status.Phase == stargatev1.OperationRunning || latest.Status.Phase == stargatev1.OperationFailed ||
		latest.Spec.Operation == stargatev1.OperationPowerOff
}

// currentOperation is the Operation that decides a Server's state: the running one, else the one
// that started last — unless the Operation the Server recorded last is gone and the candidate is no
// newer than the Server's last installation (an older Operation never overrides a newer result).
func currentOperation(ops []stargatev1.Operation, st stargatev1.ServerStatus) *stargatev1.Operation {
	var newest, last *stargatev1.Operation
	evacuated := lastEvacuation(ops, st.LastOperation)
	for i := range ops {
		op := &ops[i]
		if op.Name == st.LastOperation {
			last = op
		}
		if op.Status.StartTime == nil || op.Spec.Operation != stargatev1.OperationRepave {
			continue
		}
		// A repave that started before the Server's evacuation ran on the lost host: not this
		// Server's state any more (times have one-second resolution, and such a repave started
		// at least a grace period earlier).
		if evacuated != nil && op.Status.StartTime.Before(evacuated) {
			continue
		}
		if op.Status.Phase == stargatev1.OperationRunning {
			return op
		}
		if newest == nil || startedAfter(op, newest) {
			newest = op
		}
	}
	if newest == nil || last != nil || st.LastOperation == "" {
		return newest
	}
	if st.ProvisionedAt != nil && !newest.Status.StartTime.After(st.ProvisionedAt.Time) {
		return nil
	}
	if st.State == stargatev1.ServerProvisioning {
		return nil // the recorded Operation vanished mid-run: it was interrupted
	}
	return newest
}

func startedAfter(a, b *stargatev1.Operation) bool {
	if !a.Status.StartTime.Equal(b.Status.StartTime) {
		return b.Status.StartTime.Before(a.Status.StartTime)
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return b.CreationTimestamp.Before(&a.CreationTimestamp)
	}
	return a.Name > b.Name
}

func profileName(op *stargatev1.Operation) string {
	if op.Spec.ProvisioningProfileRef == nil {
		return ""
	}
	return op.Spec.ProvisioningProfileRef.Name
}

// serverEvent is an Event that a Server's status transition deserves.
type serverEvent struct {
	eventtype, reason, note string
}

// serverTransitionEvent returns the Event for a change of a Server's state, if it deserves one.
func serverTransitionEvent(before, after stargatev1.ServerStatus) (serverEvent, bool) {
	if before.State == after.State && before.LastOperation == after.LastOperation {
		return serverEvent{}, false
	}
	reason := ""
	if c := meta.FindStatusCondition(after.Conditions, stargatev1.ConditionProvisioned); c != nil {
		reason = c.Reason
	}
	switch after.State {
	case stargatev1.ServerProvisioning:
		return serverEvent{corev1.EventTypeNormal, "RepaveStarted", after.Message}, true
	case stargatev1.ServerReady:
		return serverEvent{corev1.EventTypeNormal, "Provisioned", fmt.Sprintf("Ready at %s with profile %s", after.IPAddress, after.ProvisioningProfile)}, true
	case stargatev1.ServerError:
		if reason == "MachineStopped" {
			return serverEvent{corev1.EventTypeWarning, "MachineStopped", after.Message}, true
		}
		return serverEvent{corev1.EventTypeWarning, "ProvisioningFailed", after.Message}, true
	}
	return serverEvent{}, false
}

// lastEvacuation is when the Server was last evacuated (nil if never). The evacuation commits when
// it rewrites the Server's status (recording itself as the last Operation), before its own phase
// says Succeeded: from that moment on it counts, from its start (or creation), so the new host never reads the
// lost host's repave as the Server's state.
func lastEvacuation(ops []stargatev1.Operation, recorded string) *metav1.Time {
	var last *metav1.Time
	for i := range ops {
		op := &ops[i]
		if op.Spec.Operation != stargatev1.OperationEvacuate {
			continue
		}
		at := op.Status.CompletionTime
		if op.Status.Phase != stargatev1.OperationSucceeded {
			at = nil
		}
		if op.Name == recorded && at == nil {
			at = op.Status.StartTime
			if at == nil { // the evacuation records its start only when it finishes
				at = &op.CreationTimestamp
			}
		}
		if at != nil && (last == nil || last.Before(at)) {
			last = at
		}
	}
	return last
}
