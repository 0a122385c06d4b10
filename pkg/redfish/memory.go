package redfish

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"sync"
)

// MemoryBackend is a Backend that keeps its systems in memory and does what a BMC would with no
// machine behind it: power and boot override change at once, a one-time boot override is used up
// by the next power-on or restart, media is attached without being fetched. It is for tests and
// benchmarks (and a mock datacenter without VMs); it records the changes made, so a test can see
// what a client did. It is safe for concurrent use.
type MemoryBackend struct {
	mu      sync.Mutex
	systems map[string]*memSystem
	order   []string
	calls   []Call
}

// memSystem is one system of a MemoryBackend with its credentials.
type memSystem struct {
	System
	user, password string
}

// Call is a change a client made through a MemoryBackend.
type Call struct {
	// Op is "Reset", "SetBoot", "InsertMedia" or "EjectMedia".
	Op     string
	System string
	// User is the BMC user who asked.
	User string
	// Arg is the reset type, the boot override as "Target/Enabled/Mode", or the image URL.
	Arg string
}

// maxCalls bounds the calls a MemoryBackend remembers (the latest), so that a long benchmark or
// a long-running mock does not grow without end.
const maxCalls = 4096

// NewMemoryBackend returns an empty MemoryBackend.
func NewMemoryBackend() *MemoryBackend {
	return &MemoryBackend{systems: map[string]*memSystem{}}
}

// Add adds a system whose BMC accepts user and password. Its id must be valid (ValidID) and new.
func (m *MemoryBackend) Add(sys System, user, password string) error {
	if !ValidID(sys.ID) {
		return fmt.Errorf("invalid system id %q", sys.ID)
	}
	if user == "" {
		return fmt.Errorf("system %s: empty user", sys.ID)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.systems[sys.ID]; ok {
		return fmt.Errorf("system %s exists", sys.ID)
	}
	sys.MACAddresses = slices.Clone(sys.MACAddresses)
	m.systems[sys.ID] = &memSystem{System: sys, user: user, password: password}
	m.order = append(m.order, sys.ID)
	return nil
}

// Calls returns the changes made so far (the latest few thousand), oldest first.
func (m *MemoryBackend) Calls() []Call {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

func (m *MemoryBackend) record(c Call) {
	if len(m.calls) == maxCalls {
		m.calls = slices.Delete(m.calls, 0, maxCalls/2)
	}
	m.calls = append(m.calls, c)
}

// Authorize implements Backend: the system's user and password, compared in constant time.
func (m *MemoryBackend) Authorize(_ context.Context, systemID, user, password string) bool {
	m.mu.Lock()
	s, ok := m.systems[systemID]
	m.mu.Unlock()
	if !ok {
		return false
	}
	u := subtle.ConstantTimeCompare([]byte(user), []byte(s.user))
	p := subtle.ConstantTimeCompare([]byte(password), []byte(s.password))
	return u&p == 1
}

// Systems implements Backend: the ids in the order they were added.
func (m *MemoryBackend) Systems(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.order), nil
}

// System implements Backend.
func (m *MemoryBackend) System(_ context.Context, id string) (System, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.systems[id]
	if !ok {
		return System{}, ErrNotFound
	}
	sys := s.System
	sys.MACAddresses = slices.Clone(sys.MACAddresses)
	return sys, nil
}

// Reset implements Backend: the power changes at once; a restart, or powering on a system that
// is off, boots it and so uses up a one-time boot override.
func (m *MemoryBackend) Reset(_ context.Context, id string, t ResetType, user string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.systems[id]
	if !ok {
		return ErrNotFound
	}
	boots := false
	switch t {
	case ResetOn:
		boots = s.PowerState != PowerOn
		s.PowerState = PowerOn
	case ResetForceOff, ResetGracefulShutdown:
		s.PowerState = PowerOff
	case ResetForceRestart, ResetGracefulRestart:
		boots = true
		s.PowerState = PowerOn
	default:
		return &BadRequestError{Message: fmt.Sprintf("reset type %q is not supported", t)}
	}
	if boots && s.Boot.Enabled == BootOnce {
		s.Boot.Enabled, s.Boot.Target = BootDisabled, BootTargetNone
	}
	m.record(Call{Op: "Reset", System: id, User: user, Arg: string(t)})
	return nil
}

// SetBoot implements Backend.
func (m *MemoryBackend) SetBoot(_ context.Context, id string, b Boot, user string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.systems[id]
	if !ok {
		return ErrNotFound
	}
	if b.Target != "" {
		s.Boot.Target = b.Target
	}
	if b.Enabled != "" {
		s.Boot.Enabled = b.Enabled
	}
	if b.Mode != "" {
		s.Boot.Mode = b.Mode
	}
	m.record(Call{Op: "SetBoot", System: id, User: user, Arg: b.Target + "/" + b.Enabled + "/" + b.Mode})
	return nil
}

// InsertMedia implements Backend: a drive that holds media refuses another with ErrConflict, as
// many BMCs do (eject first).
func (m *MemoryBackend) InsertMedia(_ context.Context, id, imageURL, user string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.systems[id]
	if !ok {
		return ErrNotFound
	}
	if s.Media.Inserted {
		return ErrConflict
	}
	s.Media = Media{Image: imageURL, Inserted: true, WriteProtected: true}
	m.record(Call{Op: "InsertMedia", System: id, User: user, Arg: imageURL})
	return nil
}

// EjectMedia implements Backend.
func (m *MemoryBackend) EjectMedia(_ context.Context, id, user string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.systems[id]
	if !ok {
		return ErrNotFound
	}
	s.Media = Media{}
	m.record(Call{Op: "EjectMedia", System: id, User: user})
	return nil
}
