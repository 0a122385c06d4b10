package redfishclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// PowerState is a System's PowerState as the BMC reports it: PowerOn, PowerOff, PowerPoweringOn,
// PowerPoweringOff, or whatever else it says ("" when it says nothing).
type PowerState string

// The power states Redfish defines.
const (
	PowerOn          PowerState = "On"
	PowerOff         PowerState = "Off"
	PowerPoweringOn  PowerState = "PoweringOn"
	PowerPoweringOff PowerState = "PoweringOff"
)

// ResetType is a ComputerSystem.Reset ResetType.
type ResetType string

// The reset types Redfish defines; a BMC offers some of them (see System.Reset).
const (
	ResetOn               ResetType = "On"
	ResetForceOn          ResetType = "ForceOn"
	ResetForceOff         ResetType = "ForceOff"
	ResetGracefulShutdown ResetType = "GracefulShutdown"
	ResetForceRestart     ResetType = "ForceRestart"
	ResetGracefulRestart  ResetType = "GracefulRestart"
	ResetPowerCycle       ResetType = "PowerCycle"
	ResetPushPowerButton  ResetType = "PushPowerButton"
	ResetNmi              ResetType = "Nmi"
)

// BootOverride is a boot source override: the device the System boots from next (Once) or
// until changed (Continuous).
type BootOverride struct {
	// Target is BootSourceOverrideTarget: BootCd, BootHdd, BootPxe or BootNone.
	Target string
	// Enabled is BootSourceOverrideEnabled: BootOnce, BootContinuous or BootDisabled.
	Enabled string
	// Mode is BootSourceOverrideMode, BootModeUEFI or BootModeLegacy; empty leaves the BMC's.
	Mode string
}

// Boot override values, as Redfish spells them.
const (
	BootNone = "None"
	BootPxe  = "Pxe"
	BootCd   = "Cd"
	BootHdd  = "Hdd"

	BootDisabled   = "Disabled"
	BootOnce       = "Once"
	BootContinuous = "Continuous"

	BootModeUEFI   = "UEFI"
	BootModeLegacy = "Legacy"
)

// System is a ComputerSystem of the BMC. Its state is read anew by each call, as the machine
// changes under it.
type System struct {
	c *Client
	// Path is the System's resource path, e.g. "/redfish/v1/Systems/1".
	Path string
	// ID and UUID are the System's Id and UUID when it was found.
	ID, UUID string
}

// SystemStatus is what System.Status reads.
type SystemStatus struct {
	PowerState PowerState
	Boot       BootOverride
}

// serviceRoot is the part of the service root the client uses.
type serviceRoot struct {
	Systems  *link `json:"Systems"`
	Managers *link `json:"Managers"`
}

// systemResource is the part of a ComputerSystem the client uses.
type systemResource struct {
	ID         string `json:"Id"`
	UUID       string `json:"UUID"`
	PowerState string `json:"PowerState"`
	Boot       struct {
		Target         string   `json:"BootSourceOverrideTarget"`
		Enabled        string   `json:"BootSourceOverrideEnabled"`
		Mode           string   `json:"BootSourceOverrideMode"`
		TargetAllowed  []string `json:"BootSourceOverrideTarget@Redfish.AllowableValues"`
		EnabledAllowed []string `json:"BootSourceOverrideEnabled@Redfish.AllowableValues"`
		ModeAllowed    []string `json:"BootSourceOverrideMode@Redfish.AllowableValues"`
	} `json:"Boot"`
	VirtualMedia *link `json:"VirtualMedia"`
	Links        struct {
		ManagedBy []link `json:"ManagedBy"`
	} `json:"Links"`
	Actions map[string]rawJSON `json:"Actions"`
}

// root reads the service root.
func (c *Client) root(ctx context.Context) (serviceRoot, error) {
	var r serviceRoot
	_, err := c.get(ctx, rootPath, &r)
	return r, err
}

// System finds the ComputerSystem id names: by the last segment of its path, its Id or its UUID.
// An empty id means the BMC's only System; with several, the error lists them.
func (c *Client) System(ctx context.Context, id string) (*System, error) {
	r, err := c.root(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the BMC's service root: %w", err)
	}
	systemsPath := rootPath + "/Systems"
	if r.Systems != nil {
		if systemsPath, err = resourcePath(r.Systems.ID); err != nil {
			return nil, fmt.Errorf("service root: Systems: %w", err)
		}
	}
	var coll collection
	if _, err := c.get(ctx, systemsPath, &coll); err != nil {
		return nil, fmt.Errorf("listing the BMC's systems: %w", err)
	}
	paths, err := coll.members()
	if err != nil {
		return nil, fmt.Errorf("listing the BMC's systems: %w", err)
	}
	if len(paths) == 0 {
		return nil, errors.New("the BMC lists no systems (or none these credentials may see)")
	}
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = lastSegment(p)
	}
	var chosen string
	switch {
	case id == "" && len(paths) > 1:
		return nil, fmt.Errorf("the BMC has %d systems (%s): name one", len(paths), strings.Join(names, ", "))
	case id == "":
		chosen = paths[0]
	default:
		if i := slices.Index(names, id); i >= 0 {
			chosen = paths[i]
		}
	}
	if chosen != "" {
		sys, err := c.readSystem(ctx, chosen)
		if err != nil {
			return nil, err
		}
		return &System{c: c, Path: chosen, ID: sys.ID, UUID: sys.UUID}, nil
	}
	// Not a path's last segment: the id may be a System's Id or UUID.
	for _, p := range paths {
		sys, err := c.readSystem(ctx, p)
		if err != nil {
			return nil, err
		}
		if sys.ID == id || (sys.UUID != "" && strings.EqualFold(sys.UUID, id)) {
			return &System{c: c, Path: p, ID: sys.ID, UUID: sys.UUID}, nil
		}
	}
	return nil, fmt.Errorf("the BMC has no system %q (it has: %s)", id, strings.Join(names, ", "))
}

// readSystem reads a ComputerSystem and its ETag.
func (c *Client) readSystem(ctx context.Context, path string) (systemResource, error) {
	sys, _, err := c.readSystemTagged(ctx, path)
	return sys, err
}

func (c *Client) readSystemTagged(ctx context.Context, path string) (systemResource, string, error) {
	var sys systemResource
	etag, err := c.get(ctx, path, &sys)
	if err != nil {
		return sys, "", fmt.Errorf("reading system: %w", err)
	}
	return sys, etag, nil
}

// Status reads the System's power state and boot override.
func (s *System) Status(ctx context.Context) (SystemStatus, error) {
	sys, err := s.c.readSystem(ctx, s.Path)
	if err != nil {
		return SystemStatus{}, err
	}
	return SystemStatus{
		PowerState: PowerState(clean(sys.PowerState)),
		Boot:       BootOverride{Target: clean(sys.Boot.Target), Enabled: clean(sys.Boot.Enabled), Mode: clean(sys.Boot.Mode)},
	}, nil
}

// PowerState reads the System's power state.
func (s *System) PowerState(ctx context.Context) (PowerState, error) {
	st, err := s.Status(ctx)
	return st.PowerState, err
}

// Reset sends ComputerSystem.Reset with t. When the BMC advertises the reset types it allows
// (inline or in the action's ActionInfo), a type it does not list is refused before anything is
// sent, with the list in the error.
func (s *System) Reset(ctx context.Context, t ResetType) error {
	sys, err := s.c.readSystem(ctx, s.Path)
	if err != nil {
		return err
	}
	const name = "ComputerSystem.Reset"
	a, ok, err := parseAction(sys.Actions, name)
	switch {
	case err != nil:
		return fmt.Errorf("reset %s: %w", t, err)
	case !ok:
		return fmt.Errorf("reset %s: the system offers no %s action", t, name)
	}
	allowed, err := s.c.allowedValues(ctx, a, "ResetType")
	if err != nil {
		return fmt.Errorf("reset %s: %w", t, err)
	}
	if allowed != nil && !slices.Contains(allowed, string(t)) {
		return fmt.Errorf("reset: %w", notAllowedError("ResetType", string(t), allowed))
	}
	if err := s.c.post(ctx, a.Target, map[string]string{"ResetType": string(t)}); err != nil {
		return fmt.Errorf("reset %s: %w", t, err)
	}
	return nil
}

// allowedValues returns the values an action allows for a parameter, from the action itself or
// its ActionInfo; nil when the BMC says nothing of them.
func (c *Client) allowedValues(ctx context.Context, a action, param string) ([]string, error) {
	if v, ok := a.Allowable[param]; ok && len(v) > 0 {
		return v, nil
	}
	if a.ActionInfo == "" {
		return nil, nil
	}
	info, err := c.actionInfo(ctx, a)
	if err != nil {
		return nil, err
	}
	for _, p := range info.Parameters {
		if p.Name == param && len(p.AllowableValues) > 0 {
			return p.AllowableValues, nil
		}
	}
	return nil, nil
}

// actionInfo reads an action's ActionInfo.
func (c *Client) actionInfo(ctx context.Context, a action) (actionInfo, error) {
	var info actionInfo
	if _, err := c.get(ctx, a.ActionInfo, &info); err != nil {
		return info, fmt.Errorf("reading the action's ActionInfo: %w", err)
	}
	if len(info.Parameters) > maxMembers {
		info.Parameters = info.Parameters[:maxMembers]
	}
	for i := range info.Parameters {
		info.Parameters[i].Name = clean(info.Parameters[i].Name)
		for j, v := range info.Parameters[i].AllowableValues {
			info.Parameters[i].AllowableValues[j] = clean(v)
		}
	}
	return info, nil
}

// SetBootOverride sets the System's boot source override with a PATCH of Boot, sent with the
// System's ETag (If-Match) when the BMC gives one. Values the BMC advertises as allowable
// (BootSourceOverride*@Redfish.AllowableValues) are checked before anything is sent. Mode is sent
// only when set and different from the System's current mode: some BMCs refuse any PATCH that
// names it.
func (s *System) SetBootOverride(ctx context.Context, b BootOverride) error {
	if b.Target == "" {
		return errors.New("boot override: no target")
	}
	if b.Enabled == "" {
		b.Enabled = BootOnce
	}
	// A BMC whose ETag changed between the read and the PATCH (the System's state moved on)
	// answers 412: read it again, once.
	err := s.setBootOverride(ctx, b)
	var he *HTTPError
	if errors.As(err, &he) && he.StatusCode == http.StatusPreconditionFailed {
		err = s.setBootOverride(ctx, b)
	}
	return err
}

func (s *System) setBootOverride(ctx context.Context, b BootOverride) error {
	sys, etag, err := s.c.readSystemTagged(ctx, s.Path)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name, value string
		allowed     []string
	}{
		{"BootSourceOverrideTarget", b.Target, sys.Boot.TargetAllowed},
		{"BootSourceOverrideEnabled", b.Enabled, sys.Boot.EnabledAllowed},
		{"BootSourceOverrideMode", b.Mode, sys.Boot.ModeAllowed},
	} {
		if f.value != "" && len(f.allowed) > 0 && !slices.Contains(f.allowed, f.value) {
			return fmt.Errorf("boot override: %w", notAllowedError(f.name, f.value, cleanAll(f.allowed)))
		}
	}
	boot := map[string]string{"BootSourceOverrideTarget": b.Target, "BootSourceOverrideEnabled": b.Enabled}
	if b.Mode != "" && b.Mode != sys.Boot.Mode {
		boot["BootSourceOverrideMode"] = b.Mode
	}
	if err := s.c.patch(ctx, s.Path, map[string]any{"Boot": boot}, etag); err != nil {
		return fmt.Errorf("boot override %s/%s: %w", b.Target, b.Enabled, err)
	}
	return nil
}

func cleanAll(values []string) []string {
	out := make([]string, 0, min(len(values), maxMembers))
	for i, v := range values {
		if i == maxMembers {
			break
		}
		out = append(out, clean(v))
	}
	return out
}
