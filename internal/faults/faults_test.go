package faults

import (
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// The draw is a function of its inputs: deciding again (a restart) decides the same, and the
// bounds hold exactly.
func TestDrawFaultIsStableAndBounded(t *testing.T) {
	struck := 0
	for i := range 1000 {
		op := types.UID(fmt.Sprintf("op-%d", i))
		a, b := Draw("fi", op, "f", 0.5), Draw("fi", op, "f", 0.5)
		if a != b {
			t.Fatalf("operation %s: the draw changed between two decisions", op)
		}
		if Draw("fi", op, "f", 0) || !Draw("fi", op, "f", 1) {
			t.Fatalf("operation %s: probability 0 struck or 1 did not", op)
		}
		if a {
			struck++
		}
	}
	if struck == 0 || struck == 1000 {
		t.Errorf("probability 0.5 struck %d of 1000 operations", struck)
	}
}

// The controller checks what admission checks: a CRD older than the controller, or a client that
// bypassed validation, must not get an unbounded fault through.
func TestValidateFaultRefusesWhatAdmissionRefuses(t *testing.T) {
	valid := stargatev1.Fault{Name: "f", Type: stargatev1.FaultHang, At: stargatev1.ConditionVMRunning, Probability: ptr.To("0.5"),
		Duration: &metav1.Duration{Duration: time.Minute}}
	if err := Validate(valid); err != nil {
		t.Fatalf("a valid fault was refused: %v", err)
	}
	cases := map[string]func(*stargatev1.Fault){
		"probability":     func(f *stargatev1.Fault) { f.Probability = ptr.To("2") },
		"both draws":      func(f *stargatev1.Fault) { f.FirstN = ptr.To[int32](1) },
		"long duration":   func(f *stargatev1.Fault) { f.Duration = &metav1.Duration{Duration: 2 * time.Hour} },
		"no duration":     func(f *stargatev1.Fault) { f.Duration = nil },
		"unknown step":    func(f *stargatev1.Fault) { f.At = "Elsewhere" },
		"percent":         func(f *stargatev1.Fault) { f.Percent = ptr.To[int32](101) },
		"firstN too high": func(f *stargatev1.Fault) { f.Probability, f.FirstN = nil, ptr.To[int32](1_000_000) },
		"BMC at a step":   func(f *stargatev1.Fault) { f.Type = stargatev1.FaultBMCUnavailable },
	}
	for name, mutate := range cases {
		f := valid
		mutate(&f)
		if err := Validate(f); err == nil || !strings.Contains(err.Error(), "fault f") {
			t.Errorf("%s: got %v, want a refusal naming the fault", name, err)
		}
	}
}

// A firstN decision made again for the same Operation (its status write was lost) is the same
// decision, and it counts once.
func TestFaultLedgerCountsAnOperationOnce(t *testing.T) {
	var l Ledger
	l.Take("fi/f", "op1")
	l.Take("fi/f", "op1")
	if !l.Has("fi/f", "op1") || l.Has("fi/f", "op2") {
		t.Error("the ledger does not know what it took")
	}
	if n := l.Count("fi/f", map[types.UID]struct{}{"op1": {}, "op3": {}}); n != 2 {
		t.Errorf("op1 in the ledger and the cache, op3 in the cache: counted %d, want 2", n)
	}
}
