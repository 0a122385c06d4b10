// Package mockdc is a fake datacenter: an HTTP API that accepts repaves and reports progress over
// time, with configurable delays and failure injection, and a Provider that drives it. It stands
// in for a real datacenter API so the controller core can be tested fast and at scale, without
// QEMU — it is a deliberate fake, not a simulator of hardware.
package mockdc

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// IgnoreACPIMarker in a profile's user-data makes the mock machine ignore the ACPI power button,
// so a powerOff has to force it off after its grace period.
const IgnoreACPIMarker = "mockdc:ignore-acpi"

// FailMarker in a profile's user-data makes the mock datacenter fail that step, e.g.
// "# mockdc:fail=GuestReady". It is how tests and demos inject failures through the real API.
const FailMarker = "mockdc:fail="

// Steps are the steps of a mock repave, in order: the shared stargatev1.RepaveSteps, so the mock
// reports exactly the simulator's steps. The name stays for callers (tests) that iterate over it.
var Steps = stargatev1.RepaveSteps

// Config tunes the fake datacenter.
type Config struct {
	// StepDelay is how long each step takes.
	StepDelay time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the fake datacenter API.
type Server struct {
	cfg Config

	mu       sync.Mutex
	machines map[string]*machine
	// installs counts installations per server, kept when a machine is released.
	installs map[string]int
	nextIP   int
	// Requests counts API calls, for tests and benchmarks.
	requests int
	// overlaps counts repaves that replaced an installation still in progress: a double-booked
	// server. The controller must keep this at zero.
	overlaps int
	// maxInstalling is the most installations ever in progress at once, counted whenever one starts.
	maxInstalling int
	// started are the machines whose installation may still be in progress: the only ones
	// installing() looks at, so that counting stays cheap in a fleet of thousands of machines.
	started map[string]struct{}
}

// MaxInstalling returns the most installations that were ever in progress at the same time, as
// recorded each time an installation started: what --max-parallel must bound.
func (s *Server) MaxInstalling() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInstalling
}

// installing counts the machines whose current installation is neither done nor failed, and
// forgets those that finished.
func (s *Server) installing() int {
	n := 0
	for key := range s.started {
		m := s.machines[key]
		if m == nil {
			delete(s.started, key)
			continue
		}
		if rep := s.report(key); m.InstanceID != "" && m.Running && !rep.Done && !rep.Failed {
			n++
		} else {
			delete(s.started, key)
		}
	}
	return n
}

// Overlaps returns how many repaves started while the server's previous one was unfinished.
func (s *Server) Overlaps() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overlaps
}

// Repaves returns how many installations a server had on this datacenter, including before it
// was released.
func (s *Server) Repaves(namespace, name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.installs[namespace+"/"+name]
}

type machine struct {
	InstanceID string
	Started    time.Time
	// StepDelay is how long each step of this installation takes (the datacenter's, when it started).
	StepDelay time.Duration
	FailStep  string
	Running   bool
	// ShutdownAt is when a graceful shutdown completes (zero: none asked).
	ShutdownAt time.Time
	// IgnoresACPI marks a guest that ignores the power button (IgnoreACPIMarker in its user-data).
	IgnoresACPI bool
	// PowerOns counts boots from disk (power-on), apart from installations.
	PowerOns int
	// Boot is the boot override a BMC set; BootedFrom the device of the last power-on.
	Boot       BootReport
	BootedFrom string
	// Media is the virtual CD.
	Media   MediaReport
	IP, MAC string
	// Repaves counts installations.
	Repaves int
	// Faults strike this installation at their steps; PowerLostAt is when a PowerLoss struck
	// (the installation makes no progress after it).
	Faults      []FaultBody
	PowerLostAt time.Time
	PowerLostIn string
}

// RepaveBody is the body of PUT /v1/servers/{namespace}/{name}/repave.
type RepaveBody struct {
	InstanceID string `json:"instanceID"`
	UserData   string `json:"userData"`
	MAC        string `json:"mac,omitempty"`
	// Faults to make strike this installation (see FaultBody).
	Faults []FaultBody `json:"faults,omitempty"`
}

// StepReport is one step in a progress report.
type StepReport struct {
	Type    string `json:"type"`
	State   string `json:"state"`
	Message string `json:"message,omitempty"`
}

// ServerReport is the body of GET /v1/servers/{namespace}/{name}.
type ServerReport struct {
	Exists     bool         `json:"exists"`
	Running    bool         `json:"running"`
	InstanceID string       `json:"instanceID,omitempty"`
	IP         string       `json:"ip,omitempty"`
	MAC        string       `json:"mac,omitempty"`
	Steps      []StepReport `json:"steps,omitempty"`
	Done       bool         `json:"done"`
	Failed     bool         `json:"failed"`
	// Reason of a failure, when the datacenter knows one.
	Reason     string      `json:"reason,omitempty"`
	Message    string      `json:"message,omitempty"`
	Repaves    int         `json:"repaves"`
	PowerOns   int         `json:"powerOns"`
	Boot       BootReport  `json:"boot"`
	BootedFrom string      `json:"bootedFrom,omitempty"`
	Media      MediaReport `json:"media"`
}

// BootReport is a machine's boot override (PUT /v1/servers/{namespace}/{name}/boot).
type BootReport struct {
	Target  string `json:"target,omitempty"`
	Enabled string `json:"enabled,omitempty"`
	Mode    string `json:"mode,omitempty"`
}

// MediaReport is a machine's virtual CD (PUT/DELETE /v1/servers/{namespace}/{name}/media).
type MediaReport struct {
	Image    string `json:"image,omitempty"`
	Inserted bool   `json:"inserted"`
}

// NewServer returns a fake datacenter.
func NewServer(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg, machines: map[string]*machine{}, installs: map[string]int{}, started: map[string]struct{}{}, nextIP: 11}
}

// SetStepDelay changes how long each step of the repaves that start from now on takes.
func (s *Server) SetStepDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.StepDelay = d
}

// Requests returns how many API calls were served.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// ServeHTTP routes /v1/servers/{namespace}/{name}[/repave|/power-off].
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/servers/"), "/")
	if !strings.HasPrefix(r.URL.Path, "/v1/servers/") || len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	key := parts[0] + "/" + parts[1]
	action := ""
	if len(parts) > 2 {
		action = parts[2]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	switch {
	case r.Method == http.MethodGet && action == "":
		writeJSON(w, s.report(key))
	case r.Method == http.MethodPut && action == "repave":
		var body RepaveBody
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.InstanceID == "" {
			http.Error(w, "body must be JSON with an instanceID", http.StatusBadRequest)
			return
		}
		m := s.machines[key]
		if m == nil {
			m = &machine{IP: fmt.Sprintf("10.99.%d.%d", s.nextIP/250, 1+s.nextIP%250), MAC: body.MAC,
				Boot: BootReport{Target: "None", Enabled: "Disabled", Mode: "Legacy"}}
			if m.MAC == "" {
				m.MAC = fmt.Sprintf("52:54:00:99:%02x:%02x", s.nextIP/256, s.nextIP%256)
			}
			s.nextIP++
			s.machines[key] = m
		}
		if m.InstanceID != body.InstanceID { // a new installation; the same one is idempotent
			if prev := s.report(key); m.InstanceID != "" && m.Running && !prev.Done && !prev.Failed {
				s.overlaps++
			}
			m.InstanceID, m.Started, m.Running, m.FailStep = body.InstanceID, s.cfg.Now(), true, failStep(body.UserData)
			m.StepDelay = s.cfg.StepDelay
			m.Faults, m.PowerLostAt, m.PowerLostIn = body.Faults, time.Time{}, ""
			m.ShutdownAt, m.IgnoresACPI = time.Time{}, strings.Contains(body.UserData, IgnoreACPIMarker)
			m.Repaves++
			s.installs[key]++
			s.started[key] = struct{}{}
			s.maxInstalling = max(s.maxInstalling, s.installing())
		}
		w.WriteHeader(http.StatusAccepted)
		writeJSON(w, s.report(key))
	case r.Method == http.MethodPost && action == "power-off":
		if m := s.machines[key]; m != nil {
			m.Running, m.ShutdownAt = false, time.Time{}
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && action == "shutdown":
		// The guest shuts down one StepDelay after the ACPI button, unless its user-data says it
		// ignores the button.
		if m := s.machines[key]; m != nil && m.Running && m.ShutdownAt.IsZero() && !m.IgnoresACPI {
			m.ShutdownAt = s.cfg.Now().Add(s.cfg.StepDelay)
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && action == "power-on":
		m := s.machines[key]
		if m == nil || m.InstanceID == "" {
			http.Error(w, "no installation to boot", http.StatusConflict)
			return
		}
		if !m.Running {
			m.Running, m.ShutdownAt = true, time.Time{}
			m.PowerOns++
			m.BootedFrom = "Hdd"
			if m.Boot.Enabled == "Once" || m.Boot.Enabled == "Continuous" {
				m.BootedFrom = m.Boot.Target
			}
			if m.Boot.Enabled == "Once" {
				m.Boot.Enabled = "Disabled"
			}
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPut && action == "boot":
		m := s.machines[key]
		var b BootReport
		if m == nil || json.NewDecoder(r.Body).Decode(&b) != nil {
			http.Error(w, "unknown machine or bad body", http.StatusBadRequest)
			return
		}
		if b.Target != "" {
			m.Boot.Target = b.Target
		}
		if b.Enabled != "" {
			m.Boot.Enabled = b.Enabled
		}
		if b.Mode != "" {
			m.Boot.Mode = b.Mode
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPut && action == "media":
		m := s.machines[key]
		var body MediaReport
		if m == nil || json.NewDecoder(r.Body).Decode(&body) != nil || body.Image == "" {
			http.Error(w, "unknown machine or bad body", http.StatusBadRequest)
			return
		}
		m.Media = MediaReport{Image: body.Image, Inserted: true}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodDelete && action == "media":
		if m := s.machines[key]; m != nil {
			m.Media = MediaReport{}
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodDelete && action == "":
		delete(s.machines, key)
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func failStep(userData string) string {
	i := strings.Index(userData, FailMarker)
	if i < 0 {
		return ""
	}
	rest := userData[i+len(FailMarker):]
	if j := strings.IndexAny(rest, " \n\t"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// report computes progress from the time since the repave started: step i is done after
// (i+1)*StepDelay.
func (s *Server) report(key string) ServerReport {
	m := s.machines[key]
	if m == nil {
		return ServerReport{}
	}
	if !m.ShutdownAt.IsZero() && !s.cfg.Now().Before(m.ShutdownAt) {
		m.Running, m.ShutdownAt = false, time.Time{}
	}
	rep := ServerReport{Exists: true, Running: m.Running, InstanceID: m.InstanceID, IP: m.IP, MAC: m.MAC, Repaves: m.Repaves, PowerOns: m.PowerOns,
		Boot: m.Boot, BootedFrom: m.BootedFrom, Media: m.Media}
	if m.InstanceID == "" {
		return rep
	}
	now := s.cfg.Now()
	rep.Done = true
	start := m.Started // of the current step
	for _, step := range Steps {
		o := outcome(m.Faults, step, m.StepDelay)
		if o.powerLoss && m.PowerLostAt.IsZero() && m.Running && !rep.Failed && !now.Before(start) {
			m.Running, m.ShutdownAt, m.PowerLostAt, m.PowerLostIn = false, time.Time{}, start, step
		}
		if !m.PowerLostAt.IsZero() && m.PowerLostAt.Before(now) {
			now = m.PowerLostAt // a machine without power makes no progress
		}
		doneAt := start.Add(m.StepDelay + o.extra)
		sr := StepReport{Type: step}
		switch {
		case rep.Failed:
			sr.State = "Pending"
			rep.Done = false
		case !now.Before(doneAt) && (step == m.FailStep || o.message != ""):
			sr.State, sr.Message = "Failed", "mock datacenter: injected failure at "+step
			if o.message != "" {
				sr.Message, rep.Reason = o.message, o.reason
			}
			rep.Failed, rep.Done, rep.Message = true, false, sr.Message
		case !now.Before(doneAt):
			sr.State, sr.Message = "Done", "mock datacenter: "+step+" done"
		case !now.Before(start):
			sr.State, sr.Message = "InProgress", "mock datacenter: "+step+" in progress"
			rep.Done = false
		default:
			sr.State = "Pending"
			rep.Done = false
		}
		rep.Steps = append(rep.Steps, sr)
		start = doneAt
	}
	rep.Running = m.Running // a PowerLoss may just have struck
	switch {
	case !m.Running && !rep.Done && !rep.Failed && m.PowerLostIn != "":
		rep.Failed, rep.Reason, rep.Message = true, "PowerLost", "mock datacenter: the server lost power during "+m.PowerLostIn
	case !m.Running && !rep.Done && !rep.Failed:
		rep.Failed, rep.Message = true, "mock datacenter: the server was powered off during the repave"
	}
	return rep
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
