package redfish_test

import (
	"errors"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"stargate.io/stargate/pkg/redfish"
)

func TestServiceRoot(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	for _, path := range []string{"/redfish/v1/", "/redfish/v1"} {
		root := c.get(path, noCreds)
		for k, want := range map[string]any{
			"@odata.id": "/redfish/v1/", "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot", "Id": "RootService",
			"RedfishVersion": "1.11.0", "UUID": "2a7e5f3c-0b1d-5e4f-9a6b-5374617267e1",
		} {
			if root[k] != want {
				t.Errorf("GET %s: %s = %v, want %v", path, k, root[k], want)
			}
		}
		for _, l := range [][]any{{"Systems"}, {"Managers"}, {"SessionService"}, {"Links", "Sessions"}} {
			if at(root, append(l, "@odata.id")...) == nil {
				t.Errorf("GET %s: no link %v", path, l)
			}
		}
	}
	if got := c.get("/redfish", noCreds)["v1"]; got != "/redfish/v1/" {
		t.Errorf("GET /redfish: v1 = %v", got)
	}
	if calls := b.seen(); len(calls) != 0 {
		t.Errorf("the service root asked the backend: %v", calls)
	}

	own := newClientWith(t, &redfish.Service{Backend: b, UUID: "11111111-2222-4333-8444-555555555555"})
	if got := own.get("/redfish/v1/", noCreds)["UUID"]; got != "11111111-2222-4333-8444-555555555555" {
		t.Errorf("UUID = %v, want the Service's", got)
	}
}

func TestCollectionsShowOnlyTheSystemsTheCredentialsMayAccess(t *testing.T) {
	c := newClient(t, newSpy(t))
	for _, tc := range []struct {
		cr   creds
		want string
	}{{credsA, "server-a"}, {credsB, "server-b"}} {
		sys := c.get("/redfish/v1/Systems", tc.cr)
		if got := members(t, sys); !reflect.DeepEqual(got, []string{"/redfish/v1/Systems/" + tc.want}) {
			t.Errorf("%s: Systems members %v", tc.cr.user, got)
		}
		if sys["@odata.type"] != "#ComputerSystemCollection.ComputerSystemCollection" {
			t.Errorf("Systems @odata.type %v", sys["@odata.type"])
		}
		mgrs := c.get("/redfish/v1/Managers", tc.cr)
		if got := members(t, mgrs); !reflect.DeepEqual(got, []string{"/redfish/v1/Managers/" + tc.want}) {
			t.Errorf("%s: Managers members %v", tc.cr.user, got)
		}
	}

	// A user with the same credentials on several BMCs sees them all, in the backend's order.
	b := redfish.NewMemoryBackend()
	for _, id := range []string{"n3", "n1", "n2"} {
		if err := b.Add(redfish.System{ID: id}, "ops", "pw"); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Add(redfish.System{ID: "other"}, "ops", "different"); err != nil {
		t.Fatal(err)
	}
	got := members(t, newClient(t, b).get("/redfish/v1/Systems", creds{"ops", "pw"}))
	if want := []string{"/redfish/v1/Systems/n3", "/redfish/v1/Systems/n1", "/redfish/v1/Systems/n2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("members %v, want %v", got, want)
	}
}

func TestGetSystem(t *testing.T) {
	c := newClient(t, newSpy(t))
	sys := c.get("/redfish/v1/Systems/server-a", credsA)
	for _, tc := range []struct {
		path []any
		want any
	}{
		{[]any{"@odata.id"}, "/redfish/v1/Systems/server-a"},
		{[]any{"@odata.type"}, "#ComputerSystem.v1_13_0.ComputerSystem"},
		{[]any{"Id"}, "server-a"},
		{[]any{"Name"}, "default/server-a"},
		{[]any{"UUID"}, "6a1f0e9e-1b2c-4d3e-8f40-5a6b7c8d9e0a"},
		{[]any{"PowerState"}, "On"},
		{[]any{"Status", "State"}, "Enabled"},
		{[]any{"Status", "Health"}, "OK"},
		{[]any{"Boot", "BootSourceOverrideTarget"}, "None"},
		{[]any{"Boot", "BootSourceOverrideEnabled"}, "Disabled"},
		{[]any{"Boot", "BootSourceOverrideMode"}, "UEFI"},
		{[]any{"Boot", "BootSourceOverrideTarget@Redfish.AllowableValues"}, []any{"None", "Pxe", "Cd", "Hdd"}},
		{[]any{"Actions", "#ComputerSystem.Reset", "target"}, "/redfish/v1/Systems/server-a/Actions/ComputerSystem.Reset"},
		{[]any{"Actions", "#ComputerSystem.Reset", "ResetType@Redfish.AllowableValues"},
			[]any{"On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart"}},
		{[]any{"EthernetInterfaces", "@odata.id"}, "/redfish/v1/Systems/server-a/EthernetInterfaces"},
		{[]any{"VirtualMedia", "@odata.id"}, "/redfish/v1/Systems/server-a/VirtualMedia"},
		{[]any{"Links", "ManagedBy", 0, "@odata.id"}, "/redfish/v1/Managers/server-a"},
		{[]any{"MemorySummary", "TotalSystemMemoryGiB"}, 2.0},
		{[]any{"ProcessorSummary", "Count"}, 2.0},
	} {
		if got := at(sys, tc.path...); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v = %#v, want %#v", tc.path, got, tc.want)
		}
	}

	// Defaults: a system with no name shows its id; an unknown power state is null.
	b := redfish.NewMemoryBackend()
	if err := b.Add(redfish.System{ID: "x", PowerState: "Unknown"}, "u", "p"); err != nil {
		t.Fatal(err)
	}
	x := newClient(t, b).get("/redfish/v1/Systems/x", creds{"u", "p"})
	if x["Name"] != "x" || x["PowerState"] != nil {
		t.Errorf("Name %v PowerState %v, want x and null", x["Name"], x["PowerState"])
	}
	if _, ok := x["PowerState"]; !ok {
		t.Error("PowerState missing, want null")
	}
}

func TestHeadIsGetWithoutBody(t *testing.T) {
	c := newClient(t, newSpy(t))
	r := c.do(http.MethodHead, "/redfish/v1/Systems/server-a", credsA, nil)
	if r.status != http.StatusOK || len(r.raw) != 0 {
		t.Errorf("HEAD: %d with %d bytes", r.status, len(r.raw))
	}
}

func TestPatchBoot(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	const path = "/redfish/v1/Systems/server-a"
	boot := func() map[string]any { return c.get(path, credsA)["Boot"].(map[string]any) }

	wantStatus(t, "PATCH target", c.do(http.MethodPatch, path, credsA, `{"Boot": {"BootSourceOverrideTarget": "Pxe"}}`), http.StatusNoContent)
	if got := boot(); got["BootSourceOverrideTarget"] != "Pxe" || got["BootSourceOverrideEnabled"] != "Disabled" || got["BootSourceOverrideMode"] != "UEFI" {
		t.Errorf("after PATCH of the target alone: %v", got)
	}
	wantStatus(t, "PATCH all", c.do(http.MethodPatch, path, credsA, map[string]any{"Boot": map[string]string{
		"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "Legacy"}}), http.StatusNoContent)
	if got := boot(); got["BootSourceOverrideTarget"] != "Cd" || got["BootSourceOverrideEnabled"] != "Continuous" || got["BootSourceOverrideMode"] != "Legacy" {
		t.Errorf("after PATCH of all: %v", got)
	}
	if got, want := b.Calls(), []redfish.Call{
		{Op: "SetBoot", System: "server-a", User: "admin-a", Arg: "Pxe//"},
		{Op: "SetBoot", System: "server-a", User: "admin-a", Arg: "Cd/Continuous/Legacy"},
	}; !reflect.DeepEqual(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}

	for _, tc := range []struct {
		name, body string
		ids        []string
		related    string
	}{
		{"target not in list", `{"Boot": {"BootSourceOverrideTarget": "Floppy"}}`, []string{"PropertyValueNotInList"}, "#/Boot/BootSourceOverrideTarget"},
		{"enabled not in list", `{"Boot": {"BootSourceOverrideEnabled": "always"}}`, []string{"PropertyValueNotInList"}, "#/Boot/BootSourceOverrideEnabled"},
		{"mode not in list", `{"Boot": {"BootSourceOverrideMode": "BIOS"}}`, []string{"PropertyValueNotInList"}, "#/Boot/BootSourceOverrideMode"},
		{"target a number", `{"Boot": {"BootSourceOverrideTarget": 3}}`, []string{"PropertyValueTypeError"}, "#/Boot/BootSourceOverrideTarget"},
		{"target null", `{"Boot": {"BootSourceOverrideTarget": null}}`, []string{"PropertyValueTypeError"}, "#/Boot/BootSourceOverrideTarget"},
		{"Boot a string", `{"Boot": "Pxe"}`, []string{"PropertyValueTypeError"}, "#/Boot"},
		{"unknown Boot property", `{"Boot": {"UefiTargetBootSourceOverride": "x"}}`, []string{"PropertyUnknown"}, "#/Boot/UefiTargetBootSourceOverride"},
		{"read-only property", `{"PowerState": "Off"}`, []string{"PropertyNotWritable"}, "#/PowerState"},
		{"unknown property", `{"AssetTag": "x"}`, []string{"PropertyUnknown"}, "#/AssetTag"},
		{"empty object", `{}`, []string{"EmptyJSON"}, ""},
		{"empty Boot", `{"Boot": {}}`, []string{"EmptyJSON"}, ""},
		{"several errors, nothing applied", `{"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideMode": "BIOS"}, "Name": "n"}`,
			[]string{"PropertyValueNotInList", "PropertyNotWritable"}, "#/Boot/BootSourceOverrideMode"},
	} {
		msgs := wantError(t, tc.name, c.do(http.MethodPatch, path, credsA, tc.body), http.StatusBadRequest, tc.ids...)
		if tc.related != "" && !reflect.DeepEqual(msgs[0]["RelatedProperties"], []any{tc.related}) {
			t.Errorf("%s: RelatedProperties %v, want [%s]", tc.name, msgs[0]["RelatedProperties"], tc.related)
		}
	}
	msgs := wantError(t, "not in list", c.do(http.MethodPatch, path, credsA, `{"Boot": {"BootSourceOverrideTarget": "Floppy"}}`),
		http.StatusBadRequest, "PropertyValueNotInList")
	if !reflect.DeepEqual(msgs[0]["MessageArgs"], []any{"Floppy", "BootSourceOverrideTarget"}) ||
		!strings.Contains(msgs[0]["Resolution"].(string), "None, Pxe, Cd, Hdd") {
		t.Errorf("not-in-list message %v: want the value, the property and the allowed values", msgs[0])
	}
	if n := len(b.Calls()); n != 2 {
		t.Errorf("%d calls after invalid PATCHes, want the 2 valid ones", n)
	}
	if got := boot(); got["BootSourceOverrideTarget"] != "Cd" {
		t.Errorf("invalid PATCHes changed the boot override: %v", got)
	}
}

func TestReset(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	const path = "/redfish/v1/Systems/server-a/Actions/ComputerSystem.Reset"
	power := func() any { return c.get("/redfish/v1/Systems/server-a", credsA)["PowerState"] }
	for _, tc := range []struct{ reset, want string }{
		{"ForceOff", "Off"}, {"On", "On"}, {"GracefulShutdown", "Off"}, {"ForceRestart", "On"}, {"ForceOff", "Off"},
		{"GracefulRestart", "On"}, {"On", "On"},
	} {
		wantStatus(t, tc.reset, c.do(http.MethodPost, path, credsA, map[string]string{"ResetType": tc.reset}), http.StatusNoContent)
		if got := power(); got != tc.want {
			t.Errorf("after %s: PowerState %v, want %s", tc.reset, got, tc.want)
		}
	}
	if n := len(b.Calls()); n != 7 {
		t.Errorf("%d backend calls, want 7", n)
	}

	for _, tc := range []struct {
		name, body, id string
	}{
		{"PowerCycle", `{"ResetType": "PowerCycle"}`, "ActionParameterValueNotInList"},
		{"Nmi", `{"ResetType": "Nmi"}`, "ActionParameterValueNotInList"},
		{"unknown", `{"ResetType": "Explode"}`, "ActionParameterValueNotInList"},
		{"wrong case", `{"ResetType": "forceoff"}`, "ActionParameterValueNotInList"},
		{"missing", `{}`, "ActionParameterMissing"},
		{"no body", ``, "ActionParameterMissing"},
		{"number", `{"ResetType": 1}`, "ActionParameterValueTypeError"},
		{"extra parameter", `{"ResetType": "On", "Force": true}`, "ActionParameterUnknown"},
	} {
		wantError(t, tc.name, c.do(http.MethodPost, path, credsA, tc.body), http.StatusBadRequest, tc.id)
	}
	if n := len(b.Calls()); n != 7 {
		t.Errorf("%d backend calls after invalid resets, want still 7", n)
	}
}

func TestOneTimeBootIsUsedByTheNextBoot(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	wantStatus(t, "PATCH", c.do(http.MethodPatch, "/redfish/v1/Systems/server-b", credsB,
		`{"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}`), http.StatusNoContent)
	wantStatus(t, "On", c.do(http.MethodPost, "/redfish/v1/Systems/server-b/Actions/ComputerSystem.Reset", credsB, `{"ResetType": "On"}`), http.StatusNoContent)
	boot := c.get("/redfish/v1/Systems/server-b", credsB)["Boot"].(map[string]any)
	if boot["BootSourceOverrideTarget"] != "None" || boot["BootSourceOverrideEnabled"] != "Disabled" {
		t.Errorf("after booting once: %v", boot)
	}
}

func TestEthernetInterfaces(t *testing.T) {
	c := newClient(t, newSpy(t))
	coll := c.get("/redfish/v1/Systems/server-a/EthernetInterfaces", credsA)
	want := []string{"/redfish/v1/Systems/server-a/EthernetInterfaces/nic0", "/redfish/v1/Systems/server-a/EthernetInterfaces/nic1"}
	if got := members(t, coll); !reflect.DeepEqual(got, want) {
		t.Errorf("members %v, want %v", got, want)
	}
	for i, mac := range []string{"52:54:00:00:00:0a", "52:54:00:00:01:0a"} {
		nic := c.get(want[i], credsA)
		if nic["MACAddress"] != mac || nic["@odata.id"] != want[i] || nic["@odata.type"] != "#EthernetInterface.v1_4_0.EthernetInterface" {
			t.Errorf("%s: %v", want[i], nic)
		}
	}
	for _, nic := range []string{"nic2", "nic01", "nic-1", "0", "eth0"} {
		wantError(t, nic, c.do(http.MethodGet, "/redfish/v1/Systems/server-a/EthernetInterfaces/"+nic, credsA, nil), http.StatusNotFound, "ResourceNotFound")
	}
}

func TestManager(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	mgr := c.get("/redfish/v1/Managers/server-a", credsA)
	for _, tc := range []struct {
		path []any
		want any
	}{
		{[]any{"@odata.id"}, "/redfish/v1/Managers/server-a"},
		{[]any{"@odata.type"}, "#Manager.v1_5_0.Manager"},
		{[]any{"Id"}, "server-a"},
		{[]any{"ManagerType"}, "BMC"},
		{[]any{"Links", "ManagerForServers"}, []any{map[string]any{"@odata.id": "/redfish/v1/Systems/server-a"}}},
		{[]any{"VirtualMedia", "@odata.id"}, "/redfish/v1/Managers/server-a/VirtualMedia"},
	} {
		if got := at(mgr, tc.path...); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v = %#v, want %#v", tc.path, got, tc.want)
		}
	}
	other := c.get("/redfish/v1/Managers/server-b", credsB)
	if mgr["UUID"] == other["UUID"] || mgr["UUID"] == "" || mgr["UUID"] == c.get("/redfish/v1/Systems/server-a", credsA)["UUID"] {
		t.Errorf("manager UUIDs %v and %v: want distinct, and not the system's", mgr["UUID"], other["UUID"])
	}
	if again := c.get("/redfish/v1/Managers/server-a", credsA); again["UUID"] != mgr["UUID"] {
		t.Errorf("manager UUID changed: %v, %v", mgr["UUID"], again["UUID"])
	}
	for _, p := range []string{"/redfish/v1/Managers/server-a/EthernetInterfaces", "/redfish/v1/Managers/server-a/Actions/Manager.Reset"} {
		wantError(t, p, c.do(http.MethodGet, p, credsA, nil), http.StatusNotFound, "ResourceNotFound")
	}
}

// TestVirtualMedia inserts and ejects media under the System and under the Manager: both are the
// same drive.
func TestVirtualMedia(t *testing.T) {
	for _, base := range []string{"/redfish/v1/Systems/server-a", "/redfish/v1/Managers/server-a"} {
		t.Run(strings.Split(base, "/")[3], func(t *testing.T) {
			b := newSpy(t)
			c := newClient(t, b)
			other := "/redfish/v1/Systems/server-a"
			if strings.Contains(base, "Systems") {
				other = "/redfish/v1/Managers/server-a"
			}
			cd := base + "/VirtualMedia/Cd"
			if got := members(t, c.get(base+"/VirtualMedia", credsA)); !reflect.DeepEqual(got, []string{cd}) {
				t.Errorf("VirtualMedia members %v", got)
			}
			vm := c.get(cd, credsA)
			for _, tc := range []struct {
				path []any
				want any
			}{
				{[]any{"@odata.id"}, cd},
				{[]any{"@odata.type"}, "#VirtualMedia.v1_3_0.VirtualMedia"},
				{[]any{"Id"}, "Cd"},
				{[]any{"MediaTypes"}, []any{"CD", "DVD"}},
				{[]any{"Image"}, nil},
				{[]any{"Inserted"}, false},
				{[]any{"WriteProtected"}, true},
				{[]any{"ConnectedVia"}, "NotConnected"},
				{[]any{"Actions", "#VirtualMedia.InsertMedia", "target"}, cd + "/Actions/VirtualMedia.InsertMedia"},
				{[]any{"Actions", "#VirtualMedia.EjectMedia", "target"}, cd + "/Actions/VirtualMedia.EjectMedia"},
			} {
				if got := at(vm, tc.path...); !reflect.DeepEqual(got, tc.want) {
					t.Errorf("%v = %#v, want %#v", tc.path, got, tc.want)
				}
			}

			const image = "https://images.example/ipa.iso?v=1"
			insert, eject := cd+"/Actions/VirtualMedia.InsertMedia", cd+"/Actions/VirtualMedia.EjectMedia"
			wantStatus(t, "insert", c.do(http.MethodPost, insert, credsA,
				map[string]any{"Image": image, "Inserted": true, "WriteProtected": true, "TransferProtocolType": "HTTPS", "TransferMethod": "Stream"}),
				http.StatusNoContent)
			for _, p := range []string{cd, other + "/VirtualMedia/Cd"} {
				vm := c.get(p, credsA)
				if vm["Image"] != image || vm["ImageName"] != "ipa.iso" || vm["Inserted"] != true || vm["WriteProtected"] != true || vm["ConnectedVia"] != "URI" {
					t.Errorf("%s after insert: %v", p, vm)
				}
			}
			wantError(t, "insert again", c.do(http.MethodPost, insert, credsA, map[string]any{"Image": image}), http.StatusConflict, "ResourceInUse")
			// sushy ejects with an empty POST; others send {}.
			wantStatus(t, "eject", c.do(http.MethodPost, eject, credsA, nil, "Content-Type", ""), http.StatusNoContent)
			wantStatus(t, "eject again", c.do(http.MethodPost, eject, credsA, `{}`), http.StatusNoContent)
			if vm := c.get(cd, credsA); vm["Image"] != nil || vm["Inserted"] != false {
				t.Errorf("after eject: %v", vm)
			}
			if got, want := b.Calls(), []redfish.Call{
				{Op: "InsertMedia", System: "server-a", User: "admin-a", Arg: image},
				{Op: "EjectMedia", System: "server-a", User: "admin-a"},
				{Op: "EjectMedia", System: "server-a", User: "admin-a"},
			}; !reflect.DeepEqual(got, want) {
				t.Errorf("calls %v, want %v", got, want)
			}

			for _, tc := range []struct {
				name, body, id string
			}{
				{"no Image", `{"Inserted": true}`, "ActionParameterMissing"},
				{"Image a number", `{"Image": 42}`, "ActionParameterValueTypeError"},
				{"Image null", `{"Image": null}`, "ActionParameterValueTypeError"},
				{"file URL", `{"Image": "file:///etc/shadow"}`, "ActionParameterValueFormatError"},
				{"relative URL", `{"Image": "/ipa.iso"}`, "ActionParameterValueFormatError"},
				{"no host", `{"Image": "http:///ipa.iso"}`, "ActionParameterValueFormatError"},
				{"credentials in URL", `{"Image": "http://user:pw@images.example/ipa.iso"}`, "ActionParameterValueFormatError"},
				{"space in URL", `{"Image": "http://images.example/a b.iso"}`, "ActionParameterValueFormatError"},
				{"newline in URL", `{"Image": "http://images.example/a\nb.iso"}`, "ActionParameterValueFormatError"},
				{"huge URL", `{"Image": "http://images.example/` + strings.Repeat("a", 3000) + `"}`, "ActionParameterValueFormatError"},
				{"not inserted", `{"Image": "http://i.example/a.iso", "Inserted": false}`, "ActionParameterValueNotInList"},
				{"writable", `{"Image": "http://i.example/a.iso", "WriteProtected": false}`, "ActionParameterValueNotInList"},
				{"Inserted a string", `{"Image": "http://i.example/a.iso", "Inserted": "yes"}`, "ActionParameterValueTypeError"},
				{"protocol mismatch", `{"Image": "http://i.example/a.iso", "TransferProtocolType": "NFS"}`, "ActionParameterValueNotInList"},
				{"upload", `{"Image": "http://i.example/a.iso", "TransferMethod": "Upload"}`, "ActionParameterValueNotInList"},
				{"image credentials", `{"Image": "http://i.example/a.iso", "UserName": "u", "Password": "p"}`, "ActionParameterNotSupported"},
				{"unknown parameter", `{"Image": "http://i.example/a.iso", "Floppy": true}`, "ActionParameterUnknown"},
			} {
				wantError(t, tc.name, c.do(http.MethodPost, insert, credsA, tc.body), http.StatusBadRequest, tc.id)
			}
			wantError(t, "eject with a parameter", c.do(http.MethodPost, eject, credsA, `{"Force": true}`), http.StatusBadRequest, "ActionParameterUnknown")
			wantStatus(t, "empty image credentials", c.do(http.MethodPost, insert, credsA,
				`{"Image": "http://i.example/a.iso", "UserName": "", "Password": null}`), http.StatusNoContent)
			if n := len(b.Calls()); n != 4 {
				t.Errorf("%d calls after invalid requests, want 4", n)
			}

			// PATCH of the member: eject with Image null, insert with an Image.
			wantStatus(t, "PATCH eject", c.do(http.MethodPatch, cd, credsA, `{"Image": null, "Inserted": false}`), http.StatusNoContent)
			wantStatus(t, "PATCH insert", c.do(http.MethodPatch, cd, credsA,
				`{"Image": "http://i.example/b.iso", "Inserted": true, "WriteProtected": true}`), http.StatusNoContent)
			if vm := c.get(cd, credsA); vm["Image"] != "http://i.example/b.iso" || vm["Inserted"] != true {
				t.Errorf("after PATCH insert: %v", vm)
			}
			for _, tc := range []struct {
				name, body string
				ids        []string
			}{
				{"PATCH bad URL", `{"Image": "ftp://i.example/b.iso"}`, []string{"PropertyValueFormatError"}},
				{"PATCH conflict", `{"Image": "http://i.example/b.iso", "Inserted": false}`, []string{"PropertyValueConflict"}},
				{"PATCH writable", `{"Image": "http://i.example/b.iso", "WriteProtected": false}`, []string{"PropertyValueNotInList"}},
				{"PATCH read-only", `{"MediaTypes": ["USBStick"]}`, []string{"PropertyNotWritable"}},
				{"PATCH nothing", `{}`, []string{"EmptyJSON"}},
				{"PATCH no image", `{"WriteProtected": true}`, []string{"PropertyMissing"}},
			} {
				wantError(t, tc.name, c.do(http.MethodPatch, cd, credsA, tc.body), http.StatusBadRequest, tc.ids...)
			}
			if n := len(b.Calls()); n != 6 {
				t.Errorf("%d calls after PATCHes, want 6", n)
			}

			for _, p := range []string{base + "/VirtualMedia/Floppy", base + "/VirtualMedia/Cd/Actions/VirtualMedia.Explode", base + "/VirtualMedia/Cd/Actions"} {
				wantError(t, p, c.do(http.MethodGet, p, credsA, nil), http.StatusNotFound, "ResourceNotFound")
			}
		})
	}
}

// TestUnauthorized: every resource but the service root wants the credentials of the system it
// names (a system's credentials open no other system), and a request without them is answered 401
// before the backend is asked anything but whether the credentials are valid.
func TestUnauthorized(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	requests := []struct{ method, path, body string }{
		{http.MethodGet, "/redfish/v1/Systems", ""},
		{http.MethodGet, "/redfish/v1/Managers", ""},
		{http.MethodGet, "/redfish/v1/SessionService", ""},
		{http.MethodGet, "/redfish/v1/Systems/server-a", ""},
		{http.MethodPatch, "/redfish/v1/Systems/server-a", `{"Boot": {"BootSourceOverrideTarget": "Pxe"}}`},
		{http.MethodPost, "/redfish/v1/Systems/server-a/Actions/ComputerSystem.Reset", `{"ResetType": "ForceOff"}`},
		{http.MethodGet, "/redfish/v1/Systems/server-a/EthernetInterfaces/nic0", ""},
		{http.MethodGet, "/redfish/v1/Managers/server-a", ""},
		{http.MethodPost, "/redfish/v1/Managers/server-a/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", `{"Image": "http://i.example/a.iso"}`},
		{http.MethodPost, "/redfish/v1/Systems/server-a/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia", `{}`},
		{http.MethodPatch, "/redfish/v1/Systems/server-a/VirtualMedia/Cd", `{"Image": null}`},
		// Unknown resources, methods and systems: no credentials, no answer but 401.
		{http.MethodGet, "/redfish/v1/Systems/server-a/Bios", ""},
		{http.MethodDelete, "/redfish/v1/Systems/server-a", ""},
		{http.MethodGet, "/redfish/v1/Systems/no-such-server", ""},
	}
	for _, cr := range []creds{noCreds, {"admin-a", "wrong"}, {"admin-a", ""}, {"", "secret-a"}, credsB, {"admin-b", "secret-a"}} {
		for _, rq := range requests {
			if cr == credsB && !strings.Contains(rq.path, "server-a") {
				continue // server-b's credentials are valid for the collections
			}
			var body any
			if rq.body != "" {
				body = rq.body
			}
			what := rq.method + " " + rq.path + " as " + cr.user + ":" + cr.password
			r := c.do(rq.method, rq.path, cr, body)
			wantError(t, what, r, http.StatusUnauthorized, "NoValidSession")
			if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, `Basic realm="Stargate BMC"`) {
				t.Errorf("%s: WWW-Authenticate %q", what, got)
			}
			for _, call := range b.seen() {
				if !strings.HasPrefix(call, "Authorize ") && call != "Systems" {
					t.Errorf("%s: the backend was asked %s", what, call)
				}
			}
		}
	}
	if calls := b.Calls(); len(calls) != 0 {
		t.Errorf("unauthorized requests changed something: %v", calls)
	}
	sys, _ := b.System(t.Context(), "server-a")
	if sys.PowerState != redfish.PowerOn || sys.Boot.Target != "" || sys.Media.Inserted {
		t.Errorf("server-a changed: %+v", sys)
	}
}

func TestNotFound(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	for _, p := range []string{
		"/", "/redfish/v2/", "/redfish/v1/Chassis", "/redfish/v1/Systems/server-a/Bios", "/redfish/v1/Systems/server-a/Actions/ComputerSystem.Explode",
		"/redfish/v1/Systems/server-a/Actions", "/redfish/v1/SessionService/Sessions/1", "/redfish/v1/Systems/server-a/EthernetInterfaces/nic0/x",
		"/redfish/v1/Managers/server-a/VirtualMedia/Cd/Actions/ComputerSystem.Reset", "/redfish/v1/UpdateService",
	} {
		wantError(t, p, c.do(http.MethodGet, p, credsA, nil), http.StatusNotFound, "ResourceNotFound")
	}
	// A system that disappears between the credential check and the read.
	b.fail["System"] = redfish.ErrNotFound
	wantError(t, "gone", c.do(http.MethodGet, "/redfish/v1/Systems/server-a", credsA, nil), http.StatusNotFound, "ResourceNotFound")
}

// TestHostileIDs: ids and paths that try to escape their segment never reach the backend.
func TestHostileIDs(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	for _, p := range []string{
		"/redfish/v1/Systems/..",
		"/redfish/v1/Systems/.",
		"/redfish/v1/Systems/%2E%2E",
		"/redfish/v1/Systems/server-a%2F..%2Fserver-b",
		"/redfish/v1/Systems/server-a%2fActions",
		"/redfish/v1/Systems/server-a/../server-b",
		"/redfish/v1/Systems/server-a/./Actions/ComputerSystem.Reset",
		"/redfish/v1/Systems//server-a",
		"/redfish/v1/Systems/server-a%00",
		"/redfish/v1/Systems/%73erver-a",
		"/redfish/v1/Systems/server%20a",
		"/redfish/v1/Systems/.hidden",
		"/redfish/v1/Systems/-rf",
		"/redfish/v1/Systems/s%C3%A9rver",
		"/redfish/v1/Managers/..%2F..%2Fetc%2Fpasswd",
		"/redfish/v1/Systems/" + strings.Repeat("a", 254),
		"/redfish/../redfish/v1/Systems/server-a",
	} {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			var body any
			if m == http.MethodPost {
				body = `{"ResetType": "ForceOff"}`
			}
			wantError(t, m+" "+p, c.do(m, p, credsA, body), http.StatusNotFound, "ResourceNotFound")
		}
	}
	if calls := b.seen(); len(calls) != 0 {
		t.Errorf("hostile paths reached the backend: %v", calls)
	}
	if calls := b.Calls(); len(calls) != 0 {
		t.Errorf("hostile paths changed something: %v", calls)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	c := newClient(t, newSpy(t))
	for _, tc := range []struct {
		method, path string
		creds        creds
		allow        string
	}{
		{http.MethodPost, "/redfish/v1/", noCreds, "GET, HEAD"},
		{http.MethodDelete, "/redfish/v1/", noCreds, "GET, HEAD"},
		{http.MethodPost, "/redfish/v1/Systems", credsA, "GET, HEAD"},
		{http.MethodPost, "/redfish/v1/SessionService/Sessions", noCreds, "GET, HEAD"},
		{http.MethodPut, "/redfish/v1/Systems/server-a", credsA, "GET, HEAD, PATCH"},
		{http.MethodDelete, "/redfish/v1/Systems/server-a", credsA, "GET, HEAD, PATCH"},
		{http.MethodPost, "/redfish/v1/Systems/server-a", credsA, "GET, HEAD, PATCH"},
		{http.MethodGet, "/redfish/v1/Systems/server-a/Actions/ComputerSystem.Reset", credsA, "POST"},
		{http.MethodPatch, "/redfish/v1/Managers/server-a", credsA, "GET, HEAD"},
		{http.MethodPost, "/redfish/v1/Managers/server-a/VirtualMedia", credsA, "GET, HEAD"},
		{http.MethodGet, "/redfish/v1/Managers/server-a/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", credsA, "POST"},
		{http.MethodDelete, "/redfish/v1/Systems/server-a/VirtualMedia/Cd", credsA, "GET, HEAD, PATCH"},
		{http.MethodOptions, "/redfish/v1/Systems/server-a/EthernetInterfaces", credsA, "GET, HEAD"},
	} {
		what := tc.method + " " + tc.path
		r := c.do(tc.method, tc.path, tc.creds, nil)
		wantError(t, what, r, http.StatusMethodNotAllowed, "OperationNotAllowed")
		if got := r.header.Get("Allow"); got != tc.allow {
			t.Errorf("%s: Allow %q, want %q", what, got, tc.allow)
		}
	}
}

func TestBadBodies(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	const reset = "/redfish/v1/Systems/server-a/Actions/ComputerSystem.Reset"
	for _, tc := range []struct {
		name    string
		body    any
		headers []string
		status  int
		id      string
	}{
		{"malformed", `{"ResetType": "On"`, nil, http.StatusBadRequest, "MalformedJSON"},
		{"not JSON", `ResetType=On`, nil, http.StatusBadRequest, "MalformedJSON"},
		{"trailing data", `{"ResetType": "On"} {"ResetType": "ForceOff"}`, nil, http.StatusBadRequest, "MalformedJSON"},
		{"array", `[{"ResetType": "On"}]`, nil, http.StatusBadRequest, "UnrecognizedRequestBody"},
		{"string", `"On"`, nil, http.StatusBadRequest, "UnrecognizedRequestBody"},
		{"null", `null`, nil, http.StatusBadRequest, "UnrecognizedRequestBody"},
		{"oversize", `{"ResetType": "On", "x": "` + strings.Repeat("x", redfish.MaxBodyBytes) + `"}`, nil,
			http.StatusRequestEntityTooLarge, "PayloadTooLarge"},
		{"form post", `{"ResetType": "On"}`, []string{"Content-Type", "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType, "HeaderInvalid"},
		{"text/plain", `{"ResetType": "On"}`, []string{"Content-Type", "text/plain"}, http.StatusUnsupportedMediaType, "HeaderInvalid"},
		{"no content type", `{"ResetType": "On"}`, []string{"Content-Type", ""}, http.StatusUnsupportedMediaType, "HeaderInvalid"},
	} {
		wantError(t, tc.name, c.do(http.MethodPost, reset, credsA, tc.body, tc.headers...), tc.status, tc.id)
	}
	wantStatus(t, "charset parameter", c.do(http.MethodPost, reset, credsA, `{"ResetType": "ForceOff"}`,
		"Content-Type", "application/json; charset=utf-8"), http.StatusNoContent)
	if n := len(b.Calls()); n != 1 {
		t.Errorf("%d calls, want only the valid reset", n)
	}
}

// TestBackendErrors: a Backend's errors become Redfish statuses; an unexpected one is a 500 that
// does not show its text.
func TestBackendErrors(t *testing.T) {
	b := newSpy(t)
	c := newClient(t, b)
	const reset = "/redfish/v1/Systems/server-a/Actions/ComputerSystem.Reset"
	for _, tc := range []struct {
		err    error
		status int
		id     string
	}{
		{&redfish.BadRequestError{Message: "the server is being repaved"}, http.StatusBadRequest, "GeneralError"},
		{redfish.ErrConflict, http.StatusConflict, "ResourceInUse"},
		{redfish.ErrNotFound, http.StatusNotFound, "ResourceNotFound"},
		{errors.New("qmp: connection refused at /run/secret/path"), http.StatusInternalServerError, "InternalError"},
	} {
		b.fail["Reset"] = tc.err
		r := c.do(http.MethodPost, reset, credsA, `{"ResetType": "On"}`)
		msgs := wantError(t, tc.err.Error(), r, tc.status, tc.id)
		if tc.id == "GeneralError" && msgs[0]["Message"] != "the server is being repaved" {
			t.Errorf("BadRequestError message %v", msgs[0]["Message"])
		}
		if strings.Contains(string(r.raw), "secret") {
			t.Errorf("an internal error's text reached the client: %s", r.raw)
		}
	}
	b.fail = map[string]error{"Systems": errors.New("informer not synced")}
	wantError(t, "Systems failing", c.do(http.MethodGet, "/redfish/v1/Systems", credsA, nil), http.StatusInternalServerError, "InternalError")
}

func TestSessionService(t *testing.T) {
	c := newClient(t, newSpy(t))
	svc := c.get("/redfish/v1/SessionService", credsA)
	if svc["ServiceEnabled"] != false || at(svc, "Sessions", "@odata.id") != "/redfish/v1/SessionService/Sessions" {
		t.Errorf("SessionService %v", svc)
	}
	if got := members(t, c.get("/redfish/v1/SessionService/Sessions", credsA)); len(got) != 0 {
		t.Errorf("sessions %v", got)
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"server-a": true, "default_server-1": true, "6a1f0e9e-1b2c-4d3e-8f40-5a6b7c8d9e0a": true, "a.b": true, "A": true,
		"": false, ".": false, "..": false, "-a": false, "a/b": false, "a%2Fb": false, "a b": false, "é": false,
		strings.Repeat("a", 253): true, strings.Repeat("a", 254): false,
	} {
		if got := redfish.ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestMemoryBackend(t *testing.T) {
	b := redfish.NewMemoryBackend()
	if err := b.Add(redfish.System{ID: "a"}, "u", "p"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sys  redfish.System
		user string
	}{{redfish.System{ID: "a"}, "u"}, {redfish.System{ID: "../a"}, "u"}, {redfish.System{ID: "b"}, ""}} {
		if err := b.Add(tc.sys, tc.user, "p"); err == nil {
			t.Errorf("Add(%q, %q) succeeded", tc.sys.ID, tc.user)
		}
	}
	ctx := t.Context()
	if !b.Authorize(ctx, "a", "u", "p") || b.Authorize(ctx, "a", "u", "P") || b.Authorize(ctx, "a", "U", "p") || b.Authorize(ctx, "b", "u", "p") {
		t.Error("Authorize accepts the wrong credentials or refuses the right ones")
	}
	if _, err := b.System(ctx, "b"); !errors.Is(err, redfish.ErrNotFound) {
		t.Errorf("System(b) = %v, want ErrNotFound", err)
	}
	for _, err := range []error{
		b.Reset(ctx, "b", redfish.ResetOn, "u"), b.SetBoot(ctx, "b", redfish.Boot{}, "u"), b.InsertMedia(ctx, "b", "http://x/y", "u"), b.EjectMedia(ctx, "b", "u"),
	} {
		if !errors.Is(err, redfish.ErrNotFound) {
			t.Errorf("change of an unknown system: %v, want ErrNotFound", err)
		}
	}
	var bad *redfish.BadRequestError
	if err := b.Reset(ctx, "a", "Nmi", "u"); !errors.As(err, &bad) {
		t.Errorf("Reset Nmi = %v, want a BadRequestError", err)
	}
	for range 5000 {
		if err := b.Reset(ctx, "a", redfish.ResetForceRestart, "u"); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(b.Calls()); n > 4096 || n < 2048 {
		t.Errorf("%d calls remembered, want the latest few thousand", n)
	}
	if !slices.Equal(redfish.ResetTypes(), []redfish.ResetType{"On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart"}) {
		t.Errorf("ResetTypes() = %v", redfish.ResetTypes())
	}
}
