package redfish

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// powerState is the PowerState shown: one Redfish knows, or null.
func powerState(p PowerState) any {
	switch p {
	case PowerOn, PowerOff, PowerPoweringOn, PowerPoweringOff:
		return p
	}
	return nil
}

// bootShown is the boot override shown: the Backend's, with Redfish's defaults for empty fields.
func bootShown(b Boot) Boot {
	if b.Target == "" {
		b.Target = BootTargetNone
	}
	if b.Enabled == "" {
		b.Enabled = BootDisabled
	}
	if b.Mode == "" {
		b.Mode = BootModeUEFI
	}
	return b
}

func (s *Service) getSystem(req *request) (any, error) {
	sys, err := s.system(req)
	if err != nil {
		return nil, err
	}
	name := sys.Name
	if name == "" {
		name = sys.ID
	}
	boot := bootShown(sys.Boot)
	resets := ResetTypes()
	return map[string]any{
		"@odata.id":   req.base,
		"@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
		"Id":          sys.ID,
		"Name":        name,
		"UUID":        sys.UUID,
		// The simulator stands in for bare metal.
		"SystemType":   "Physical",
		"Manufacturer": "Stargate",
		"Model":        "Simulated server",
		"PowerState":   powerState(sys.PowerState),
		"Status":       enabledOK,
		"Boot": map[string]any{
			"BootSourceOverrideTarget":                         boot.Target,
			"BootSourceOverrideEnabled":                        boot.Enabled,
			"BootSourceOverrideMode":                           boot.Mode,
			"BootSourceOverrideTarget@Redfish.AllowableValues": bootTargets,
		},
		"ProcessorSummary":   map[string]any{"Count": sys.CPUs, "Status": enabledOK},
		"MemorySummary":      map[string]any{"TotalSystemMemoryGiB": float64(sys.MemoryMiB) / 1024, "Status": enabledOK},
		"EthernetInterfaces": link{req.base + "/EthernetInterfaces"},
		"VirtualMedia":       link{req.base + "/VirtualMedia"},
		"Links":              map[string]any{"ManagedBy": []link{{managersPath + "/" + sys.ID}}},
		"Actions": map[string]any{
			"#" + resetAction: map[string]any{
				"target":                            req.base + "/Actions/" + resetAction,
				"ResetType@Redfish.AllowableValues": resets,
			},
		},
	}, nil
}

// systemReadOnly are the System's properties a PATCH may not set (anything else but Boot is
// unknown).
var systemReadOnly = []string{"@odata.id", "@odata.type", "Id", "Name", "UUID", "SystemType", "Manufacturer", "Model", "PowerState",
	"Status", "ProcessorSummary", "MemorySummary", "EthernetInterfaces", "VirtualMedia", "Links", "Actions"}

func (s *Service) patchSystem(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return errorf(http.StatusBadRequest, msgEmptyJSON())
	}
	var b Boot
	var msgs []message
	for _, k := range body.keys() {
		switch {
		case k == "Boot":
			var m []message
			b, m = parseBoot(body[k])
			msgs = append(msgs, m...)
		case slices.Contains(systemReadOnly, k):
			msgs = append(msgs, msgPropertyNotWritable(k))
		default:
			msgs = append(msgs, msgPropertyUnknown(k))
		}
	}
	if len(msgs) > 0 {
		return &apiError{status: http.StatusBadRequest, msgs: msgs}
	}
	if b == (Boot{}) {
		return errorf(http.StatusBadRequest, msgEmptyJSON())
	}
	if err := s.Backend.SetBoot(req.ctx, req.id, b, req.user); err != nil {
		return err
	}
	s.Log.V(1).Info("Redfish boot override set", "system", req.id, "user", req.user, "target", b.Target, "enabled", b.Enabled, "mode", b.Mode)
	return nil
}

// parseBoot reads a PATCH's Boot object; the messages say what is wrong with it.
func parseBoot(raw json.RawMessage) (Boot, []message) {
	var obj object
	if raw = json.RawMessage(strings.TrimSpace(string(raw))); len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &obj) != nil {
		return Boot{}, []message{msgPropertyValueTypeError(text(raw), "Boot")}
	}
	var b Boot
	var msgs []message
	for _, k := range obj.keys() {
		var field *string
		var allowed []string
		switch k {
		case "BootSourceOverrideTarget":
			field, allowed = &b.Target, bootTargets
		case "BootSourceOverrideEnabled":
			field, allowed = &b.Enabled, bootEnabled
		case "BootSourceOverrideMode":
			field, allowed = &b.Mode, bootModes
		default:
			msgs = append(msgs, msgPropertyUnknown("Boot", k))
			continue
		}
		v, ok := jsonString(obj[k])
		switch {
		case !ok:
			msgs = append(msgs, msgPropertyValueTypeError(text(obj[k]), "Boot", k))
		case !slices.Contains(allowed, v):
			m := msgPropertyValueNotInList(v, "Boot", k)
			m.resolution = "Choose one of " + strings.Join(allowed, ", ") + " and resubmit the request."
			msgs = append(msgs, m)
		default:
			*field = v
		}
	}
	return b, msgs
}

func (s *Service) postReset(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	for _, k := range body.keys() {
		if k != "ResetType" {
			return errorf(http.StatusBadRequest, msgActionParameterUnknown(resetAction, k))
		}
	}
	raw, ok := body["ResetType"]
	if !ok {
		return errorf(http.StatusBadRequest, msgActionParameterMissing(resetAction, "ResetType"))
	}
	v, ok := jsonString(raw)
	if !ok {
		return errorf(http.StatusBadRequest, msgActionParameterValueTypeError(text(raw), "ResetType", resetAction))
	}
	t := ResetType(v)
	if !slices.Contains(ResetTypes(), t) {
		m := msgActionParameterValueNotInList(v, "ResetType", resetAction)
		m.resolution = fmt.Sprintf("Choose one of %v and resubmit the request.", ResetTypes())
		return errorf(http.StatusBadRequest, m)
	}
	if err := s.Backend.Reset(req.ctx, req.id, t, req.user); err != nil {
		return err
	}
	s.Log.V(1).Info("Redfish reset", "system", req.id, "user", req.user, "resetType", t)
	return nil
}

func (s *Service) getNICs(req *request) (any, error) {
	sys, err := s.system(req)
	if err != nil {
		return nil, err
	}
	members := make([]string, len(sys.MACAddresses))
	for i := range sys.MACAddresses {
		members[i] = req.base + "/EthernetInterfaces/" + nicIDPrefix + strconv.Itoa(i)
	}
	return newCollection(req.base+"/EthernetInterfaces", "EthernetInterfaceCollection", "Ethernet Interface Collection", members), nil
}

func (s *Service) getNIC(req *request, nic string) (any, error) {
	sys, err := s.system(req)
	if err != nil {
		return nil, err
	}
	i, err := strconv.Atoi(strings.TrimPrefix(nic, nicIDPrefix))
	if !strings.HasPrefix(nic, nicIDPrefix) || err != nil || i < 0 || i >= len(sys.MACAddresses) || nic != nicIDPrefix+strconv.Itoa(i) {
		return nil, errorf(http.StatusNotFound, msgResourceNotFound("EthernetInterface", nic))
	}
	mac := strings.ToLower(sys.MACAddresses[i])
	return map[string]any{
		"@odata.id":           req.base + "/EthernetInterfaces/" + nic,
		"@odata.type":         "#EthernetInterface.v1_4_0.EthernetInterface",
		"Id":                  nic,
		"Name":                "Ethernet Interface " + nic,
		"MACAddress":          mac,
		"PermanentMACAddress": mac,
		"InterfaceEnabled":    true,
		"LinkStatus":          "LinkUp",
		"Status":              enabledOK,
	}, nil
}
