package redfish_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/redfish"
)

// sushyPython is the interpreter that has Debian's python3-sushy: the system one, not whatever
// python3 comes first on PATH (a pyenv one has no Debian packages).
const sushyPython = "/usr/bin/python3"

const sushyInstall = "sudo apt-get install -y python3-sushy"

// needSushy stops the test (skip on a laptop, fail in CI) unless sushy can be imported.
func needSushy(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(sushyPython); err != nil {
		testreq.Need(t, sushyPython, sushyInstall)
	}
	if out, err := exec.Command(sushyPython, "-c", "import sushy").CombinedOutput(); err != nil {
		testreq.Need(t, "the python3-sushy package (import sushy: "+string(out)+")", sushyInstall)
	}
}

// sushyResult is what testdata/sushy_client.py prints.
type sushyResult struct {
	RedfishVersion string   `json:"redfish_version"`
	Systems        []string `json:"systems"`
	Initial        struct {
		Power      string `json:"power"`
		UUID       string `json:"uuid"`
		BootTarget string `json:"boot_target"`
		MemoryGiB  int    `json:"memory_gib"`
	} `json:"initial"`
	AllowedResets      []string `json:"allowed_resets"`
	AllowedBootTargets []string `json:"allowed_boot_targets"`
	MACs               []string `json:"macs"`
	AfterForceOff      string   `json:"after_force_off"`
	AfterOn            string   `json:"after_on"`
	Boot               struct {
		Target, Enabled, Mode string
	} `json:"boot"`
	Managers     []string `json:"managers"`
	ManagerFor   []string `json:"manager_for"`
	VirtualMedia []string `json:"virtual_media"`
	MediaTypes   []string `json:"media_types"`
	AfterInsert  struct {
		Image          string `json:"image"`
		Inserted       bool   `json:"inserted"`
		WriteProtected bool   `json:"write_protected"`
		ConnectedVia   string `json:"connected_via"`
	} `json:"after_insert"`
	AfterEject struct {
		Image    *string `json:"image"`
		Inserted bool    `json:"inserted"`
	} `json:"after_eject"`
	WrongPassword struct {
		Status int    `json:"status"`
		Code   string `json:"code"`
	} `json:"wrong_password"`
}

// TestSushy drives the service with OpenStack's sushy (Ironic's Redfish client) as Ironic does: it
// finds the system, powers it off and on, sets a one-time boot from CD, and inserts and ejects
// virtual media through the system's Manager. It runs over HTTPS with the certificate
// EnsureCertificate makes, which sushy verifies, with basic auth and with sushy's default
// authentication (which tries a session first).
func TestSushy(t *testing.T) {
	needSushy(t)
	for _, authMode := range []string{"basic", "auto"} {
		t.Run(authMode, func(t *testing.T) {
			b := newBackend(t)
			certDir := t.TempDir()
			cert, err := redfish.EnsureCertificate(certDir, []string{"127.0.0.1", "localhost"})
			if err != nil {
				t.Fatal(err)
			}
			var log accessLog
			srv := httptest.NewUnstartedServer(log.wrap(&redfish.Service{Backend: b}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			srv.StartTLS()
			t.Cleanup(srv.Close)
			// sushy trusts exactly the self-signed certificate, as a user who pinned it would.
			caFile := filepath.Join(certDir, redfish.CertFile)

			const image = "http://images.example/boot/ipa.iso"
			cfg, _ := json.Marshal(map[string]any{
				"url": srv.URL, "user": "admin-a", "password": "secret-a", "system": "/redfish/v1/Systems/server-a",
				"image": image, "verify": caFile, "auth": authMode,
			})
			cmd := exec.CommandContext(t.Context(), sushyPython, "testdata/sushy_client.py", string(cfg))
			// requests lets these variables override the CA bundle sushy gives it.
			cmd.Env = environWithout("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("sushy_client.py: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), out)
			}
			t.Logf("sushy stderr:\n%s", stderr.String())
			t.Logf("requests sushy made:\n%s", strings.Join(log.lines(), "\n"))
			// sushy met no error but the ones this test provokes: the wrong password, and (with
			// "auto") its attempt to log in to a SessionService that offers no sessions.
			for _, l := range log.lines() {
				if strings.HasSuffix(l, " 401") && strings.HasPrefix(l, "GET /redfish/v1/Systems/server-a ") ||
					strings.HasSuffix(l, " 405") && strings.HasPrefix(l, "POST /redfish/v1/SessionService/Sessions ") && authMode == "auto" {
					continue
				}
				if code := l[strings.LastIndexByte(l, ' ')+1:]; code >= "400" {
					t.Errorf("sushy got %s", l)
				}
			}
			var got sushyResult
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("sushy output %q: %v", out, err)
			}

			check := func(what string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %#v, want %#v", what, got, want)
				}
			}
			check("systems", got.Systems, []string{"/redfish/v1/Systems/server-a"})
			check("initial power", got.Initial.Power, "On")
			check("initial uuid", got.Initial.UUID, "6a1f0e9e-1b2c-4d3e-8f40-5a6b7c8d9e0a")
			check("initial boot target", got.Initial.BootTarget, "None")
			check("memory GiB", got.Initial.MemoryGiB, 2)
			check("allowed resets", got.AllowedResets, []string{"ForceOff", "ForceRestart", "GracefulRestart", "GracefulShutdown", "On"})
			check("allowed boot targets", got.AllowedBootTargets, []string{"Cd", "Hdd", "None", "Pxe"})
			check("MACs", got.MACs, []string{"52:54:00:00:00:0a", "52:54:00:00:01:0a"})
			check("power after ForceOff", got.AfterForceOff, "Off")
			check("power after On", got.AfterOn, "On")
			check("boot", got.Boot, struct{ Target, Enabled, Mode string }{"Cd", "Once", "UEFI"})
			check("managers", got.Managers, []string{"/redfish/v1/Managers/server-a"})
			check("manager for", got.ManagerFor, []string{"/redfish/v1/Systems/server-a"})
			check("virtual media", got.VirtualMedia, []string{"/redfish/v1/Managers/server-a/VirtualMedia/Cd"})
			check("media types", got.MediaTypes, []string{"CD", "DVD"})
			check("after insert", got.AfterInsert, struct {
				Image          string `json:"image"`
				Inserted       bool   `json:"inserted"`
				WriteProtected bool   `json:"write_protected"`
				ConnectedVia   string `json:"connected_via"`
			}{image, true, true, "URI"})
			if got.AfterEject.Image != nil || got.AfterEject.Inserted {
				t.Errorf("after eject: image %v, inserted %v; want none", got.AfterEject.Image, got.AfterEject.Inserted)
			}
			check("wrong password", got.WrongPassword, struct {
				Status int    `json:"status"`
				Code   string `json:"code"`
			}{401, "Base.1.16.NoValidSession"})

			// What the backend saw: exactly the changes sushy asked for, by the BMC user, and
			// nothing from the wrong password.
			check("backend calls", b.Calls(), []redfish.Call{
				{Op: "Reset", System: "server-a", User: "admin-a", Arg: "ForceOff"},
				{Op: "Reset", System: "server-a", User: "admin-a", Arg: "On"},
				{Op: "SetBoot", System: "server-a", User: "admin-a", Arg: "Cd/Once/"},
				{Op: "InsertMedia", System: "server-a", User: "admin-a", Arg: image},
				{Op: "EjectMedia", System: "server-a", User: "admin-a"},
			})
			sys, err := b.System(t.Context(), "server-a")
			if err != nil {
				t.Fatal(err)
			}
			check("backend power", sys.PowerState, redfish.PowerOn)
			check("backend boot", sys.Boot, redfish.Boot{Target: "Cd", Enabled: "Once", Mode: "UEFI"})
			check("backend media", sys.Media, redfish.Media{})
		})
	}
}

// environWithout is the test's environment without the named variables.
func environWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			env = append(env, kv)
		}
	}
	return env
}

// accessLog records the requests a handler serves as "METHOD path status".
type accessLog struct {
	mu  sync.Mutex
	log []string
}

func (a *accessLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.log = append(a.log, fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, sw.status))
	})
}

func (a *accessLog) lines() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.log)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}
