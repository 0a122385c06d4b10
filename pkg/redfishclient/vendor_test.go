package redfishclient_test

// The BMCs here are package redfish's service behind a small http.Handler that makes it behave as
// a vendor's BMC does where ours does not: each wrapper says which behaviour it stands for.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"

	"stargate.io/stargate/pkg/redfish"
	"stargate.io/stargate/pkg/redfishclient"
)

const (
	sysPath    = "/redfish/v1/Systems/" + systemID
	sysMedia   = sysPath + "/VirtualMedia"
	sysCd      = sysMedia + "/Cd"
	mgrCd      = "/redfish/v1/Managers/" + systemID + "/VirtualMedia/Cd"
	insertPath = "/Actions/VirtualMedia.InsertMedia"
	ejectPath  = "/Actions/VirtualMedia.EjectMedia"
)

// mediaOnlyUnderManager is a BMC (iDRAC, iLO, and the sushy-emulator's Manager link) whose System
// has no VirtualMedia: the virtual CD is only under its Manager. withoutManagedBy also drops the
// System's Links.ManagedBy, so the Manager is found only in the Managers collection.
func mediaOnlyUnderManager(withoutManagedBy bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		sys := rewriteJSON(next, sysPath, func(obj map[string]any) {
			delete(obj, "VirtualMedia")
			if withoutManagedBy {
				delete(obj, "Links")
			}
		})
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, sysMedia) {
				redfishError(w, http.StatusNotFound, "ResourceNotFound", "The requested resource was not found.")
				return
			}
			sys.ServeHTTP(w, r)
		})
	}
}

func TestMediaUnderManager(t *testing.T) {
	for _, withoutManagedBy := range []bool{false, true} {
		t.Run(map[bool]string{false: "ManagedBy", true: "Managers collection"}[withoutManagedBy], func(t *testing.T) {
			b := newBackend(t)
			m := newBMC(t, b, bmcOptions{vendor: mediaOnlyUnderManager(withoutManagedBy)})
			sys := m.system(t)
			if err := sys.InsertMedia(t.Context(), image); err != nil {
				t.Fatal(err)
			}
			if err := sys.EjectMedia(t.Context()); err != nil {
				t.Fatal(err)
			}
			want := []string{"POST " + mgrCd + insertPath + " 204", "POST " + mgrCd + ejectPath + " 204"}
			if got := m.log.changes(); !reflect.DeepEqual(got, want) {
				t.Errorf("requests %q, want %q", got, want)
			}
			if len(b.Calls()) != 2 {
				t.Errorf("backend calls %+v", b.Calls())
			}
		})
	}
}

// floppyFirst is a BMC (Supermicro, iLO) whose VirtualMedia collection lists a slot that takes
// no CD and one it refuses to show before the one that takes a CD; withoutCd lists only those two.
func floppyFirst(withoutCd bool) func(http.Handler) http.Handler {
	const floppy = sysMedia + "/Floppy1"
	return func(next http.Handler) http.Handler {
		edit := func(obj map[string]any) {
			members := []any{map[string]any{"@odata.id": floppy}, map[string]any{"@odata.id": sysMedia + "/USB9"}}
			if !withoutCd {
				members = append(members, obj["Members"].([]any)...)
			}
			obj["Members"] = members
		}
		coll := rewriteJSON(next, sysMedia, edit)
		if withoutCd {
			// The Manager shows the same slots.
			coll = rewriteJSON(coll, "/redfish/v1/Managers/"+systemID+"/VirtualMedia", edit)
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == floppy && r.Method == http.MethodGet {
				writeJSON(w, http.StatusOK, map[string]any{"@odata.id": floppy, "Id": "Floppy1", "MediaTypes": []string{"Floppy", "USBStick"},
					"Image": nil, "Inserted": false, "Actions": map[string]any{"#VirtualMedia.InsertMedia": map[string]any{"target": floppy + insertPath}}})
				return
			}
			if r.URL.Path == sysMedia+"/USB9" {
				// Listed, but the BMC will not show it (iLO without its license, say).
				redfishError(w, http.StatusForbidden, "InsufficientPrivilege",
					"There are insufficient privileges for the account or credentials associated with the current session to perform the requested operation.")
				return
			}
			if strings.HasPrefix(r.URL.Path, floppy) {
				redfishError(w, http.StatusBadRequest, "GeneralError", "This slot takes floppy images only.")
				return
			}
			coll.ServeHTTP(w, r)
		})
	}
}

func TestSlotWithoutCdFirst(t *testing.T) {
	b := newBackend(t)
	m := newBMC(t, b, bmcOptions{vendor: floppyFirst(false)})
	if err := m.system(t).InsertMedia(t.Context(), image); err != nil {
		t.Fatal(err)
	}
	if got, want := m.log.changes(), []string{"POST " + sysCd + insertPath + " 204"}; !reflect.DeepEqual(got, want) {
		t.Errorf("requests %q, want %q", got, want)
	}

	m = newBMC(t, newBackend(t), bmcOptions{vendor: floppyFirst(true)})
	_, err := m.system(t).VirtualMedia(t.Context())
	wantError(t, err, "no virtual media slot takes a CD or DVD (found: "+sysMedia+"/Floppy1 [Floppy USBStick], "+sysMedia+"/USB9 (403))")
}

// insertBodies records the InsertMedia bodies a BMC got, and refuses, as a vendor's BMC does,
// any parameter outside accept (nil: any).
type insertBodies struct {
	bodies []map[string]any
}

func (ib *insertBodies) wrap(next http.Handler, accept []string, requireProtocol bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, insertPath) {
			next.ServeHTTP(w, r)
			return
		}
		var body map[string]any
		data, _ := readAll(r)
		r.Body = io.NopCloser(bytes.NewReader(data))
		if err := json.Unmarshal(data, &body); err != nil {
			redfishError(w, http.StatusBadRequest, "MalformedJSON", "malformed")
			return
		}
		ib.bodies = append(ib.bodies, body)
		for k := range body {
			if accept != nil && !contains(accept, k) {
				// Supermicro X11: "Inserted" and "WriteProtected" are refused.
				redfishError(w, http.StatusBadRequest, "ActionParameterUnknown",
					"The action VirtualMedia.InsertMedia was submitted with the invalid parameter "+k+".", "#/"+k)
				return
			}
		}
		if _, ok := body["TransferProtocolType"]; requireProtocol && !ok {
			// Some iDRAC and XClarity versions require it without advertising it.
			redfishError(w, http.StatusBadRequest, "ActionParameterMissing",
				"The action VirtualMedia.InsertMedia requires the parameter TransferProtocolType to be present in the request body.",
				"#/TransferProtocolType")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// advertise is a vendor wrapper that changes the InsertMedia action the Cd slot shows.
func advertise(next http.Handler, edit func(action map[string]any)) http.Handler {
	return rewriteJSON(next, sysCd, func(obj map[string]any) {
		edit(obj["Actions"].(map[string]any)["#VirtualMedia.InsertMedia"].(map[string]any))
	})
}

// TestInsertMediaParameters: InsertMedia sends only the parameters the slot advertises.
func TestInsertMediaParameters(t *testing.T) {
	const infoPath = sysCd + "/InsertMediaActionInfo"
	t.Run("ActionInfo", func(t *testing.T) {
		// A BMC (Supermicro X12, OpenBMC) whose ActionInfo lists Image and TransferProtocolType
		// only, and that refuses any other parameter.
		var ib insertBodies
		m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
			h := ib.wrap(advertise(next, func(a map[string]any) { a["@Redfish.ActionInfo"] = infoPath }), []string{"Image", "TransferProtocolType"}, false)
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == infoPath {
					writeJSON(w, http.StatusOK, map[string]any{"@odata.id": infoPath, "Id": "InsertMediaActionInfo", "Parameters": []any{
						map[string]any{"Name": "Image", "Required": true, "DataType": "String"},
						map[string]any{"Name": "TransferProtocolType", "Required": false, "DataType": "String", "AllowableValues": []string{"HTTP", "HTTPS", "NFS"}},
					}})
					return
				}
				h.ServeHTTP(w, r)
			})
		}})
		if err := m.system(t).InsertMedia(t.Context(), image); err != nil {
			t.Fatal(err)
		}
		want := []map[string]any{{"Image": image, "TransferProtocolType": "HTTP"}}
		if !reflect.DeepEqual(ib.bodies, want) {
			t.Errorf("InsertMedia bodies %v, want %v", ib.bodies, want)
		}
		if got := m.backend.Calls(); len(got) != 1 || got[0].Op != "InsertMedia" {
			t.Errorf("backend calls %+v", got)
		}
	})
	t.Run("inline AllowableValues", func(t *testing.T) {
		// A BMC that takes images over NFS and CIFS only: nothing is sent, the error says why.
		var ib insertBodies
		m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
			return ib.wrap(advertise(next, func(a map[string]any) {
				a["TransferProtocolType@Redfish.AllowableValues"] = []string{"NFS", "CIFS"}
			}), nil, false)
		}})
		err := m.system(t).InsertMedia(t.Context(), image)
		wantError(t, err, `InsertMedia TransferProtocolType "HTTP" (it allows: NFS, CIFS)`)
		if len(ib.bodies) != 0 {
			t.Errorf("InsertMedia sent %v", ib.bodies)
		}
	})
	t.Run("silent but requires TransferProtocolType", func(t *testing.T) {
		// Advertises nothing: Image alone first, as sushy does; the BMC's answer that it misses
		// TransferProtocolType makes the client send it too.
		var ib insertBodies
		m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
			return ib.wrap(next, []string{"Image", "TransferProtocolType"}, true)
		}})
		if err := m.system(t).InsertMedia(t.Context(), image); err != nil {
			t.Fatal(err)
		}
		want := []map[string]any{{"Image": image}, {"Image": image, "TransferProtocolType": "HTTP"}}
		if !reflect.DeepEqual(ib.bodies, want) {
			t.Errorf("InsertMedia bodies %v, want %v", ib.bodies, want)
		}
	})
	t.Run("no action: PATCH", func(t *testing.T) {
		// Older BMCs (Lenovo XCC, iDRAC before VirtualMedia 1.2) have no InsertMedia action: the
		// slot is PATCHed, replaced media ejected first the same way.
		b := newBackend(t)
		m := newBMC(t, b, bmcOptions{vendor: func(next http.Handler) http.Handler {
			return rewriteJSON(next, sysCd, func(obj map[string]any) { delete(obj, "Actions") })
		}})
		sys := m.system(t)
		if err := sys.InsertMedia(t.Context(), image); err != nil {
			t.Fatal(err)
		}
		if err := sys.InsertMedia(t.Context(), "https://images.example/two.iso"); err != nil {
			t.Fatal(err)
		}
		want := []string{"PATCH " + sysCd + " 204", "PATCH " + sysCd + " 204", "PATCH " + sysCd + " 204"}
		if got := m.log.changes(); !reflect.DeepEqual(got, want) {
			t.Errorf("requests %q, want %q", got, want)
		}
		var ops []string
		for _, c := range b.Calls() {
			ops = append(ops, c.Op+" "+c.Arg)
		}
		if want := []string{"InsertMedia " + image, "EjectMedia ", "InsertMedia https://images.example/two.iso"}; !reflect.DeepEqual(ops, want) {
			t.Errorf("backend calls %q, want %q", ops, want)
		}
	})
}

// failFirst is a BMC that answers the first n requests for path with fail, then serves them.
func failFirst(n int32, path string, fail http.HandlerFunc) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		var seen atomic.Int32
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == path && seen.Add(1) <= n {
				fail(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func unavailable(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Retry-After", "0")
	redfishError(w, http.StatusServiceUnavailable, "ServiceTemporarilyUnavailable", "The service is temporarily unavailable.")
}

// TestRetries: 5xx, 429 and dropped connections are retried, up to the configured attempts; the
// final error names the request, the attempts and the last reason; 4xx other than 409 and 429
// are not retried.
func TestRetries(t *testing.T) {
	t.Run("503 then success", func(t *testing.T) {
		// A BMC whose web server is busy (iDRAC while a job runs, iLO right after a reset).
		m := newBMC(t, newBackend(t), bmcOptions{vendor: failFirst(2, sysPath, unavailable)})
		sys, err := m.client(t).System(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		if sys.ID != systemID {
			t.Errorf("found %q", sys.ID)
		}
		if n := m.log.count("GET", sysPath); n != 3 {
			t.Errorf("GET %s %d times, want 3", sysPath, n)
		}
	})
	t.Run("503 forever", func(t *testing.T) {
		b := newBackend(t)
		m := newBMC(t, b, bmcOptions{vendor: failFirst(1000, sysPath+"/Actions/ComputerSystem.Reset", unavailable)})
		err := m.system(t).Reset(t.Context(), redfishclient.ResetForceOff)
		wantError(t, err, "reset ForceOff: POST "+sysPath+"/Actions/ComputerSystem.Reset: gave up after 4 attempts: "+
			"503 Service Unavailable: The service is temporarily unavailable.")
		if n := m.log.count("POST", sysPath+"/Actions/ComputerSystem.Reset"); n != 4 {
			t.Errorf("POST reset %d times, want 4 (Config.Attempts)", n)
		}
		if len(b.Calls()) != 0 {
			t.Errorf("backend calls %+v", b.Calls())
		}
	})
	t.Run("caller gives up", func(t *testing.T) {
		// A BMC that never comes back: the caller's context ends the retries, and the error
		// still says what the BMC last answered.
		m := newBMC(t, newBackend(t), bmcOptions{vendor: failFirst(1000, sysPath, unavailable)})
		ctx, cancel := context.WithCancel(t.Context())
		cfg := m.config()
		cfg.Attempts, cfg.MinBackoff, cfg.MaxBackoff = 100, time.Hour, time.Hour
		// The client logs each retry before it waits: the caller gives up then.
		cfg.Log = funcr.New(func(_, _ string) { cancel() }, funcr.Options{Verbosity: 1})
		c, err := redfishclient.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.System(ctx, "")
		wantError(t, err, "GET "+sysPath+": context canceled (last error: 503 Service Unavailable: The service is temporarily unavailable.)")
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v is not context.Canceled", err)
		}
	})
	t.Run("429 with Retry-After", func(t *testing.T) {
		m := newBMC(t, newBackend(t), bmcOptions{vendor: failFirst(1, sysPath, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "30") // capped at MaxBackoff
			redfishError(w, http.StatusTooManyRequests, "GeneralError", "Too many requests.")
		})})
		if _, err := m.client(t).System(t.Context(), ""); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("connection reset", func(t *testing.T) {
		// A BMC whose web server restarts mid-request drops the connection with a reset.
		m := newBMC(t, newBackend(t), bmcOptions{vendor: failFirst(2, sysPath, resetConnection)})
		p, err := m.system(t).PowerState(t.Context())
		if err != nil || p != redfishclient.PowerOn {
			t.Fatalf("power state %q, %v", p, err)
		}
		if n := m.log.count("GET", sysPath); n != 4 { // System found on the 3rd, PowerState on the 4th
			t.Errorf("GET %s %d times, want 4", sysPath, n)
		}
	})
	t.Run("connection reset forever", func(t *testing.T) {
		m := newBMC(t, newBackend(t), bmcOptions{vendor: failFirst(1000, sysPath, resetConnection)})
		_, err := m.client(t).System(t.Context(), "")
		wantError(t, err, "GET "+sysPath+": gave up after 4 attempts: ")
		if !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "EOF") {
			t.Errorf("error %q does not name the dropped connection", err)
		}
	})
	t.Run("answer lost after the insert", func(t *testing.T) {
		// The BMC inserts the image but the connection drops before it answers; the retry is
		// refused (409: a medium is in), yet the image is in, which is what was asked.
		b := newBackend(t)
		m := newBMC(t, b, bmcOptions{vendor: func(next http.Handler) http.Handler {
			var dropped atomic.Bool
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, insertPath) && dropped.CompareAndSwap(false, true) {
					next.ServeHTTP(httptest.NewRecorder(), r) // done, answer lost
					resetConnection(w, r)
					return
				}
				next.ServeHTTP(w, r)
			})
		}})
		if err := m.system(t).InsertMedia(t.Context(), image); err != nil {
			t.Fatal(err)
		}
		if n := m.log.count(http.MethodPost, sysCd+insertPath); n < 2 {
			t.Errorf("InsertMedia POSTed %d times, want the lost one and its retries", n)
		}
		if got := b.Calls(); len(got) != 1 || got[0].Op != "InsertMedia" {
			t.Errorf("backend calls %+v", got)
		}
	})
	t.Run("400 is not retried", func(t *testing.T) {
		// Our service's own 400, with its Redfish message: the BMC would not take the value.
		b := newBackend(t)
		m := newBMC(t, b, bmcOptions{vendor: func(next http.Handler) http.Handler {
			// A BMC that does not advertise its boot targets.
			return rewriteJSON(next, sysPath, func(obj map[string]any) {
				delete(obj["Boot"].(map[string]any), "BootSourceOverrideTarget@Redfish.AllowableValues")
			})
		}})
		err := m.system(t).SetBootOverride(t.Context(), redfishclient.BootOverride{Target: "UefiHttp", Enabled: redfishclient.BootOnce})
		wantError(t, err, "boot override UefiHttp/Once: PATCH "+sysPath+": 400 Bad Request: "+
			"The value 'UefiHttp' for the property BootSourceOverrideTarget is not in the list of acceptable values.")
		var he *redfishclient.HTTPError
		if !errors.As(err, &he) || he.Code != "Base.1.16.PropertyValueNotInList" {
			t.Errorf("error %#v: want an HTTPError with the Redfish code", err)
		}
		if n := m.log.count("PATCH", sysPath); n != 1 {
			t.Errorf("PATCH %d times, want 1", n)
		}
	})
}

// resetConnection drops the connection with a TCP reset.
func resetConnection(w http.ResponseWriter, _ *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// TestSlowBMC: a BMC that does not answer fails each attempt after RequestTimeout, and the
// request after its attempts, saying so; the caller's cancellation ends it at once.
func TestSlowBMC(t *testing.T) {
	arrived := make(chan struct{}, 100)
	m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The first request: every attempt the test makes meets this, however slow the machine.
			if r.URL.Path == "/redfish/v1" {
				arrived <- struct{}{}
				<-r.Context().Done() // never answers; ends when the client gives up
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	cfg := m.config()
	cfg.RequestTimeout = 50 * time.Millisecond
	cfg.Attempts = 2
	c, err := redfishclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.System(t.Context(), "")
	wantError(t, err, "GET /redfish/v1: gave up after 2 attempts: no answer within 50ms")

	cfg.RequestTimeout = time.Hour
	c, err = redfishclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for len(arrived) > 0 {
		<-arrived
	}
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-arrived
		cancel()
	}()
	_, err = c.System(ctx, "")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v after the caller cancelled, want context.Canceled", err)
	}
}

// TestETag: a BMC (iLO 5, OpenBMC) that refuses a PATCH without the resource's ETag in If-Match
// (428) or with a stale one (412) gets the one it sent, read again after a 412.
func TestETag(t *testing.T) {
	b := newBackend(t)
	var etag atomic.Int64
	var staleOnce atomic.Bool
	m := newBMC(t, b, bmcOptions{vendor: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPatch && staleOnce.CompareAndSwap(true, false) {
				etag.Add(1)
			}
			current := `W/"boot-` + string(rune('0'+etag.Load())) + `"`
			switch {
			case r.URL.Path != sysPath:
			case r.Method == http.MethodGet:
				w.Header().Set("ETag", current)
			case r.Method == http.MethodPatch && r.Header.Get("If-Match") == "":
				redfishError(w, http.StatusPreconditionRequired, "PreconditionRequired", "A precondition header or annotation is required to change a resource.")
				return
			case r.Method == http.MethodPatch && r.Header.Get("If-Match") != current:
				redfishError(w, http.StatusPreconditionFailed, "PreconditionFailed", "The ETag supplied did not match the ETag required to change this resource.")
				return
			case r.Method == http.MethodPatch:
				etag.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	}})
	sys := m.system(t)
	// The BMC's ETag moves on between the client's read and its PATCH (as when the System's
	// state changes): the client reads it again, once.
	staleOnce.Store(true)
	for _, target := range []string{redfishclient.BootCd, redfishclient.BootHdd} {
		if err := sys.SetBootOverride(t.Context(), redfishclient.BootOverride{Target: target, Enabled: redfishclient.BootContinuous}); err != nil {
			t.Fatal(err)
		}
	}
	var ifMatch []string
	for _, e := range m.log.all() {
		if e.method == http.MethodPatch {
			ifMatch = append(ifMatch, e.ifMatch+" "+e.String())
		}
	}
	want := []string{`W/"boot-0" PATCH ` + sysPath + " 412", `W/"boot-1" PATCH ` + sysPath + " 204", `W/"boot-2" PATCH ` + sysPath + " 204"}
	if !reflect.DeepEqual(ifMatch, want) {
		t.Errorf("PATCHes %q, want %q", ifMatch, want)
	}
	got, err := b.System(t.Context(), systemID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Boot != (redfish.Boot{Target: "Hdd", Enabled: "Continuous", Mode: "UEFI"}) {
		t.Errorf("boot %+v", got.Boot)
	}
}

// TestHostileBMC: what a BMC sends cannot take the client, with its credentials, elsewhere: links
// that are not paths on the BMC are refused, redirects to another host are refused (to the same
// host, followed), and a response larger than MaxResponseBytes is an error, not read on.
func TestHostileBMC(t *testing.T) {
	for _, tc := range []struct {
		name, link, want string
	}{
		{"absolute URL", "http://evil.example/redfish/v1/Systems/x", `link "http://evil.example/redfish/v1/Systems/x" that is not a path on itself`},
		{"scheme-relative", "//evil.example/redfish/v1/Systems/x", "not a path on itself"},
		{"outside the service", "/redfish/v1/../../admin", `link "/admin" outside /redfish/v1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
				return rewriteJSON(next, "/redfish/v1/Systems", func(obj map[string]any) {
					obj["Members"] = []any{map[string]any{"@odata.id": tc.link}}
				})
			}})
			_, err := m.client(t).System(t.Context(), "")
			wantError(t, err, tc.want)
		})
	}
	t.Run("redirect to another host", func(t *testing.T) {
		m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/redfish/v1/Systems" {
					http.Redirect(w, r, "http://localhost:1/redfish/v1/Systems", http.StatusTemporaryRedirect)
					return
				}
				next.ServeHTTP(w, r)
			})
		}})
		_, err := m.client(t).System(t.Context(), "")
		wantError(t, err, "the BMC redirected to http://localhost:1, which is not its own address")
		if n := m.log.count("GET", "/redfish/v1/Systems"); n != 1 {
			t.Errorf("GET Systems %d times, want 1 (a refused redirect is not retried)", n)
		}
	})
	t.Run("redirect from https to http", func(t *testing.T) {
		m := newBMC(t, newBackend(t), bmcOptions{https: true, vendor: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/redfish/v1/Systems" {
					http.Redirect(w, r, "http://127.0.0.1:1/redfish/v1/Systems", http.StatusFound)
					return
				}
				next.ServeHTTP(w, r)
			})
		}})
		_, err := m.client(t).System(t.Context(), "")
		wantError(t, err, "the BMC redirected from https to http, which would send the credentials in clear")
	})
	t.Run("redirect on its own host", func(t *testing.T) {
		m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/redfish/v1/Systems" {
					http.Redirect(w, r, "/redfish/v1/Systems/", http.StatusMovedPermanently)
					return
				}
				next.ServeHTTP(w, r)
			})
		}})
		if _, err := m.client(t).System(t.Context(), ""); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("huge response", func(t *testing.T) {
		m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/redfish/v1" {
					writeJSON(w, http.StatusOK, map[string]any{"Padding": strings.Repeat("x", redfishclient.MaxResponseBytes)})
					return
				}
				next.ServeHTTP(w, r)
			})
		}})
		_, err := m.client(t).System(t.Context(), "")
		wantError(t, err, "GET /redfish/v1: the BMC's response is larger than 1048576 bytes")
		if n := m.log.count("GET", "/redfish/v1"); n != 1 {
			t.Errorf("GET the root %d times, want 1", n)
		}
	})
	t.Run("hostile action target", func(t *testing.T) {
		m := newBMC(t, newBackend(t), bmcOptions{vendor: func(next http.Handler) http.Handler {
			return advertise(next, func(a map[string]any) { a["target"] = "https://evil.example/collect" })
		}})
		err := m.system(t).InsertMedia(t.Context(), image)
		wantError(t, err, "action VirtualMedia.InsertMedia", "not a path on itself")
		if got := m.log.changes(); len(got) != 0 {
			t.Errorf("requests %q", got)
		}
	})
}

// TestResetActionInfo: a BMC (OpenBMC, iDRAC) that lists the reset types it allows in the
// action's ActionInfo rather than inline: a type it does not list is refused before anything is
// sent, one it lists is sent.
func TestResetActionInfo(t *testing.T) {
	const infoPath = sysPath + "/ResetActionInfo"
	b := newBackend(t)
	m := newBMC(t, b, bmcOptions{vendor: func(next http.Handler) http.Handler {
		sys := rewriteJSON(next, sysPath, func(obj map[string]any) {
			reset := obj["Actions"].(map[string]any)["#ComputerSystem.Reset"].(map[string]any)
			delete(reset, "ResetType@Redfish.AllowableValues")
			reset["@Redfish.ActionInfo"] = infoPath
		})
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == infoPath {
				writeJSON(w, http.StatusOK, map[string]any{"@odata.id": infoPath, "Id": "ResetActionInfo", "Parameters": []any{
					map[string]any{"Name": "ResetType", "Required": true, "DataType": "String", "AllowableValues": []string{"On", "ForceOff"}},
				}})
				return
			}
			sys.ServeHTTP(w, r)
		})
	}})
	sys := m.system(t)
	err := sys.Reset(t.Context(), redfishclient.ResetForceRestart)
	wantError(t, err, `ResetType "ForceRestart" (it allows: On, ForceOff)`)
	if err := sys.Reset(t.Context(), redfishclient.ResetForceOff); err != nil {
		t.Fatal(err)
	}
	if want := []string{"POST " + sysPath + "/Actions/ComputerSystem.Reset 204"}; !reflect.DeepEqual(m.log.changes(), want) {
		t.Errorf("requests %q, want %q", m.log.changes(), want)
	}
	if got := b.Calls(); len(got) != 1 || got[0].Arg != "ForceOff" {
		t.Errorf("backend calls %+v", got)
	}
}
