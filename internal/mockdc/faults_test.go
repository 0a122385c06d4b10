package mockdc

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// clock is a settable clock for the mock datacenter.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// repaveWith starts a repave with faults on a fresh datacenter whose steps take one second.
func repaveWith(t *testing.T, faults ...FaultBody) (*Server, *clock) {
	t.Helper()
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := NewServer(Config{StepDelay: time.Second, Now: c.Now})
	body, _ := json.Marshal(RepaveBody{InstanceID: "i1", Faults: faults})
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/v1/servers/ns/s1/repave", bytes.NewReader(body)))
	if rec.Code != http.StatusAccepted {
		t.Fatalf("repave: %d %s", rec.Code, rec.Body)
	}
	return s, c
}

func (s *Server) reportAt(c *clock, after time.Duration) ServerReport {
	c.now = c.now.Add(after)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.report("ns/s1")
}

func steps(rep ServerReport) map[string]string {
	m := map[string]string{}
	for _, st := range rep.Steps {
		m[st.Type] = st.State
	}
	return m
}

func TestImageServerErrorBelowTheRetriesOnlySlowsTheStep(t *testing.T) {
	s, c := repaveWith(t, FaultBody{Type: string(stargatev1.FaultImageServerError), At: stargatev1.ConditionImageReady, FailedTries: ImageTries - 1})
	if st := steps(s.reportAt(c, 1500*time.Millisecond))[stargatev1.ConditionImageReady]; st != "InProgress" {
		t.Errorf("ImageReady after 1.5 steps with %d failed tries: %s, want InProgress (retrying)", ImageTries-1, st)
	}
	if rep := s.reportAt(c, time.Hour); !rep.Done || rep.Failed {
		t.Errorf("repave did not succeed after the retries: %+v", rep)
	}
}

func TestImageServerErrorForEveryTryFailsImageReady(t *testing.T) {
	s, c := repaveWith(t, FaultBody{Type: string(stargatev1.FaultImageServerError), At: stargatev1.ConditionImageReady, FailedTries: ImageTries})
	rep := s.reportAt(c, time.Hour)
	if !rep.Failed || rep.Reason != "ImageFetchFailed" || steps(rep)[stargatev1.ConditionImageReady] != "Failed" {
		t.Errorf("want ImageReady Failed with ImageFetchFailed: %+v", rep)
	}
}

func TestHangStallsTheStepThenContinues(t *testing.T) {
	s, c := repaveWith(t, FaultBody{Type: string(stargatev1.FaultHang), At: stargatev1.ConditionVMRunning, Duration: time.Minute})
	rep := s.reportAt(c, 30*time.Second)
	if steps(rep)[stargatev1.ConditionVMRunning] != "InProgress" || rep.Done || rep.Failed {
		t.Errorf("want VMRunning stalled in progress: %+v", rep)
	}
	if rep := s.reportAt(c, time.Minute); !rep.Done || rep.Failed {
		t.Errorf("want the repave done once the hang ended: %+v", rep)
	}
}

func TestPowerLossStopsTheMachineAtItsStep(t *testing.T) {
	s, c := repaveWith(t, FaultBody{Type: string(stargatev1.FaultPowerLoss), At: stargatev1.ConditionNetworkReady})
	rep := s.reportAt(c, time.Hour)
	if !rep.Failed || rep.Running || rep.Reason != "PowerLost" || steps(rep)[stargatev1.ConditionNetworkReady] != "InProgress" ||
		steps(rep)[stargatev1.ConditionVMRunning] != "Pending" {
		t.Errorf("want the machine off and the repave failed at NetworkReady: %+v", rep)
	}
}

func TestDiskWriteErrorFailsTheGuest(t *testing.T) {
	s, c := repaveWith(t, FaultBody{Type: string(stargatev1.FaultDiskWriteError), At: stargatev1.ConditionGuestReady})
	rep := s.reportAt(c, time.Hour)
	if !rep.Failed || rep.Reason != "CloudInitFailed" || steps(rep)[stargatev1.ConditionGuestReady] != "Failed" {
		t.Errorf("want GuestReady Failed with CloudInitFailed: %+v", rep)
	}
}

func TestUnsupportedFaultsAreRefusedNotIgnored(t *testing.T) {
	if SupportsFault(stargatev1.FaultNetworkLoss, stargatev1.ConditionNetworkReady) {
		t.Error("the mock has no network to drop packets on, yet claims NetworkLoss")
	}
	if SupportsFault(stargatev1.FaultImageCorrupted, stargatev1.ConditionGuestReady) {
		t.Error("an image fault must strike at ImageReady only")
	}
	if !SupportsFault(stargatev1.FaultPowerLoss, stargatev1.ConditionGuestReady) {
		t.Error("PowerLoss strikes at any step")
	}
}

// The network and kernel faults the simulator's real guests show deterministically: a partition
// stalls its step for its duration, no route to the API server and a kernel crash fail the guest
// with the simulator's reasons.
func TestNetworkAndKernelFaultsAsTheSimulatorsGuestsShowThem(t *testing.T) {
	s, c := repaveWith(t, FaultBody{Type: string(stargatev1.FaultNetworkPartition), At: stargatev1.ConditionGuestReady, Duration: time.Minute})
	if rep := s.reportAt(c, 30*time.Second); rep.Done || rep.Failed {
		t.Errorf("want the guest stalled by the partition: %+v", rep)
	}
	if rep := s.reportAt(c, time.Hour); !rep.Done || rep.Failed {
		t.Errorf("want the repave done once the partition ended: %+v", rep)
	}
	for typ, reason := range map[stargatev1.FaultType]string{stargatev1.FaultNoRouteToAPIServer: "CloudInitFailed", stargatev1.FaultKernelCrash: "KernelPanic"} {
		s, c := repaveWith(t, FaultBody{Type: string(typ), At: stargatev1.ConditionGuestReady})
		if rep := s.reportAt(c, time.Hour); !rep.Failed || rep.Reason != reason || steps(rep)[stargatev1.ConditionGuestReady] != "Failed" {
			t.Errorf("%s: want GuestReady Failed with %s: %+v", typ, reason, rep)
		}
	}
}
