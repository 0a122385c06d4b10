package bmc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/event"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/bmc"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/redfish"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(logr.Discard())
	os.Exit(testenv.Main(m, &env))
}

// world is one API server namespace, a mock datacenter, the Stargate controller and a Redfish
// service over the BMC backend, as the simulator wires them.
type world struct {
	t      testing.TB
	ns     string
	dc     *mockdc.Server
	dcURL  string
	bmcURL string
	// metrics is the registry of the controller's and the BMC's metrics.
	metrics *prometheus.Registry
}

func newWorld(t testing.TB, stepDelay time.Duration) *world {
	t.Helper()
	return newWorldWith(t, stepDelay, nil, func(*bmc.Backend) {})
}

// newWorldWith is newWorld with the mock datacenter's provider wrapped (nil: as it is) and the
// backend adjusted before it serves.
func newWorldWith(t testing.TB, stepDelay time.Duration, wrap func(*mockdc.Provider) controller.Provider, adjust func(*bmc.Backend)) *world {
	t.Helper()
	return newWorldOpts(t, stepDelay, wrap, adjust, func(*controller.Options) {})
}

// newWorldOpts is newWorldWith with the controller's options tuned first (the backend follows them).
func newWorldOpts(t testing.TB, stepDelay time.Duration, wrap func(*mockdc.Provider) controller.Provider, adjust func(*bmc.Backend),
	tune func(*controller.Options)) *world {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ns := fmt.Sprintf("bmc-%d", time.Now().UnixNano()%1_000_000)
	if err := env.Client.Create(ctx, testenv.Namespace(ns)); err != nil {
		t.Fatal(err)
	}
	dc := mockdc.NewServer(mockdc.Config{StepDelay: stepDelay})
	dcSrv := httptest.NewServer(dc)
	t.Cleanup(dcSrv.Close)
	var provider controller.Provider = &mockdc.Provider{BaseURL: dcSrv.URL}
	if wrap != nil {
		provider = wrap(provider.(*mockdc.Provider))
	}

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0", Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	wake := make(chan event.GenericEvent, 16)
	redfishSrv := httptest.NewUnstartedServer(nil)
	redfishSrv.Start()
	t.Cleanup(redfishSrv.Close)
	opts := controller.Options{HostID: "host-" + ns, PollInterval: 50 * time.Millisecond, Locks: &controller.ServerLocks{}, Wake: wake,
		RedfishURL: redfishSrv.URL,
		// Servers of other tests' namespaces are left alone.
		ServerSelector: nil}
	tune(&opts)
	reg := prometheus.NewRegistry()
	metrics := controller.NewMetrics(reg)
	backend := bmc.NewBackend(mgr, provider, opts, wake, metrics)
	backend.RestartGrace = 2 * time.Second
	adjust(backend)
	opts.RunningFaults = backend.Faults
	redfishSrv.Config.Handler = &redfish.Service{Backend: backend}
	if err := controller.Setup(mgr, provider, opts, metrics); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return &world{t: t, ns: ns, dc: dc, dcURL: dcSrv.URL, bmcURL: redfishSrv.URL, metrics: reg}
}

func (w *world) create(obj client.Object) {
	w.t.Helper()
	obj.SetNamespace(w.ns)
	if err := env.Client.Create(context.Background(), obj); err != nil {
		w.t.Fatalf("creating %s: %v", obj.GetName(), err)
	}
}

func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
	}
	t.Fatalf("not within %s: %s", timeout, last)
}

func (w *world) server(name string) *stargatev1.Server {
	s := &stargatev1.Server{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: w.ns, Name: name}, s); err != nil {
		w.t.Fatal(err)
	}
	return s
}

func (w *world) waitServer(name string, ok func(stargatev1.ServerStatus) bool) *stargatev1.Server {
	w.t.Helper()
	var s *stargatev1.Server
	eventually(w.t, 15*time.Second, func() (bool, string) {
		s = w.server(name)
		return ok(s.Status), fmt.Sprintf("%+v", s.Status)
	})
	return s
}

func (w *world) op(name string) *stargatev1.Operation {
	op := &stargatev1.Operation{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: w.ns, Name: name}, op); err != nil {
		w.t.Fatal(err)
	}
	return op
}

func (w *world) waitPhase(name string, phase stargatev1.OperationPhase) {
	w.t.Helper()
	eventually(w.t, 20*time.Second, func() (bool, string) {
		op := w.op(name)
		return op.Status.Phase == phase, op.Status.Message
	})
}

// installedServer creates a Server with a BMC and repaves it with the mock datacenter.
func (w *world) installedServer(name, user, password string) {
	w.t.Helper()
	w.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-bmc"}, Type: corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{"username": []byte(user), "password": []byte(password)}})
	w.create(&stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: stargatev1.ServerSpec{BMC: &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: name + "-bmc"}}}})
	w.create(&stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "p-" + name},
		Spec: stargatev1.ProvisioningProfileSpec{CloudInit: "#cloud-config\n{}\n"}})
	w.create(&stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "install-" + name}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: name},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p-" + name}}})
	w.waitPhase("install-"+name, stargatev1.OperationSucceeded)
}

// call makes one Redfish request and returns the status and body.
func (w *world) call(method, path, user, password, body string) (int, string) {
	w.t.Helper()
	req, err := http.NewRequest(method, w.bmcURL+path, strings.NewReader(body))
	if err != nil {
		w.t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (w *world) events(name string) []eventsv1.Event {
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(w.ns)); err != nil {
		w.t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// A BMC request shows up in Kubernetes: the Server's power state, boot override and virtual media,
// and an Event naming the BMC user; wrong credentials change nothing; a running Operation holds
// the Server against BMC changes.
func TestBMCDrivesTheServerAndKubernetesSeesIt(t *testing.T) {
	w := newWorld(t, 20*time.Millisecond)
	w.installedServer("s1", "admin", "s3cret")
	id := w.ns + ".s1"
	sys := "/redfish/v1/Systems/" + id
	s := w.waitServer("s1", func(st stargatev1.ServerStatus) bool { return st.BMC != nil && st.PowerState == stargatev1.PowerOn })
	if s.Status.BMC.Address != w.bmcURL+sys {
		t.Errorf("status.bmc.address %q, want %q", s.Status.BMC.Address, w.bmcURL+sys)
	}
	if code, body := w.call("GET", sys, "admin", "s3cret", ""); code != 200 || !strings.Contains(body, `"PowerState":"On"`) {
		t.Errorf("GET system: %d %s", code, body)
	}

	// Wrong or missing credentials: 401 and nothing changes.
	for _, cred := range [][2]string{{"admin", "wrong"}, {"root", "s3cret"}, {"", ""}} {
		if code, _ := w.call("POST", sys+"/Actions/ComputerSystem.Reset", cred[0], cred[1], `{"ResetType":"ForceOff"}`); code != 401 {
			t.Errorf("reset with %v: %d, want 401", cred, code)
		}
	}
	if !w.inspect("s1").Running {
		t.Fatal("a request without valid credentials powered the server off")
	}

	// ForceOff over Redfish: status says Off at once, the Event names the user, and the Server is
	// not in Error (a BMC power-off is not a crash).
	if code, body := w.call("POST", sys+"/Actions/ComputerSystem.Reset", "admin", "s3cret", `{"ResetType":"ForceOff"}`); code != 204 {
		t.Fatalf("ForceOff: %d %s", code, body)
	}
	w.waitServer("s1", func(st stargatev1.ServerStatus) bool { return st.PowerState == stargatev1.PowerOff })
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, e := range w.events("s1") {
			if e.Reason == "PowerChangedByBMC" && strings.Contains(e.Note, `BMC user "admin": reset ForceOff`) {
				return true, ""
			}
		}
		return false, "no PowerChangedByBMC event naming admin"
	})

	// Boot once from a virtual CD, then power on: the machine boots the CD and the override is used up.
	if code, body := w.call("PATCH", sys, "admin", "s3cret", `{"Boot":{"BootSourceOverrideTarget":"Cd","BootSourceOverrideEnabled":"Once"}}`); code >= 300 {
		t.Fatalf("PATCH boot: %d %s", code, body)
	}
	if code, body := w.call("POST", "/redfish/v1/Managers/"+id+"/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", "admin", "s3cret",
		`{"Image":"http://images.example/installer.iso","Inserted":true,"WriteProtected":true}`); code >= 300 {
		t.Fatalf("InsertMedia: %d %s", code, body)
	}
	w.waitServer("s1", func(st stargatev1.ServerStatus) bool {
		return st.BMC.BootOverride == "Cd/Once/Legacy" && st.BMC.VirtualMedia == "http://images.example/installer.iso"
	})
	if code, body := w.call("POST", sys+"/Actions/ComputerSystem.Reset", "admin", "s3cret", `{"ResetType":"On"}`); code != 204 {
		t.Fatalf("On: %d %s", code, body)
	}
	w.waitServer("s1", func(st stargatev1.ServerStatus) bool {
		return st.PowerState == stargatev1.PowerOn && st.BMC.BootOverride == "Cd/Disabled/Legacy" && st.State == stargatev1.ServerReady
	})
	if from := w.report("s1").BootedFrom; from != "Cd" {
		t.Errorf("the machine booted from %q, want the CD", from)
	}

}

// An Operation and a BMC request never race: while an Operation runs on the Server, the BMC
// refuses changes with 409 and the machine is not touched.
func TestBMCRefusesChangesWhileAnOperationRuns(t *testing.T) {
	w := newWorld(t, 500*time.Millisecond)
	w.installedServer("s4", "admin", "pw")
	w.create(&stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: "reinstall"}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: "s4"},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "p-s4"}}})
	eventually(t, 10*time.Second, func() (bool, string) {
		return w.op("reinstall").Status.Phase == stargatev1.OperationRunning, "waiting for the repave to run"
	})
	code, body := w.call("POST", "/redfish/v1/Systems/"+w.ns+".s4/Actions/ComputerSystem.Reset", "admin", "pw", `{"ResetType":"ForceOff"}`)
	if code != 409 || !strings.Contains(body, "reinstall") && !strings.Contains(body, "Conflict") && !strings.Contains(body, "InUse") {
		t.Errorf("reset during a repave: %d %s, want 409", code, body)
	}
	if !w.inspect("s4").Running {
		t.Error("the BMC powered off a server under a running repave")
	}
	w.waitPhase("reinstall", stargatev1.OperationSucceeded)
}

// The Secret a BMC's credentials come from must be of type kubernetes.io/basic-auth: naming any
// other Secret of the namespace opens nothing.
func TestBMCUsesOnlyBasicAuthSecrets(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "not-for-bmc"},
		Data: map[string][]byte{"username": []byte("admin"), "password": []byte("pw")}})
	w.create(&stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "s2"},
		Spec: stargatev1.ServerSpec{BMC: &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "not-for-bmc"}}}})
	w.waitServer("s2", func(st stargatev1.ServerStatus) bool { return st.Host != "" })
	if code, _ := w.call("GET", "/redfish/v1/Systems/"+w.ns+".s2", "admin", "pw", ""); code != 401 {
		t.Errorf("credentials from an Opaque Secret: %d, want 401", code)
	}
	if code, body := w.call("GET", "/redfish/v1/Systems", "admin", "pw", ""); code != 401 {
		t.Errorf("the collection with credentials that open nothing: %d %s", code, body)
	}
}

// Ironic's own Redfish library, sushy, power-cycles the Server and boots it from virtual media
// through the BMC of a Kubernetes Server.
func TestSushyDrivesAKubernetesServer(t *testing.T) {
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import sushy").CombinedOutput(); err != nil {
		testreq.Need(t, "the python3-sushy package ("+strings.TrimSpace(string(out))+")", "sudo apt-get install -y python3-sushy")
	}
	w := newWorld(t, 10*time.Millisecond)
	w.installedServer("s3", "ironic", "pa55")
	w.waitServer("s3", func(st stargatev1.ServerStatus) bool { return st.BMC != nil })
	cfg, _ := json.Marshal(map[string]any{"url": w.bmcURL + "/redfish/v1", "user": "ironic", "password": "pa55",
		"system": "/redfish/v1/Systems/" + w.ns + ".s3", "image": "http://images.example/boot.iso", "verify": false, "auth": "basic"})
	cmd := exec.Command(python, filepath.Join(testenv.RepoRoot(), "pkg", "redfish", "testdata", "sushy_client.py"), string(cfg))
	cmd.Env = append(os.Environ(), "REQUESTS_CA_BUNDLE=", "CURL_CA_BUNDLE=")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("sushy: %v\n%s\n%s", err, out, stderr)
	}
	var got struct {
		AfterForceOff string `json:"after_force_off"`
		AfterOn       string `json:"after_on"`
		Boot          struct{ Target, Enabled string }
		AfterInsert   struct {
			Image    string `json:"image"`
			Inserted bool   `json:"inserted"`
		} `json:"after_insert"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("sushy output %s: %v", out, err)
	}
	if got.AfterForceOff != "Off" || got.AfterOn != "On" || got.Boot.Target != "Cd" || got.Boot.Enabled != "Once" ||
		got.AfterInsert.Image != "http://images.example/boot.iso" || !got.AfterInsert.Inserted {
		t.Errorf("sushy saw %s", out)
	}
	w.waitServer("s3", func(st stargatev1.ServerStatus) bool {
		return st.PowerState == stargatev1.PowerOn && st.BMC.BootOverride == "Cd/Once/Legacy"
	})
	if n := w.report("s3").PowerOns; n != 1 {
		t.Errorf("the machine was powered on %d times by sushy, want 1", n)
	}
}

func (w *world) inspect(name string) controller.ServerInfo {
	info, err := (&mockdc.Provider{BaseURL: w.dcURL}).Inspect(context.Background(), client.ObjectKey{Namespace: w.ns, Name: name})
	if err != nil {
		w.t.Fatal(err)
	}
	return info
}

func (w *world) report(name string) mockdc.ServerReport {
	resp, err := http.Get(w.dcURL + "/v1/servers/" + w.ns + "/" + name)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep mockdc.ServerReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		w.t.Fatal(err)
	}
	return rep
}

// BenchmarkBMC500Servers drives 500 Servers' BMCs over Redfish through the Kubernetes-backed
// backend and the mock datacenter (no VMs): requests per second and latency percentiles of a mix
// of GET System (4) and ForceOff (1), with 8 clients. Each request checks the Server's credentials
// against its Secret on the API server, as it must.
func BenchmarkBMC500Servers(b *testing.B) {
	w := newWorld(b, 0)
	const servers = 500
	w.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bmc"}, Type: corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{"username": []byte("admin"), "password": []byte("pw")}})
	for i := range servers {
		w.create(&stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%d", i)},
			Spec: stargatev1.ServerSpec{BMC: &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "bmc"}}}})
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		var list stargatev1.ServerList
		if err := env.Client.List(context.Background(), &list, client.InNamespace(w.ns)); err != nil {
			b.Fatal(err)
		}
		taken := 0
		for _, s := range list.Items {
			if s.Status.Host != "" {
				taken++
			}
		}
		if taken == servers {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d servers taken", taken, servers)
		}
	}
	b.ResetTimer()
	lat := make(chan time.Duration, 1<<16)
	start := time.Now()
	var n atomic.Int64
	b.SetParallelism(4) // 8 clients on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		c := &http.Client{}
		for pb.Next() {
			i := n.Add(1)
			path := fmt.Sprintf("/redfish/v1/Systems/%s.s%d", w.ns, i%servers)
			method, body := "GET", ""
			if i%5 == 0 {
				method, path, body = "POST", path+"/Actions/ComputerSystem.Reset", `{"ResetType":"ForceOff"}`
			}
			req, _ := http.NewRequest(method, w.bmcURL+path, strings.NewReader(body))
			req.SetBasicAuth("admin", "pw")
			if body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			t0 := time.Now()
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 300 {
				b.Errorf("%s %s: %d", method, path, resp.StatusCode)
				return
			}
			select {
			case lat <- time.Since(t0):
			default:
			}
		}
	})
	elapsed := time.Since(start)
	close(lat)
	var all []time.Duration
	for d := range lat {
		all = append(all, d)
	}
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(n.Load())/elapsed.Seconds(), "req/s")
		b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// A Server that names an existing BMC (spec.bmc.address, the Redfish datacenter) is a real machine:
// its credentials are that BMC's, so the simulator's BMC serves nothing for it.
func TestBMCServesNoServerThatNamesItsOwnBMC(t *testing.T) {
	w := newWorld(t, 10*time.Millisecond)
	w.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "real-bmc"}, Type: corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{"username": []byte("admin"), "password": []byte("pw")}})
	w.create(&stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "real"},
		Spec: stargatev1.ServerSpec{BMC: &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "real-bmc"},
			Address: "http://10.0.0.50"}}})
	w.waitServer("real", func(st stargatev1.ServerStatus) bool { return st.Host != "" })
	if code, _ := w.call("GET", "/redfish/v1/Systems/"+w.ns+".real", "admin", "pw", ""); code != 401 && code != 404 {
		t.Errorf("the simulator serves a BMC for a Server with its own: %d, want 401 or 404", code)
	}
	if code, body := w.call("GET", "/redfish/v1/Systems", "admin", "pw", ""); code == 200 && strings.Contains(body, w.ns+".real") {
		t.Errorf("the simulator lists a Server with its own BMC: %s", body)
	}
}
