package controller

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

func TestStepCondition(t *testing.T) {
	for _, tc := range []struct {
		step   Step
		status metav1.ConditionStatus
		reason string
	}{
		{Step{Type: "ImageReady", State: StepDone, Reason: "Cached"}, metav1.ConditionTrue, "Cached"},
		{Step{Type: "ImageReady", State: StepInProgress}, metav1.ConditionFalse, "InProgress"},
		{Step{Type: "ImageReady", State: StepFailed, Reason: "ChecksumMismatch"}, metav1.ConditionFalse, "ChecksumMismatch"},
		{Step{Type: "ImageReady", State: StepPending}, metav1.ConditionUnknown, "Pending"},
		{Step{Type: "ImageReady"}, metav1.ConditionUnknown, "Unknown"},
	} {
		c := stepCondition(tc.step)
		if c.Type != tc.step.Type || c.Status != tc.status || c.Reason != tc.reason {
			t.Errorf("stepCondition(%+v) = %s/%s/%s, want %s/%s", tc.step, c.Type, c.Status, c.Reason, tc.status, tc.reason)
		}
	}
	long := stepCondition(Step{Type: "GuestReady", State: StepFailed, Message: strings.Repeat("x", 40000)})
	if len(long.Message) != maxConditionMessage || !strings.HasSuffix(long.Message, "...") {
		t.Errorf("a long message is kept at %d bytes, want %d ending in ...", len(long.Message), maxConditionMessage)
	}
}

func TestNodeReadyCondition(t *testing.T) {
	ready := &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	notReady := &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse,
		Message: "container runtime network not ready"}}}}
	for _, tc := range []struct {
		name   string
		node   *corev1.Node
		status metav1.ConditionStatus
		msg    string
	}{
		{"no node", nil, metav1.ConditionFalse, "Waiting for Node w1 to join the cluster"},
		{"no Ready condition", &corev1.Node{}, metav1.ConditionFalse, "Node w1 joined; waiting for its kubelet to report Ready"},
		{"not ready", notReady, metav1.ConditionFalse, "Node w1 joined but is not Ready yet: container runtime network not ready"},
		{"ready", ready, metav1.ConditionTrue, "Node w1 is Ready"},
	} {
		c := nodeReadyCondition("w1", tc.node)
		if c.Status != tc.status || c.Message != tc.msg || c.Type != stargatev1.ConditionNodeReady {
			t.Errorf("%s: %s %q, want %s %q", tc.name, c.Status, c.Message, tc.status, tc.msg)
		}
	}
}

func TestVerdictConditions(t *testing.T) {
	if c := scheduledCondition(false, "ServerBusy", "waiting"); c.Status != metav1.ConditionFalse || c.Reason != "ServerBusy" || c.Type != stargatev1.ConditionScheduled {
		t.Errorf("scheduled false: %+v", c)
	}
	if c := scheduledCondition(true, "Started", "holds s1"); c.Status != metav1.ConditionTrue {
		t.Errorf("scheduled true: %+v", c)
	}
	if c := succeededCondition(false, "Timeout", "timed out"); c.Status != metav1.ConditionFalse || c.Reason != "Timeout" || c.Type != stargatev1.ConditionSucceeded {
		t.Errorf("succeeded false: %+v", c)
	}
	c := validCondition(errors.New("user-data: not valid YAML"))
	if c.Status != metav1.ConditionFalse || c.Reason != "InvalidUserData" || c.Message != "user-data: not valid YAML" {
		t.Errorf("valid with error: %+v", c)
	}
	if c := validCondition(nil); c.Status != metav1.ConditionTrue || c.Reason != "Valid" {
		t.Errorf("valid: %+v", c)
	}
	if c := provisionedCondition(false, "MachineStopped", strings.Repeat("y", 2000)); len(c.Message) != 1024 || c.Status != metav1.ConditionFalse {
		t.Errorf("provisioned message not bounded: %d", len(c.Message))
	}
}

func TestStuckAtAndProgressMessage(t *testing.T) {
	conds := []metav1.Condition{
		{Type: stargatev1.ConditionScheduled, Status: metav1.ConditionTrue},
		{Type: stargatev1.ConditionImageReady, Status: metav1.ConditionTrue},
		{Type: stargatev1.ConditionCloudInitReady, Status: metav1.ConditionFalse, Message: "writing seed"},
	}
	if got, want := stuckAt(conds), "while at step CloudInitReady (writing seed)"; got != want {
		t.Errorf("stuckAt = %q, want %q", got, want)
	}
	if got := stuckAt(conds[:2]); got != "" {
		t.Errorf("stuckAt with every step done = %q, want empty", got)
	}
	steps := []Step{{Type: "ImageReady", State: StepDone}, {Type: "VMRunning", State: StepInProgress, Message: "QEMU starting"}, {Type: "GuestReady"}}
	if got := progressMessage(steps); got != "QEMU starting" {
		t.Errorf("progressMessage = %q", got)
	}
	if got := progressMessage([]Step{{Type: "GuestReady", State: StepPending}}); got != "Waiting for GuestReady" {
		t.Errorf("progressMessage without a message = %q", got)
	}
	if got := progressMessage([]Step{{Type: "GuestReady", State: StepDone}}); got != "Finishing" {
		t.Errorf("progressMessage when done = %q", got)
	}
}

func opAt(name string, created int, phase stargatev1.OperationPhase, started int) stargatev1.Operation {
	base := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	op := stargatev1.Operation{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(base.Add(time.Duration(created) * time.Second))},
		Spec:       stargatev1.OperationSpec{Operation: stargatev1.OperationRepave, ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p"}},
		Status:     stargatev1.OperationStatus{Phase: phase},
	}
	op.UID = types.UID("uid-" + name)
	if started > 0 {
		t := metav1.NewTime(base.Add(time.Duration(started) * time.Second))
		op.Status.StartTime = &t
		if phase.IsFinal() {
			done := metav1.NewTime(t.Add(time.Second))
			op.Status.CompletionTime = &done
		}
	}
	return op
}

func TestNextInLine(t *testing.T) {
	deleting := opAt("a-deleting", 0, stargatev1.OperationPending, 0)
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	for _, tc := range []struct {
		name string
		ops  []stargatev1.Operation
		want string
	}{
		{"none", nil, ""},
		{"only finished", []stargatev1.Operation{opAt("a", 0, stargatev1.OperationSucceeded, 1)}, ""},
		{"oldest first", []stargatev1.Operation{opAt("b", 2, stargatev1.OperationPending, 0), opAt("a", 1, stargatev1.OperationPending, 0)}, "a"},
		{"same second: by name", []stargatev1.Operation{opAt("op-b", 1, stargatev1.OperationPending, 0), opAt("op-a", 1, stargatev1.OperationPending, 0)}, "op-a"},
		{"running holds even if newer", []stargatev1.Operation{opAt("a", 1, stargatev1.OperationPending, 0), opAt("z", 5, stargatev1.OperationRunning, 6)}, "z"},
		{"deleted never holds", []stargatev1.Operation{deleting, opAt("b", 3, "", 0)}, "b"},
	} {
		got := nextInLine(tc.ops)
		name := ""
		if got != nil {
			name = got.Name
		}
		if name != tc.want {
			t.Errorf("%s: nextInLine = %q, want %q", tc.name, name, tc.want)
		}
	}
}

func TestCapacity(t *testing.T) {
	var gauge int
	c := newCapacity(2, 6<<30, func(n int) { gauge = n })
	key := func(n string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: n} }
	if err := c.warmUp(func() (map[types.NamespacedName]int64, error) {
		return map[types.NamespacedName]int64{key("running"): 4 << 30}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if ok, why := c.admit(key("big"), 4<<30); ok || !strings.Contains(why, "use 4096 MiB of 6144 MiB memory, this one needs 4096 MiB") {
		t.Errorf("admit over the memory bound: %v %q", ok, why)
	}
	if ok, _ := c.admit(key("small"), 1<<30); !ok {
		t.Error("admit within bounds refused")
	}
	if ok, _ := c.admit(key("small"), 1<<30); !ok {
		t.Error("admitting again what is held refused")
	}
	if ok, why := c.admit(key("third"), 1<<20); ok || !strings.Contains(why, "2 of 2 parallel repaves running") {
		t.Errorf("admit over the parallel bound: %v %q", ok, why)
	}
	if err := c.warmUp(func() (map[types.NamespacedName]int64, error) { t.Fatal("warmed up twice"); return nil, nil }); err != nil {
		t.Fatal(err)
	}
	c.release(key("running"))
	c.release(key("running"))
	if gauge != 1 {
		t.Errorf("gauge %d after releases, want 1", gauge)
	}
}
