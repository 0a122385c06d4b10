package controller

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

func failedOp(name string, created, started int, reason, msg string) stargatev1.Operation {
	op := opAt(name, created, stargatev1.OperationFailed, started)
	op.Status.Message = msg
	meta.SetStatusCondition(&op.Status.Conditions, succeededCondition(false, reason, msg))
	return op
}

func powerOp(name string, kind stargatev1.OperationType, phase stargatev1.OperationPhase, started int) stargatev1.Operation {
	op := opAt(name, started-1, phase, started)
	op.Spec.Operation, op.Spec.ProvisioningProfileRef = kind, nil
	return op
}

func TestDesiredServerStatus(t *testing.T) {
	running := opAt("op2", 10, stargatev1.OperationRunning, 11)
	succeeded := opAt("op1", 1, stargatev1.OperationSucceeded, 2)
	failed := failedOp("op3", 20, 21, "CloudInitFailed", "cloud-init finished with errors\nconsole...")
	up := &ServerInfo{Exists: true, Running: true, IPAddress: "192.168.100.11", MACAddress: "52:54:00:aa:bb:cc"}
	down := &ServerInfo{Exists: true, Running: false, IPAddress: "192.168.100.11", MACAddress: "52:54:00:aa:bb:cc"}
	provisionedAt := metav1.NewTime(succeeded.Status.CompletionTime.Time)
	blankUp := &ServerInfo{Exists: true, Running: true, Blank: true, IPAddress: "192.168.100.12", MACAddress: "52:54:00:aa:bb:cd"}
	blankDown := &ServerInfo{Exists: true, Blank: true, IPAddress: "192.168.100.12", MACAddress: "52:54:00:aa:bb:cd"}

	for _, tc := range []struct {
		name    string
		status  stargatev1.ServerStatus
		ops     []stargatev1.Operation
		machine *ServerInfo
		deleted bool
		state   stargatev1.ServerState
		last    string
		reason  string
		msg     string
		power   stargatev1.PowerState
	}{
		{name: "new server", state: stargatev1.ServerAvailable, msg: "create a repave Operation"},
		{name: "pending operations do not touch it", ops: []stargatev1.Operation{opAt("op9", 1, stargatev1.OperationPending, 0)},
			state: stargatev1.ServerAvailable},
		{name: "running", ops: []stargatev1.Operation{succeeded, running}, machine: up,
			state: stargatev1.ServerProvisioning, last: "op2", reason: "Repaving", msg: "Repave by Operation op2 with profile p in progress"},
		{name: "succeeded and up", ops: []stargatev1.Operation{succeeded}, machine: up,
			state: stargatev1.ServerReady, last: "op1", reason: "Repaved", msg: "Installed with profile p by Operation op1"},
		{name: "succeeded but the machine stopped", ops: []stargatev1.Operation{succeeded}, machine: down,
			state: stargatev1.ServerError, last: "op1", reason: "MachineStopped", msg: "stopped without a powerOff Operation"},
		{name: "powered off by an Operation", ops: []stargatev1.Operation{succeeded, powerOp("off1", stargatev1.OperationPowerOff, stargatev1.OperationSucceeded, 30)},
			machine: down, state: stargatev1.ServerReady, last: "off1", reason: "Repaved", power: stargatev1.PowerOff},
		{name: "powering on", ops: []stargatev1.Operation{succeeded, powerOp("on1", stargatev1.OperationPowerOn, stargatev1.OperationRunning, 30)},
			machine: down, state: stargatev1.ServerReady, last: "on1", power: stargatev1.PowerOff},
		{name: "powered on, then stopped on its own",
			ops:     []stargatev1.Operation{succeeded, powerOp("on1", stargatev1.OperationPowerOn, stargatev1.OperationSucceeded, 30)},
			machine: down, state: stargatev1.ServerError, last: "on1", reason: "MachineStopped", power: stargatev1.PowerOff},
		{name: "powered on again after a stop", ops: []stargatev1.Operation{succeeded, powerOp("on1", stargatev1.OperationPowerOn, stargatev1.OperationSucceeded, 30)},
			status:  stargatev1.ServerStatus{State: stargatev1.ServerError, LastOperation: "op1"},
			machine: up, state: stargatev1.ServerReady, last: "on1", power: stargatev1.PowerOn},
		{name: "failed", ops: []stargatev1.Operation{succeeded, failed}, machine: down,
			state: stargatev1.ServerError, last: "op3", reason: "CloudInitFailed", msg: "Repave by Operation op3 failed: cloud-init finished with errors"},
		{name: "running operation deleted", status: stargatev1.ServerStatus{State: stargatev1.ServerProvisioning, LastOperation: "gone"},
			ops: []stargatev1.Operation{succeeded}, machine: down,
			state: stargatev1.ServerError, last: "gone", reason: "OperationDeleted", msg: "Repave interrupted: Operation gone was deleted while running"},
		{name: "last operation deleted: an older one does not override it",
			status: stargatev1.ServerStatus{State: stargatev1.ServerReady, LastOperation: "gone", ProvisionedAt: &provisionedAt, Message: "kept"},
			ops:    []stargatev1.Operation{succeeded}, machine: up, state: stargatev1.ServerReady, last: "gone", msg: "kept"},
		{name: "deleting", ops: []stargatev1.Operation{succeeded}, deleted: true, state: stargatev1.ServerDeleting, msg: "Releasing"},
		{name: "evacuated: the lost host's installation is not the Server's state",
			status:  stargatev1.ServerStatus{State: stargatev1.ServerAvailable, LastOperation: "evac", Message: "Evacuated from lost host a"},
			ops:     []stargatev1.Operation{succeeded, powerOp("evac", stargatev1.OperationEvacuate, stargatev1.OperationSucceeded, 40)},
			machine: &ServerInfo{}, state: stargatev1.ServerAvailable, last: "evac", msg: "Evacuated", power: stargatev1.PowerUnknown},
		// The evacuation rewrites the Server's status before its own phase says Succeeded: in
		// between, the new host's view must not take the lost host's repave for the state.
		{name: "evacuated, the evacuation not yet marked Succeeded",
			status: stargatev1.ServerStatus{State: stargatev1.ServerAvailable, LastOperation: "evac", Message: "Evacuated from lost host a"},
			ops: []stargatev1.Operation{succeeded, func() stargatev1.Operation {
				op := opAt("evac", 40, "", 0)
				op.Spec.Operation, op.Spec.ProvisioningProfileRef = stargatev1.OperationEvacuate, nil
				return op
			}()},
			machine: &ServerInfo{}, state: stargatev1.ServerAvailable, last: "evac", msg: "Evacuated", power: stargatev1.PowerUnknown},
		{name: "repaved after the evacuation", status: stargatev1.ServerStatus{State: stargatev1.ServerAvailable, LastOperation: "evac"},
			ops: []stargatev1.Operation{succeeded, powerOp("evac", stargatev1.OperationEvacuate, stargatev1.OperationSucceeded, 40),
				opAt("op4", 50, stargatev1.OperationSucceeded, 51)},
			machine: up, state: stargatev1.ServerReady, last: "op4", reason: "Repaved"},
		// A blank machine (never repaved, made by its BMC) says so, powered on or off; a repave
		// or a deletion decides the state as for any machine.
		{name: "blank machine powered on", machine: blankUp, state: stargatev1.ServerAvailable, reason: "BlankMachine",
			msg: "Blank machine, powered on: nothing installed by Stargate", power: stargatev1.PowerOn},
		{name: "blank machine powered off", status: stargatev1.ServerStatus{State: stargatev1.ServerAvailable, Message: "Not installed by Stargate yet"},
			machine: blankDown, state: stargatev1.ServerAvailable, reason: "BlankMachine", msg: "Blank machine, powered off", power: stargatev1.PowerOff},
		{name: "blank machine being repaved", ops: []stargatev1.Operation{running}, machine: blankUp,
			state: stargatev1.ServerProvisioning, last: "op2", reason: "Repaving", power: stargatev1.PowerOn},
		{name: "blank machine deleted", machine: blankUp, deleted: true, state: stargatev1.ServerDeleting, msg: "Releasing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := &stargatev1.Server{Status: tc.status}
			server.Name, server.Generation = "s1", 3
			if tc.deleted {
				server.DeletionTimestamp = &metav1.Time{Time: time.Now()}
			}
			st := desiredServerStatus(serverObservation{server: server, ops: tc.ops, machine: tc.machine})
			if st.State != tc.state || st.LastOperation != tc.last || !strings.Contains(st.Message, tc.msg) || st.ObservedGeneration != 3 {
				t.Errorf("state %s last %q message %q (generation %d), want %s %q containing %q", st.State, st.LastOperation, st.Message,
					st.ObservedGeneration, tc.state, tc.last, tc.msg)
			}
			if c := meta.FindStatusCondition(st.Conditions, stargatev1.ConditionProvisioned); tc.reason != "" && (c == nil || c.Reason != tc.reason) {
				t.Errorf("Provisioned condition %+v, want reason %s", c, tc.reason)
			}
			if tc.power != "" && st.PowerState != tc.power {
				t.Errorf("power state %s, want %s", st.PowerState, tc.power)
			}
			if tc.machine != nil && st.IPAddress != tc.machine.IPAddress {
				t.Errorf("IP %q, want the machine's %q", st.IPAddress, tc.machine.IPAddress)
			}
		})
	}
}

func TestDesiredServerStatusRecordsTheInstallation(t *testing.T) {
	succeeded := opAt("op1", 1, stargatev1.OperationSucceeded, 2)
	server := &stargatev1.Server{}
	st := desiredServerStatus(serverObservation{server: server, ops: []stargatev1.Operation{succeeded},
		machine: &ServerInfo{Running: true, IPAddress: "10.0.0.5", MACAddress: "52:54:00:00:00:05"}})
	if st.InstanceID != InstanceID(&succeeded) || st.ProvisioningProfile != "p" || st.ProvisionedAt == nil ||
		!st.ProvisionedAt.Equal(succeeded.Status.CompletionTime) || st.MACAddress != "52:54:00:00:00:05" {
		t.Errorf("installation not recorded: %+v", st)
	}
	before := stargatev1.ServerStatus{State: stargatev1.ServerProvisioning, LastOperation: "op1"}
	if e, ok := serverTransitionEvent(before, st); !ok || e.reason != "Provisioned" || e.note != "Ready at 10.0.0.5 with profile p" {
		t.Errorf("transition event %+v %v", e, ok)
	}
	if _, ok := serverTransitionEvent(st, st); ok {
		t.Error("an event for no transition")
	}
}
