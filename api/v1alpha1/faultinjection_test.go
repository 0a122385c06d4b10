package v1alpha1_test

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

func validFault() stargatev1.Fault {
	return stargatev1.Fault{Name: "f", Type: stargatev1.FaultImageServerError, At: stargatev1.ConditionImageReady,
		Probability: ptr.To("0.25"), FailedTries: ptr.To[int32](3)}
}

// Every parameter of a fault is tenant input: admission bounds it, per type.
func TestFaultInjectionAdmission(t *testing.T) {
	ns := newNamespace(t)
	cases := []struct {
		name    string
		mutate  func(*stargatev1.Fault)
		wantMsg string // empty: accepted
	}{
		{"valid", func(*stargatev1.Fault) {}, ""},
		{"probability one", func(f *stargatev1.Fault) { f.Probability = ptr.To("1") }, ""},
		{"probability above one", func(f *stargatev1.Fault) { f.Probability = ptr.To("1.5") }, "spec.faults[0].probability"},
		{"probability with five decimals", func(f *stargatev1.Fault) { f.Probability = ptr.To("0.12345") }, "spec.faults[0].probability"},
		{"both probability and firstN", func(f *stargatev1.Fault) { f.FirstN = ptr.To[int32](2) }, "exactly one of probability and firstN"},
		{"neither probability nor firstN", func(f *stargatev1.Fault) { f.Probability = nil }, "exactly one of probability and firstN"},
		{"ImageServerError without failedTries", func(f *stargatev1.Fault) { f.FailedTries = nil }, "failedTries is required"},
		{"image fault at GuestReady", func(f *stargatev1.Fault) { f.At = stargatev1.ConditionGuestReady }, "image faults strike at ImageReady"},
		{"unknown type", func(f *stargatev1.Fault) { f.Type = "Meteor" }, "spec.faults[0].type"},
		{"hang of two hours", func(f *stargatev1.Fault) {
			f.Type, f.At, f.FailedTries, f.Duration = stargatev1.FaultHang, stargatev1.ConditionVMRunning, nil, &metav1.Duration{Duration: 2 * time.Hour}
		}, "duration must be more than 0s and at most 1h"},
		{"hang without duration", func(f *stargatev1.Fault) {
			f.Type, f.At, f.FailedTries = stargatev1.FaultHang, stargatev1.ConditionVMRunning, nil
		}, "duration is required"},
		{"loss of 101 percent", func(f *stargatev1.Fault) {
			f.Type, f.At, f.FailedTries, f.Percent = stargatev1.FaultNetworkLoss, stargatev1.ConditionNetworkReady, nil, ptr.To[int32](101)
		}, "spec.faults[0].percent"},
		{"kubelet fault at a step", func(f *stargatev1.Fault) {
			f.Type, f.At, f.FailedTries = stargatev1.FaultKubeletStops, stargatev1.ConditionGuestReady, nil
		}, "at must be Running"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := validFault()
			tc.mutate(&f)
			fi := &stargatev1.FaultInjection{ObjectMeta: metav1.ObjectMeta{GenerateName: "fi-", Namespace: ns},
				Spec: stargatev1.FaultInjectionSpec{Faults: []stargatev1.Fault{f}}}
			err := env.Client.Create(context.Background(), fi)
			switch {
			case tc.wantMsg == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.wantMsg == "":
				return
			case err == nil:
				t.Fatalf("accepted, want rejection mentioning %q", tc.wantMsg)
			case !apierrors.IsInvalid(err):
				t.Fatalf("error %v is not an Invalid error", err)
			case !strings.Contains(err.Error(), tc.wantMsg):
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
		})
	}
}
