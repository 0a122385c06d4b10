package redfish_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"stargate.io/stargate/pkg/redfish"
)

// newBackend returns a MemoryBackend with two systems, each with its own BMC credentials:
// server-a (admin-a/secret-a, on, two NICs) and server-b (admin-b/secret-b, off).
func newBackend(t testing.TB) *redfish.MemoryBackend {
	t.Helper()
	b := redfish.NewMemoryBackend()
	for _, s := range []struct {
		sys            redfish.System
		user, password string
	}{
		{redfish.System{ID: "server-a", Name: "default/server-a", UUID: "6a1f0e9e-1b2c-4d3e-8f40-5a6b7c8d9e0a", PowerState: redfish.PowerOn,
			MACAddresses: []string{"52:54:00:00:00:0a", "52:54:00:00:01:0A"}, Boot: redfish.Boot{Mode: redfish.BootModeUEFI},
			MemoryMiB: 2048, CPUs: 2}, "admin-a", "secret-a"},
		{redfish.System{ID: "server-b", UUID: "7b2f1fa0-2c3d-4e4f-9051-6b7c8d9e0f1b", PowerState: redfish.PowerOff,
			MACAddresses: []string{"52:54:00:00:00:0b"}, MemoryMiB: 1024, CPUs: 1}, "admin-b", "secret-b"},
	} {
		if err := b.Add(s.sys, s.user, s.password); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// spy is a Backend that records every call it gets (as "Method id") before passing it to a
// MemoryBackend, and can be told to fail a method.
type spy struct {
	*redfish.MemoryBackend
	mu    sync.Mutex
	calls []string
	fail  map[string]error
}

func newSpy(t testing.TB) *spy {
	return &spy{MemoryBackend: newBackend(t), fail: map[string]error{}}
}

func (s *spy) note(method, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, strings.TrimSpace(method+" "+id))
	return s.fail[method]
}

// seen returns the calls so far and forgets them.
func (s *spy) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.calls
	s.calls = nil
	return c
}

func (s *spy) Authorize(ctx context.Context, id, user, password string) bool {
	_ = s.note("Authorize", id)
	return s.MemoryBackend.Authorize(ctx, id, user, password)
}

func (s *spy) Systems(ctx context.Context) ([]string, error) {
	if err := s.note("Systems", ""); err != nil {
		return nil, err
	}
	return s.MemoryBackend.Systems(ctx)
}

func (s *spy) System(ctx context.Context, id string) (redfish.System, error) {
	if err := s.note("System", id); err != nil {
		return redfish.System{}, err
	}
	return s.MemoryBackend.System(ctx, id)
}

func (s *spy) Reset(ctx context.Context, id string, t redfish.ResetType, user string) error {
	if err := s.note("Reset", id); err != nil {
		return err
	}
	return s.MemoryBackend.Reset(ctx, id, t, user)
}

func (s *spy) SetBoot(ctx context.Context, id string, b redfish.Boot, user string) error {
	if err := s.note("SetBoot", id); err != nil {
		return err
	}
	return s.MemoryBackend.SetBoot(ctx, id, b, user)
}

func (s *spy) InsertMedia(ctx context.Context, id, image, user string) error {
	if err := s.note("InsertMedia", id); err != nil {
		return err
	}
	return s.MemoryBackend.InsertMedia(ctx, id, image, user)
}

func (s *spy) EjectMedia(ctx context.Context, id, user string) error {
	if err := s.note("EjectMedia", id); err != nil {
		return err
	}
	return s.MemoryBackend.EjectMedia(ctx, id, user)
}

// creds are basic-auth credentials; the zero value sends none.
type creds struct{ user, password string }

var (
	credsA  = creds{"admin-a", "secret-a"}
	credsB  = creds{"admin-b", "secret-b"}
	noCreds = creds{}
)

// response is an answer of the service under test.
type response struct {
	status int
	header http.Header
	raw    []byte
	// body is the JSON body decoded, nil when there is none.
	body map[string]any
}

// client talks to a Service over plain HTTP on loopback.
type client struct {
	t   testing.TB
	url string
}

func newClient(t testing.TB, b redfish.Backend) *client {
	t.Helper()
	return newClientWith(t, &redfish.Service{Backend: b})
}

func newClientWith(t testing.TB, h http.Handler) *client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &client{t: t, url: srv.URL}
}

// do sends a request; a body that is not a string or []byte is sent as JSON, with the JSON
// content type unless headers say otherwise (a nil body sends none).
func (c *client) do(method, path string, cr creds, body any, headers ...string) response {
	c.t.Helper()
	var rd io.Reader
	var ct string
	switch v := body.(type) {
	case nil:
	case string:
		rd, ct = strings.NewReader(v), "application/json"
	case []byte:
		rd, ct = bytes.NewReader(v), "application/json"
	default:
		data, err := json.Marshal(v)
		if err != nil {
			c.t.Fatal(err)
		}
		rd, ct = bytes.NewReader(data), "application/json"
	}
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.url+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	if cr != noCreds {
		req.SetBasicAuth(cr.user, cr.password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			c.t.Fatalf("%s %s: body %q is not a JSON object: %v", method, path, raw, err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
			c.t.Errorf("%s %s: Content-Type %q", method, path, ct)
		}
	}
	return r
}

// get fetches path with creds and wants 200.
func (c *client) get(path string, cr creds) map[string]any {
	c.t.Helper()
	r := c.do(http.MethodGet, path, cr, nil)
	if r.status != http.StatusOK {
		c.t.Fatalf("GET %s: %d %s", path, r.status, r.raw)
	}
	return r.body
}

// wantStatus fails unless r has the status.
func wantStatus(t testing.TB, what string, r response, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d; body %s", what, r.status, status, r.raw)
	}
	if status == http.StatusNoContent && len(r.raw) != 0 {
		t.Errorf("%s: 204 with a body %q", what, r.raw)
	}
}

// wantError checks that r is a Redfish error with the status whose messages have the ids (Base
// registry names, in order), and returns its messages.
func wantError(t testing.TB, what string, r response, status int, ids ...string) []map[string]any {
	t.Helper()
	wantStatus(t, what, r, status)
	e, ok := r.body["error"].(map[string]any)
	if !ok {
		t.Fatalf("%s: no error object in %s", what, r.raw)
	}
	infos, _ := e["@Message.ExtendedInfo"].([]any)
	var msgs []map[string]any
	var got []string
	for _, i := range infos {
		m, _ := i.(map[string]any)
		msgs = append(msgs, m)
		id, _ := m["MessageId"].(string)
		got = append(got, id)
		if m["Message"] == "" || m["Message"] == nil {
			t.Errorf("%s: message %v has no text", what, m)
		}
	}
	var want []string
	for _, id := range ids {
		want = append(want, "Base.1.16."+id)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s: message ids %v, want %v; body %s", what, got, want, r.raw)
	}
	if e["code"] != want[0] || e["message"] != msgs[0]["Message"] {
		t.Errorf("%s: error code %v message %v; want those of the first message", what, e["code"], e["message"])
	}
	return msgs
}

// at walks a decoded JSON document: keys for objects, ints for arrays.
func at(doc any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := doc.(map[string]any)
			doc = m[k]
		case int:
			a, _ := doc.([]any)
			if k >= len(a) {
				return nil
			}
			doc = a[k]
		}
	}
	return doc
}

// members returns a collection's member ids, checking its count.
func members(t testing.TB, doc map[string]any) []string {
	t.Helper()
	ms, _ := doc["Members"].([]any)
	ids := []string{}
	for _, m := range ms {
		ids = append(ids, at(m, "@odata.id").(string))
	}
	if n, _ := doc["Members@odata.count"].(float64); int(n) != len(ids) {
		t.Errorf("%v: Members@odata.count %v, %d members", doc["@odata.id"], doc["Members@odata.count"], len(ids))
	}
	return ids
}
