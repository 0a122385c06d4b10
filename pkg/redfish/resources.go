package redfish

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
)

// link is a Redfish reference to another resource.
type link struct {
	ID string `json:"@odata.id"`
}

// status is a resource's Redfish Status.
type status struct {
	State  string `json:"State"`
	Health string `json:"Health,omitempty"`
}

var enabledOK = status{State: "Enabled", Health: "OK"}

// collection is a Redfish resource collection.
type collection struct {
	ID      string `json:"@odata.id"`
	Type    string `json:"@odata.type"`
	Name    string `json:"Name"`
	Count   int    `json:"Members@odata.count"`
	Members []link `json:"Members"`
}

func newCollection(id, typ, name string, members []string) collection {
	c := collection{ID: id, Type: "#" + typ + "." + typ, Name: name, Count: len(members), Members: make([]link, 0, len(members))}
	for _, m := range members {
		c.Members = append(c.Members, link{m})
	}
	return c
}

func (s *Service) getRoot(*request) (any, error) {
	uuid := s.UUID
	if uuid == "" {
		uuid = defaultUUID
	}
	return map[string]any{
		"@odata.id":      root + "/",
		"@odata.type":    "#ServiceRoot.v1_5_0.ServiceRoot",
		"Id":             "RootService",
		"Name":           "Stargate Redfish Service",
		"Product":        "Stargate",
		"Vendor":         "Stargate",
		"RedfishVersion": redfishVer,
		"UUID":           uuid,
		"Systems":        link{systemsPath},
		"Managers":       link{managersPath},
		"SessionService": link{sessionSvc},
		"Links":          map[string]any{"Sessions": link{sessionsPath}},
	}, nil
}

func (s *Service) getSessionService(*request) (any, error) {
	return map[string]any{
		"@odata.id":      sessionSvc,
		"@odata.type":    "#SessionService.v1_1_8.SessionService",
		"Id":             "SessionService",
		"Name":           "Session Service",
		"Description":    "Sessions are not offered: use HTTP basic authentication.",
		"ServiceEnabled": false,
		"SessionTimeout": 30,
		"Status":         status{State: "Disabled"},
		"Sessions":       link{sessionsPath},
	}, nil
}

func (s *Service) getSessions(*request) (any, error) {
	return newCollection(sessionsPath, "SessionCollection", "Sessions", nil), nil
}

func (s *Service) getSystems(req *request) (any, error) {
	ids, err := s.authorizedIDs(req)
	if err != nil {
		return nil, err
	}
	members := make([]string, len(ids))
	for i, id := range ids {
		members[i] = systemsPath + "/" + id
	}
	return newCollection(systemsPath, "ComputerSystemCollection", "Computer System Collection", members), nil
}

func (s *Service) getManagers(req *request) (any, error) {
	ids, err := s.authorizedIDs(req)
	if err != nil {
		return nil, err
	}
	members := make([]string, len(ids))
	for i, id := range ids {
		members[i] = managersPath + "/" + id
	}
	return newCollection(managersPath, "ManagerCollection", "Manager Collection", members), nil
}

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

func (s *Service) getManager(req *request) (any, error) {
	sys, err := s.system(req)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"@odata.id":       req.base,
		"@odata.type":     "#Manager.v1_5_0.Manager",
		"Id":              sys.ID,
		"Name":            "BMC of " + sys.ID,
		"ManagerType":     "BMC",
		"Model":           "Stargate simulated BMC",
		"FirmwareVersion": "1.0",
		"UUID":            derivedUUID("manager/" + sys.ID),
		"Status":          enabledOK,
		"VirtualMedia":    link{req.base + "/VirtualMedia"},
		"Links":           map[string]any{"ManagerForServers": []link{{systemsPath + "/" + sys.ID}}},
	}, nil
}

func (s *Service) getMediaCollection(req *request) (any, error) {
	if _, err := s.system(req); err != nil {
		return nil, err
	}
	return newCollection(req.base+"/VirtualMedia", "VirtualMediaCollection", "Virtual Media Collection", []string{req.base + "/VirtualMedia/" + mediaID}), nil
}

func (s *Service) getMedia(req *request) (any, error) {
	sys, err := s.system(req)
	if err != nil {
		return nil, err
	}
	m := sys.Media
	self := req.base + "/VirtualMedia/" + mediaID
	var image, imageName any
	connected := "NotConnected"
	if m.Image != "" {
		image, imageName = m.Image, imageNameOf(m.Image)
	}
	if m.Inserted {
		connected = "URI"
	}
	return map[string]any{
		"@odata.id":      self,
		"@odata.type":    "#VirtualMedia.v1_3_0.VirtualMedia",
		"Id":             mediaID,
		"Name":           "Virtual CD",
		"MediaTypes":     []string{"CD", "DVD"},
		"Image":          image,
		"ImageName":      imageName,
		"Inserted":       m.Inserted,
		"WriteProtected": m.WriteProtected || !m.Inserted,
		"ConnectedVia":   connected,
		"TransferMethod": "Stream",
		"Actions": map[string]any{
			"#" + insertAction: map[string]string{"target": self + "/Actions/" + insertAction},
			"#" + ejectAction:  map[string]string{"target": self + "/Actions/" + ejectAction},
		},
	}, nil
}

// imageNameOf is the file name an image URL ends in.
func imageNameOf(imageURL string) string {
	u, err := url.Parse(imageURL)
	if err != nil {
		return ""
	}
	if name := path.Base(u.Path); name != "/" && name != "." {
		return name
	}
	return ""
}

// checkImageURL reports whether an image URL a client sent may be inserted, and its scheme: it
// must be an absolute http or https URL of at most maxImageURL bytes, without
// credentials (they would be shown back in Image) and without spaces or control characters.
func checkImageURL(v string) (scheme string, ok bool) {
	if len(v) > maxImageURL || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", false
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Opaque != "" {
		return "", false
	}
	return u.Scheme, true
}

// postInsertMedia serves InsertMedia. Of its parameters, those the Backend does not take must have
// the values it implies: Inserted and WriteProtected true, TransferProtocolType the URL's scheme,
// TransferMethod Stream, no credentials.
func (s *Service) postInsertMedia(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	raw, ok := body["Image"]
	if !ok {
		return errorf(http.StatusBadRequest, msgActionParameterMissing(insertAction, "Image"))
	}
	image, ok := jsonString(raw)
	if !ok {
		return errorf(http.StatusBadRequest, msgActionParameterValueTypeError(text(raw), "Image", insertAction))
	}
	scheme, ok := checkImageURL(image)
	if !ok {
		m := msgActionParameterValueFormatError(image, "Image", insertAction)
		m.resolution = "Give an absolute http:// or https:// URL without credentials and resubmit the request."
		return errorf(http.StatusBadRequest, m)
	}
	for _, k := range body.keys() {
		v := body[k]
		switch k {
		case "Image":
		case "Inserted", "WriteProtected":
			// A virtual CD is read-only and an image is inserted as it is attached.
			b, ok := jsonBool(v)
			if !ok {
				return errorf(http.StatusBadRequest, msgActionParameterValueTypeError(text(v), k, insertAction))
			}
			if !b {
				return errorf(http.StatusBadRequest, msgActionParameterValueNotInList("false", k, insertAction))
			}
		case "TransferProtocolType":
			if p, ok := jsonString(v); !ok || p != strings.ToUpper(scheme) {
				return errorf(http.StatusBadRequest, msgActionParameterValueNotInList(text(v), k, insertAction))
			}
		case "TransferMethod":
			if m, ok := jsonString(v); !ok || m != "Stream" {
				return errorf(http.StatusBadRequest, msgActionParameterValueNotInList(text(v), k, insertAction))
			}
		case "UserName", "Password":
			// Credentials for the image server are not supported; empty ones are harmless.
			if str, ok := jsonString(v); (!ok || str != "") && !isNull(v) {
				return errorf(http.StatusBadRequest, msgActionParameterNotSupported(k, insertAction))
			}
		default:
			return errorf(http.StatusBadRequest, msgActionParameterUnknown(insertAction, k))
		}
	}
	return s.insert(req, image)
}

func (s *Service) insert(req *request, image string) error {
	if err := s.Backend.InsertMedia(req.ctx, req.id, image, req.user); err != nil {
		return err
	}
	s.Log.V(1).Info("Redfish virtual media inserted", "system", req.id, "user", req.user, "image", image)
	return nil
}

func (s *Service) eject(req *request) error {
	if err := s.Backend.EjectMedia(req.ctx, req.id, req.user); err != nil {
		return err
	}
	s.Log.V(1).Info("Redfish virtual media ejected", "system", req.id, "user", req.user)
	return nil
}

func (s *Service) postEjectMedia(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	if len(body) > 0 {
		return errorf(http.StatusBadRequest, msgActionParameterUnknown(ejectAction, body.keys()[0]))
	}
	return s.eject(req)
}

// patchMedia is the other way some clients attach media: a PATCH of Image (with Inserted and
// WriteProtected true) inserts it, a PATCH of Image to null or "" (or Inserted to false) ejects.
func (s *Service) patchMedia(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return errorf(http.StatusBadRequest, msgEmptyJSON())
	}
	var image string
	var eject bool
	if raw, ok := body["Image"]; ok {
		if v, ok := jsonString(raw); ok {
			image = v
		} else if !isNull(raw) {
			return errorf(http.StatusBadRequest, msgPropertyValueTypeError(text(raw), "Image"))
		}
		eject = image == ""
	}
	var msgs []message
	for _, k := range body.keys() {
		v := body[k]
		switch k {
		case "Image":
			if _, ok := checkImageURL(image); !eject && !ok {
				msgs = append(msgs, msgPropertyValueFormatError(image, "Image"))
			}
		case "Inserted", "WriteProtected":
			b, ok := jsonBool(v)
			switch {
			case !ok:
				msgs = append(msgs, msgPropertyValueTypeError(text(v), k))
			case k == "Inserted" && !b:
				if image != "" {
					msgs = append(msgs, msgPropertyValueConflict("Inserted", "Image"))
				}
				eject = true
			case k == "Inserted" && b && eject:
				msgs = append(msgs, msgPropertyValueConflict("Inserted", "Image"))
			case k == "WriteProtected" && !b && !eject:
				msgs = append(msgs, msgPropertyValueNotInList("false", k))
			}
		case "Id", "Name", "MediaTypes", "ImageName", "ConnectedVia", "TransferMethod", "Actions", "@odata.id", "@odata.type":
			msgs = append(msgs, msgPropertyNotWritable(k))
		default:
			msgs = append(msgs, msgPropertyUnknown(k))
		}
	}
	switch {
	case len(msgs) > 0:
		return &apiError{status: http.StatusBadRequest, msgs: msgs}
	case eject:
		return s.eject(req)
	case image == "":
		return errorf(http.StatusBadRequest, msgPropertyMissing("Image"))
	}
	return s.insert(req, image)
}
