package controller

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestMachineChecksSpreadOverTheBudget(t *testing.T) {
	between := func(t *testing.T, got, every time.Duration) {
		t.Helper()
		if got < every-every/10 || got > every+every/10 {
			t.Errorf("next check in %s, want %s ± 10%%", got, every)
		}
	}
	m := machineChecks{perSecond: 20}
	for i := range 100 {
		between(t, m.next(types.NamespacedName{Namespace: "ns", Name: fmt.Sprint(i)}, true), healthInterval)
	}
	// 10,000 machines at 20 checks/s: each every 500 s.
	for i := range 10000 {
		m.next(types.NamespacedName{Namespace: "ns", Name: fmt.Sprint(i)}, true)
	}
	between(t, m.next(types.NamespacedName{Namespace: "ns", Name: "0"}, true), 500*time.Second)
	// Machines that went (deleted, handed over, never installed) leave the budget.
	for i := range 9900 {
		if d := m.next(types.NamespacedName{Namespace: "ns", Name: fmt.Sprint(i)}, false); d != 0 {
			t.Fatalf("a Server without a machine is checked again in %s", d)
		}
	}
	between(t, m.next(types.NamespacedName{Namespace: "ns", Name: "9999"}, true), healthInterval)

	unbudgeted := machineChecks{}
	for i := range 10000 {
		unbudgeted.next(types.NamespacedName{Namespace: "ns", Name: fmt.Sprint(i)}, true)
	}
	between(t, unbudgeted.next(types.NamespacedName{Namespace: "ns", Name: "1"}, true), healthInterval)
}
