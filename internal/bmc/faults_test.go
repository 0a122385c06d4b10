package bmc_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/bmc"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/redfishclient"
)

const sushyPython = "/usr/bin/python3" // Debian's, which has python3-sushy

// bmcFault is a FaultInjection of one BMC fault that strikes the first Server it can.
func (w *world) bmcFault(name string, t stargatev1.FaultType, d time.Duration) *stargatev1.FaultInjection {
	w.t.Helper()
	f := stargatev1.Fault{Name: "f", Type: t, At: stargatev1.FaultAtRunning, FirstN: ptr.To[int32](1)}
	if d > 0 {
		f.Duration = &metav1.Duration{Duration: d}
	}
	fi := &stargatev1.FaultInjection{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: stargatev1.FaultInjectionSpec{Selector: metav1.LabelSelector{MatchLabels: map[string]string{"chaos": "yes"}},
			Faults: []stargatev1.Fault{f}}}
	w.create(fi)
	w.waitCached(fi)
	return fi
}

// waitCached waits until the host reported on the FaultInjection (its cache has it).
func (w *world) waitCached(fi *stargatev1.FaultInjection) {
	w.t.Helper()
	eventually(w.t, 10*time.Second, func() (bool, string) {
		got := &stargatev1.FaultInjection{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(fi), got); err != nil {
			return false, err.Error()
		}
		return len(got.Status.Hosts) > 0, "no host entry yet"
	})
}

// chaosServer is an installed Server the FaultInjections of bmcFault select.
func (w *world) chaosServer(name string) {
	w.t.Helper()
	w.installedServer(name, "admin", "pw")
	s := w.server(name)
	patch := client.MergeFrom(s.DeepCopy())
	s.Labels = map[string]string{"chaos": "yes"}
	if err := env.Client.Patch(context.Background(), s, patch); err != nil {
		w.t.Fatal(err)
	}
	w.waitServer(name, func(st stargatev1.ServerStatus) bool { return st.BMC != nil && st.PowerState == stargatev1.PowerOn })
}

// system is our own Redfish client on the Server's BMC, without retries.
func (w *world) system(name string) *redfishclient.System {
	w.t.Helper()
	c, err := redfishclient.New(redfishclient.Config{Endpoint: w.bmcURL, Username: "admin", Password: "pw", Attempts: 1,
		RequestTimeout: 5 * time.Second})
	if err != nil {
		w.t.Fatal(err)
	}
	sys, err := c.System(context.Background(), w.ns+"."+name)
	if err != nil {
		w.t.Fatalf("system %s: %v", name, err)
	}
	return sys
}

// injected checks what makes the injection visible: the Event on the Server naming the fault and
// the FaultInjection, the metric, and the FaultInjection's status.
func (w *world) injected(fi *stargatev1.FaultInjection, server string, t stargatev1.FaultType) {
	w.t.Helper()
	eventually(w.t, 10*time.Second, func() (bool, string) {
		for _, e := range w.events(server) {
			if e.Reason == "FaultInjected" && strings.Contains(e.Note, "FaultInjection "+fi.Name+" injects fault f ("+string(t)) {
				return true, ""
			}
		}
		return false, "no FaultInjected event on " + server
	})
	if n := w.metric(t); n != 1 {
		w.t.Errorf("stargate_faults_injected_total{type=%q} = %v, want 1", t, n)
	}
	eventually(w.t, 10*time.Second, func() (bool, string) {
		got := &stargatev1.FaultInjection{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(fi), got); err != nil {
			return false, err.Error()
		}
		for _, h := range got.Status.Hosts {
			if h.Injected == 1 && len(h.Faults) == 1 && h.Faults[0].Injected == 1 && h.Faults[0].LastServer == server {
				return true, ""
			}
		}
		return false, "status " + toJSON(got.Status)
	})
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func (w *world) metric(t stargatev1.FaultType) float64 {
	w.t.Helper()
	families, err := w.metrics.Gather()
	if err != nil {
		w.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "stargate_faults_injected_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" && l.GetValue() == string(t) {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// sushy runs testdata/sushy_faults.py against the Server's BMC.
func (w *world) sushy(server, mode string, out any) {
	w.t.Helper()
	if _, err := exec.Command(sushyPython, "-c", "import sushy").CombinedOutput(); err != nil {
		testreq.Need(w.t, "the python3-sushy package", "sudo apt-get install -y python3-sushy")
	}
	cfg, _ := json.Marshal(map[string]any{"url": w.bmcURL + "/redfish/v1", "user": "admin", "password": "pw",
		"system": "/redfish/v1/Systems/" + w.ns + "." + server, "mode": mode, "image": "http://images.example/boot.iso"})
	cmd := exec.Command(sushyPython, filepath.Join(testenv.RepoRoot(), "internal", "bmc", "testdata", "sushy_faults.py"), string(cfg))
	cmd.Env = append(os.Environ(), "REQUESTS_CA_BUNDLE=", "CURL_CA_BUNDLE=")
	raw, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			w.t.Fatalf("sushy: %v\n%s\n%s", err, raw, ee.Stderr)
		}
		w.t.Fatal(err)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		w.t.Fatalf("sushy output %s: %v", raw, err)
	}
}

type sushyFailure struct {
	Class  string `json:"class"`
	Status int    `json:"status"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

// BMCUnavailable: sushy's Reset meets a 503 with a Redfish error body; its GET, which sushy
// retries as Ironic relies on, rides through the window; after it the BMC serves and the reset
// was never made.
func TestBMCFaultUnavailableWithSushy(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.chaosServer("s1")
	fi := w.bmcFault("outage", stargatev1.FaultBMCUnavailable, 4*time.Second)
	var got struct {
		Reset           sushyFailure `json:"reset"`
		GetAfterSeconds float64      `json:"get_after_seconds"`
		Power           string       `json:"power"`
	}
	w.sushy("s1", "unavailable", &got)
	if got.Reset.Class != "ServerSideError" || got.Reset.Status != 503 || got.Reset.Code != "Base.1.16.ServiceTemporarilyUnavailable" ||
		!strings.Contains(got.Reset.Detail, "Retry in 4 seconds") {
		t.Errorf("sushy's reset during the outage: %+v", got.Reset)
	}
	if got.GetAfterSeconds < 2 || !strings.EqualFold(got.Power, "on") {
		t.Errorf("sushy's GET came back after %.1fs with power %q; want it retried through the outage and On", got.GetAfterSeconds, got.Power)
	}
	if !w.inspect("s1").Running {
		t.Error("the reset refused with 503 was made")
	}
	w.injected(fi, "s1", stargatev1.FaultBMCUnavailable)
}

// BMCInsertMediaFails: sushy's InsertMedia fails with a 500 whose message says why; the next
// one succeeds.
func TestBMCFaultInsertMediaFailsWithSushy(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.chaosServer("s1")
	fi := w.bmcFault("media", stargatev1.FaultBMCInsertMediaFails, 0)
	var got struct {
		First  sushyFailure `json:"first"`
		Second struct {
			Image    string `json:"image"`
			Inserted bool   `json:"inserted"`
		} `json:"second"`
	}
	w.sushy("s1", "insert_media", &got)
	if got.First.Class != "ServerSideError" || got.First.Status != 500 ||
		!strings.Contains(got.First.Detail, "failed to mount http://images.example/boot.iso (fault f of FaultInjection media)") {
		t.Errorf("sushy's first InsertMedia: %+v", got.First)
	}
	if got.Second.Image != "http://images.example/boot.iso" || !got.Second.Inserted {
		t.Errorf("sushy's second InsertMedia: %+v", got.Second)
	}
	w.injected(fi, "s1", stargatev1.FaultBMCInsertMediaFails)
}

// BMCConnectionRefused: the BMC drops the client's connection without an answer until the
// FaultInjection is deleted (its duration is an hour).
func TestBMCFaultConnectionRefused(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.chaosServer("s1")
	sys := w.system("s1")
	fi := w.bmcFault("refuse", stargatev1.FaultBMCConnectionRefused, time.Hour)
	ctx := context.Background()
	for range 2 {
		_, err := sys.PowerState(ctx)
		var httpErr *redfishclient.HTTPError
		if err == nil || errors.As(err, &httpErr) {
			t.Fatalf("a refusing BMC answered: %v", err)
		}
	}
	w.injected(fi, "s1", stargatev1.FaultBMCConnectionRefused)
	if err := env.Client.Delete(ctx, fi); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		p, err := sys.PowerState(ctx)
		return err == nil && p == redfishclient.PowerOn, "after the deletion: " + string(p) + " " + errString(err)
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// BMCPowerDelay: the ForceOff is accepted at once and the machine goes off only after the delay.
func TestBMCFaultPowerDelay(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.chaosServer("s1")
	sys := w.system("s1")
	fi := w.bmcFault("slow", stargatev1.FaultBMCPowerDelay, 2*time.Second)
	start := time.Now()
	if err := sys.Reset(context.Background(), redfishclient.ResetForceOff); err != nil {
		t.Fatalf("ForceOff: %v", err)
	}
	if p, err := sys.PowerState(context.Background()); err != nil || p != redfishclient.PowerOn {
		t.Errorf("right after the ForceOff: %s %v, want still On", p, err)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		p, err := sys.PowerState(context.Background())
		return err == nil && p == redfishclient.PowerOff, string(p)
	})
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("the power went off after %s, before the delay", d)
	}
	w.injected(fi, "s1", stargatev1.FaultBMCPowerDelay)
	// Struck once: the next power change is at once.
	if err := sys.Reset(context.Background(), redfishclient.ResetOn); err != nil {
		t.Fatal(err)
	}
	if !w.inspect("s1").Running {
		t.Error("the second power change was delayed too")
	}
}

// BMCStalePowerState: after a ForceOff the BMC reports On for the duration, then Off.
func TestBMCFaultStalePowerState(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.chaosServer("s1")
	sys := w.system("s1")
	fi := w.bmcFault("stale", stargatev1.FaultBMCStalePowerState, 2*time.Second)
	if err := sys.Reset(context.Background(), redfishclient.ResetForceOff); err != nil {
		t.Fatal(err)
	}
	if w.inspect("s1").Running {
		t.Fatal("the ForceOff was not made")
	}
	if p, err := sys.PowerState(context.Background()); err != nil || p != redfishclient.PowerOn {
		t.Errorf("during the stale window: %s %v, want On (stale)", p, err)
	}
	w.injected(fi, "s1", stargatev1.FaultBMCStalePowerState)
	eventually(t, 10*time.Second, func() (bool, string) {
		p, err := sys.PowerState(context.Background())
		return err == nil && p == redfishclient.PowerOff, string(p)
	})
}

// BMCBootOverrideIgnored: the one-time boot from CD is accepted and shown, yet the machine
// boots its disk; the override shows as used up after the boot. The next one is honoured.
func TestBMCFaultBootOverrideIgnored(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.chaosServer("s1")
	sys := w.system("s1")
	fi := w.bmcFault("noboot", stargatev1.FaultBMCBootOverrideIgnored, 0)
	ctx := context.Background()
	cdOnce := redfishclient.BootOverride{Target: "Cd", Enabled: "Once"}
	bootCD := func() string {
		t.Helper()
		if err := sys.SetBootOverride(ctx, cdOnce); err != nil {
			t.Fatalf("boot override: %v", err)
		}
		if st, err := sys.Status(ctx); err != nil || st.Boot.Target != "Cd" || st.Boot.Enabled != "Once" {
			t.Errorf("the BMC shows %+v %v, want the override it accepted", st.Boot, err)
		}
		if err := sys.Reset(ctx, redfishclient.ResetForceRestart); err != nil {
			t.Fatal(err)
		}
		return w.report("s1").BootedFrom
	}
	if from := bootCD(); from == "Cd" {
		t.Errorf("the machine booted from %q despite the fault", from)
	}
	if st, err := sys.Status(ctx); err != nil || st.Boot.Enabled == "Once" {
		t.Errorf("after the boot the ignored override still shows: %+v %v", st.Boot, err)
	}
	w.injected(fi, "s1", stargatev1.FaultBMCBootOverrideIgnored)
	if from := bootCD(); from != "Cd" {
		t.Errorf("the second override was ignored too: booted from %q", from)
	}
}

// Safety: a FaultInjection strikes only Servers of its own namespace that it selects.
func TestBMCFaultsStayInTheirNamespace(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.chaosServer("s1")
	w.installedServer("unlabelled", "admin", "pw")
	other := &world{t: t, ns: w.ns + "-other", dcURL: w.dcURL, bmcURL: w.bmcURL, metrics: w.metrics}
	if err := env.Client.Create(context.Background(), testenv.Namespace(other.ns)); err != nil {
		t.Fatal(err)
	}
	other.chaosServer("s1")
	sys := w.system("s1")
	fi := w.bmcFault("outage", stargatev1.FaultBMCUnavailable, time.Hour)
	ctx := context.Background()
	if _, err := sys.PowerState(ctx); err == nil {
		t.Error("the selected Server's BMC answered during its outage")
	}
	if p, err := w.system("unlabelled").PowerState(ctx); err != nil || p != redfishclient.PowerOn {
		t.Errorf("a Server the selector does not select: %s %v", p, err)
	}
	if p, err := other.system("s1").PowerState(ctx); err != nil || p != redfishclient.PowerOn {
		t.Errorf("a Server of another namespace with the selected label: %s %v", p, err)
	}
	for _, e := range other.events("s1") {
		if e.Reason == "FaultInjected" {
			t.Errorf("the other namespace's Server has a FaultInjected event: %s", e.Note)
		}
	}
	w.injected(fi, "s1", stargatev1.FaultBMCUnavailable)
}

// Safety: a host with --fault-injection=false injects nothing into the BMCs it serves, and the
// FaultInjection's status says so.
func TestBMCFaultsObeyTheHostSwitch(t *testing.T) {
	ctx := context.Background()
	off := newWorldOpts(t, 10*time.Millisecond, nil, func(*bmc.Backend) {}, func(o *controller.Options) { o.DisableFaultInjection = true })
	off.chaosServer("s1")
	offFI := off.bmcFault("outage", stargatev1.FaultBMCUnavailable, time.Hour)
	if p, err := off.system("s1").PowerState(ctx); err != nil || p != redfishclient.PowerOn {
		t.Errorf("a host with --fault-injection=false: %s %v", p, err)
	}
	got := &stargatev1.FaultInjection{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(offFI), got); err != nil {
		t.Fatal(err)
	}
	if h := got.Status.Hosts; len(h) != 1 || h[0].Injected != 0 || h[0].Conditions[0].Reason != controller.ReasonFaultInjectionDisabled {
		t.Errorf("the disabled host's status: %s", toJSON(got.Status))
	}
	if n := off.metric(stargatev1.FaultBMCUnavailable); n != 0 {
		t.Errorf("the disabled host counted %v injections", n)
	}
}
