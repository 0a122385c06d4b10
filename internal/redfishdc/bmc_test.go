package redfishdc_test

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/redfish"
)

// A BMC that answers 503 for a while: the step says so in its condition and goes on once the BMC
// recovers. The BMC stays sick until the test saw the reason in status, so nothing depends on
// timing.
func TestBMCErrorsAreRetriedWithTheReasonInStatus(t *testing.T) {
	var healthy atomic.Bool
	d := newDC(t, dcOptions{bmcHandler: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && !healthy.Load() {
				http.Error(w, "BMC busy", http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	d.addSystem("node-1")
	d.basics()
	d.create(d.server("worker-1", "node-1", d.bmc.URL), repave("r1", "worker-1", 0))
	d.waitFor("r1", "the BMC's 503 in MediaInserted", func(op *stargatev1.Operation) bool {
		c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionMediaInserted)
		return c != nil && c.Reason == "BMCError" && strings.Contains(c.Message, "503")
	})
	if d.system("node-1").Media.Inserted {
		t.Error("media inserted while the BMC answered 503")
	}
	healthy.Store(true)
	d.waitForCondition("r1", stargatev1.ConditionMediaInserted)
	if !d.system("node-1").Media.Inserted {
		t.Error("MediaInserted is True but the BMC holds no media")
	}
}

// A BMC that accepts connections and never answers: the repave fails at its spec.timeout with the
// last error in its message.
func TestBMCThatNeverAnswersFailsAtTheTimeout(t *testing.T) {
	d := newDC(t, dcOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never answered
		}
	}()
	d.basics()
	d.create(d.server("worker-1", "", "http://"+ln.Addr().String()), repave("r1", "worker-1", 10*time.Second))
	op := d.waitForPhase("r1", stargatev1.OperationFailed)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded)
	if c == nil || c.Reason != "Timeout" || !strings.Contains(op.Status.Message, "MediaInserted") || !strings.Contains(op.Status.Message, "no answer within") {
		t.Errorf("Succeeded %+v, message %q: want Timeout at MediaInserted with the BMC's last error", c, op.Status.Message)
	}
	if !strings.Contains(op.Status.Message, "not touched") {
		t.Errorf("message %q: the repave never reached the BMC, so it touched nothing", op.Status.Message)
	}
}

// spec.bmc.address is tenant input: a BMC outside the operator's networks is never connected to,
// whether written as an address or as a name that resolves to one.
func TestBMCOutsideTheAllowedNetworksIsRefused(t *testing.T) {
	var requests atomic.Int32
	d := newDC(t, dcOptions{bmcNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		bmcHandler: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1); next.ServeHTTP(w, r) })
		}})
	d.addSystem("node-1")
	d.basics()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(d.bmc.URL, "http://"))
	d.create(d.server("by-address", "node-1", d.bmc.URL), repave("r1", "by-address", 0))
	d.create(d.server("by-name", "node-1", "http://localhost:"+port), repave("r2", "by-name", 0))
	for _, name := range []string{"r1", "r2"} {
		op := d.waitForPhase(name, stargatev1.OperationFailed)
		c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded)
		if c == nil || c.Reason != "BMCNotAllowed" || !strings.Contains(op.Status.Message, "--bmc-networks") {
			t.Errorf("%s: %+v, want BMCNotAllowed naming --bmc-networks", name, c)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("the BMC outside the allowed networks got %d requests", n)
	}
}

// Two Servers naming one BMC system: the later one is refused, and its failure does not touch the
// machine (powering "its" server off would power off the other tenant's).
func TestTwoServersOnOneBMCSystemAreRefused(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.addSystem("node-1")
	d.basics()
	// Created first; in the same second, "first" is still older by its name (the tie-break).
	d.create(d.server("first", "node-1", d.bmc.URL))
	d.create(d.server("second", "node-1", d.bmc.URL+"/redfish/v1"), repave("r1", "second", 0))
	op := d.waitForPhase("r1", stargatev1.OperationFailed)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded)
	if c == nil || c.Reason != "BMCSystemTaken" || !strings.Contains(op.Status.Message, d.ns+"/first") {
		t.Errorf("%+v: want BMCSystemTaken naming the first Server", c)
	}
	for _, call := range d.backend.Calls() {
		t.Errorf("the refused Server's repave changed the machine: %+v", call)
	}
	if d.system("node-1").PowerState != redfish.PowerOn {
		t.Error("the machine was powered off")
	}
}

// powerOff, powerOn and reboot are ComputerSystem.Reset; the power the Server shows is the BMC's.
func TestPowerOperationsResetTheSystem(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.addSystem("node-1")
	d.basics()
	d.create(d.server("worker-1", "node-1", d.bmc.URL))
	d.waitForServer("worker-1", "On", func(s *stargatev1.Server) bool { return s.Status.PowerState == stargatev1.PowerOn })

	d.create(powerOp("off", "worker-1", stargatev1.OperationPowerOff))
	d.waitForPhase("off", stargatev1.OperationSucceeded)
	if d.system("node-1").PowerState != redfish.PowerOff {
		t.Error("powerOff succeeded but the BMC says the system is on")
	}
	d.waitForServer("worker-1", "Off", func(s *stargatev1.Server) bool { return s.Status.PowerState == stargatev1.PowerOff })

	d.create(powerOp("on", "worker-1", stargatev1.OperationPowerOn))
	d.waitForPhase("on", stargatev1.OperationSucceeded)
	if d.system("node-1").PowerState != redfish.PowerOn {
		t.Error("powerOn succeeded but the BMC says the system is off")
	}

	d.create(powerOp("reboot", "worker-1", stargatev1.OperationReboot))
	d.waitForPhase("reboot", stargatev1.OperationSucceeded)
	var resets []string
	for _, c := range d.backend.Calls() {
		if c.Op == "Reset" {
			resets = append(resets, c.Arg)
		}
	}
	if strings.Join(resets, ",") != "GracefulShutdown,On,GracefulShutdown,On" {
		t.Errorf("resets %v: want powerOff's GracefulShutdown, powerOn's On, and both for the reboot", resets)
	}
	if d.system("node-1").PowerState != redfish.PowerOn {
		t.Error("after the reboot the system is off")
	}
}

// Hostile or mistaken objects a Server names fail the repave before the BMC is touched: BMC
// credentials from a Secret that is not of type basic-auth (it may hold anything), and a network
// the installer could not use.
func TestServersObjectsAreCheckedBeforeTheBMCIsTouched(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.addSystem("node-1")
	d.addSystem("node-2")
	d.basics()
	d.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "opaque"},
		Data: map[string][]byte{"username": []byte(bmcUser), "password": []byte(bmcPassword)}})
	opaque := d.server("opaque-creds", "node-1", d.bmc.URL)
	opaque.Spec.BMC.CredentialsSecretRef.Name = "opaque"
	offSubnet := d.server("off-subnet", "node-2", d.bmc.URL)
	offSubnet.Spec.Network.Gateway = "10.9.9.1" // not on 10.0.1.0/24: the API cannot check it
	d.create(opaque, offSubnet, repave("r1", "opaque-creds", 0), repave("r2", "off-subnet", 0))
	for name, want := range map[string]string{"r1": "BMCCredentials", "r2": "InvalidInstallSpec"} {
		op := d.waitForPhase(name, stargatev1.OperationFailed)
		if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionSucceeded); c == nil || c.Reason != want {
			t.Errorf("%s: %+v, want reason %s", name, c, want)
		}
		if !strings.Contains(op.Status.Message, "the server was not touched and runs as before") {
			t.Errorf("%s: message %q does not say the server was left alone", name, op.Status.Message)
		}
	}
	for _, call := range d.backend.Calls() {
		t.Errorf("the BMC was changed: %+v", call)
	}
}

// One system named two ways (by its Id, and as the BMC's only system): the specs differ, the
// system the BMC resolves is the same, and the later Server is refused without touching it.
func TestOneSystemUnderTwoNamesIsRefused(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.addSystem("node-1")
	d.basics()
	d.create(d.server("first", "", d.bmc.URL))
	d.waitForServer("first", "On (its BMC read)", func(s *stargatev1.Server) bool { return s.Status.PowerState == stargatev1.PowerOn })
	d.create(d.server("second", "node-1", d.bmc.URL), repave("r1", "second", 0))
	op := d.waitForPhase("r1", stargatev1.OperationFailed)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionMediaInserted)
	if c == nil || c.Reason != "BMCSystemTaken" || !strings.Contains(c.Message, d.ns+"/first") {
		t.Errorf("MediaInserted %+v: want BMCSystemTaken naming the first Server", c)
	}
	for _, call := range d.backend.Calls() {
		t.Errorf("the refused Server's repave changed the machine: %+v", call)
	}
}
