package redfish_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"stargate.io/stargate/pkg/redfish"
)

// gated is a Backend whose systems' BMCs answer as out tells (a simulated outage).
type gated struct {
	*redfish.MemoryBackend
	out map[string]error
}

func (g *gated) Admit(_ context.Context, id string) error { return g.out[id] }

// A Gatekeeper's outage strikes only the system it names and only requests with that system's
// credentials: a 503 with a Redfish error body and Retry-After, or a connection dropped without
// an answer. A wrong password still gets 401, so the outage tells nobody the system exists.
func TestGatekeeperOutages(t *testing.T) {
	g := &gated{MemoryBackend: newBackend(t), out: map[string]error{
		"server-a": &redfish.ServiceError{Status: http.StatusServiceUnavailable, Message: "maintenance", RetryAfter: 1500 * time.Millisecond},
		"server-b": redfish.ErrDropConnection,
	}}
	c := newClient(t, g)
	r := c.do("GET", "/redfish/v1/Systems/server-a", credsA, nil)
	if r.status != 503 || r.header.Get("Retry-After") != "2" || !strings.Contains(string(r.raw), "Base.1.16.ServiceTemporarilyUnavailable") {
		t.Errorf("an unavailable BMC answered %d (Retry-After %q) %s", r.status, r.header.Get("Retry-After"), r.raw)
	}
	if r := c.do("POST", "/redfish/v1/Managers/server-a/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia", credsA, "{}"); r.status != 503 {
		t.Errorf("the Manager of an unavailable BMC answered %d", r.status)
	}
	if r := c.do("GET", "/redfish/v1/Systems/server-a", creds{"admin-a", "wrong"}, nil); r.status != 401 {
		t.Errorf("wrong credentials on an unavailable BMC: %d, want 401", r.status)
	}
	if sys, _ := g.System(t.Context(), "server-a"); sys.PowerState != redfish.PowerOn {
		t.Errorf("the outage changed the system: %+v", sys)
	}

	req, _ := http.NewRequestWithContext(t.Context(), "GET", c.url+"/redfish/v1/Systems/server-b", nil)
	req.SetBasicAuth(credsB.user, credsB.password)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("a refusing BMC answered %d, want the connection dropped", resp.StatusCode)
	}

	delete(g.out, "server-a")
	if r := c.do("GET", "/redfish/v1/Systems/server-a", credsA, nil); r.status != 200 {
		t.Errorf("after the outage: %d %s", r.status, r.raw)
	}
	if r := c.do("GET", "/redfish/v1/Systems", credsA, nil); r.status != 200 {
		t.Errorf("the collection during another system's outage: %d", r.status)
	}
}

// A Backend's ServiceError is the client's answer, its message included.
func TestServiceErrorFromBackend(t *testing.T) {
	s := newSpy(t)
	s.fail["InsertMedia"] = &redfish.ServiceError{Status: http.StatusInternalServerError, Message: "the image server could not be reached"}
	r := newClient(t, s).do("POST", "/redfish/v1/Managers/server-a/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", credsA,
		map[string]any{"Image": "http://images.example/a.iso"})
	if r.status != 500 || !strings.Contains(string(r.raw), "the image server could not be reached") || r.header.Get("Retry-After") != "" {
		t.Errorf("InsertMedia failed by the backend: %d %s", r.status, r.raw)
	}
}
