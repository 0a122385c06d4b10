package redfishclient_test

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"stargate.io/stargate/pkg/redfish"
	"stargate.io/stargate/pkg/redfishclient"
)

// TestDrive drives package redfish's service, over http and over https verified against its own
// certificate, through everything a repave does: find the system, read and change power, set a
// one-time boot from CD, insert, replace (eject first) and eject virtual media.
func TestDrive(t *testing.T) {
	for _, https := range []bool{false, true} {
		name := map[bool]string{false: "http", true: "https"}[https]
		t.Run(name, func(t *testing.T) {
			b := newBackend(t)
			m := newBMC(t, b, bmcOptions{https: https})
			c := m.client(t)
			if c.Verified() != https {
				t.Errorf("Verified() = %v over %s", c.Verified(), name)
			}
			ctx := t.Context()
			sys, err := c.System(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			if sys.ID != systemID || sys.UUID != sysUUID || sys.Path != "/redfish/v1/Systems/"+systemID {
				t.Errorf("found system %+v", sys)
			}
			power := func(want redfishclient.PowerState) {
				t.Helper()
				got, err := sys.PowerState(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("power state %q, want %q", got, want)
				}
			}
			power(redfishclient.PowerOn)
			if err := sys.Reset(ctx, redfishclient.ResetForceOff); err != nil {
				t.Fatal(err)
			}
			power(redfishclient.PowerOff)
			if err := sys.SetBootOverride(ctx, redfishclient.BootOverride{Target: redfishclient.BootCd, Enabled: redfishclient.BootOnce}); err != nil {
				t.Fatal(err)
			}
			st, err := sys.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := (redfishclient.BootOverride{Target: "Cd", Enabled: "Once", Mode: "UEFI"}); st.Boot != want {
				t.Errorf("boot override %+v, want %+v", st.Boot, want)
			}
			if err := sys.InsertMedia(ctx, image); err != nil {
				t.Fatal(err)
			}
			media, err := sys.VirtualMedia(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if media.Image != image || !media.Inserted || media.Path != "/redfish/v1/Systems/server-a/VirtualMedia/Cd" {
				t.Errorf("virtual media %+v", media)
			}
			// The same image again changes nothing; another one is inserted after an eject, as
			// the backend (like many BMCs) refuses to replace media.
			if err := sys.InsertMedia(ctx, image); err != nil {
				t.Fatal(err)
			}
			const other = "https://images.example/other.iso"
			if err := sys.InsertMedia(ctx, other); err != nil {
				t.Fatal(err)
			}
			if err := sys.Reset(ctx, redfishclient.ResetOn); err != nil {
				t.Fatal(err)
			}
			power(redfishclient.PowerOn)
			if err := sys.EjectMedia(ctx); err != nil {
				t.Fatal(err)
			}
			if err := sys.EjectMedia(ctx); err != nil { // empty already: nothing sent
				t.Fatal(err)
			}
			want := []redfish.Call{
				{Op: "Reset", System: systemID, User: user, Arg: "ForceOff"},
				{Op: "SetBoot", System: systemID, User: user, Arg: "Cd/Once/"},
				{Op: "InsertMedia", System: systemID, User: user, Arg: image},
				{Op: "EjectMedia", System: systemID, User: user},
				{Op: "InsertMedia", System: systemID, User: user, Arg: other},
				{Op: "Reset", System: systemID, User: user, Arg: "On"},
				{Op: "EjectMedia", System: systemID, User: user},
			}
			if got := b.Calls(); !reflect.DeepEqual(got, want) {
				t.Errorf("backend calls:\n%+v\nwant:\n%+v", got, want)
			}
			sysNow, err := b.System(ctx, systemID)
			if err != nil {
				t.Fatal(err)
			}
			// Powering on used up the one-time override.
			if sysNow.Media != (redfish.Media{}) || sysNow.Boot.Target != redfish.BootTargetNone || sysNow.PowerState != redfish.PowerOn {
				t.Errorf("system afterwards: %+v", sysNow)
			}
		})
	}
}

// TestCertificates: over https the BMC's certificate is verified against the CAs given; one they
// do not trust is an error at once (not retried), unless the caller opted out of verification,
// which Verified reports.
func TestCertificates(t *testing.T) {
	m := newBMC(t, newBackend(t), bmcOptions{https: true})
	cfg := m.config()
	cfg.RootCAs = nil // the system's roots, which do not know this self-signed certificate
	c, err := redfishclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.System(t.Context(), "")
	wantError(t, err, "GET /redfish/v1", "certificate")
	if n := len(m.log.all()); n != 0 {
		t.Errorf("%d requests reached the BMC through an unverified connection", n)
	}

	cfg.InsecureSkipVerify = true
	c, err = redfishclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Verified() {
		t.Error("Verified() with InsecureSkipVerify")
	}
	if _, err := c.System(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
}

// TestWrongCredentials: the BMC's 401 is a clear error, asked once (a wrong password does not get
// better by asking again, and BMCs lock accounts out), without the password in it.
func TestWrongCredentials(t *testing.T) {
	m := newBMC(t, newBackend(t), bmcOptions{})
	cfg := m.config()
	cfg.Password = "wrong-" + password
	c, err := redfishclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.System(t.Context(), "")
	wantError(t, err, "listing the BMC's systems", "401 Unauthorized", "the BMC refused the credentials", "no valid session")
	var he *redfishclient.HTTPError
	if !errors.As(err, &he) || he.StatusCode != 401 {
		t.Errorf("error %v is not an *HTTPError with status 401", err)
	}
	if n := m.log.count("GET", "/redfish/v1/Systems"); n != 1 {
		t.Errorf("the systems were asked for %d times with wrong credentials, want 1", n)
	}
}

// TestFindSystem: with several systems, the caller must name one (the error lists them); it is
// found by its path's last segment, its Id or its UUID.
func TestFindSystem(t *testing.T) {
	b := newBackend(t)
	if err := b.Add(redfish.System{ID: "server-b", UUID: "7b2f1fa0-2c3d-4e4f-9051-6b7c8d9e0f1b", PowerState: redfish.PowerOff}, user, password); err != nil {
		t.Fatal(err)
	}
	c := newBMC(t, b, bmcOptions{}).client(t)
	ctx := t.Context()
	_, err := c.System(ctx, "")
	wantError(t, err, "the BMC has 2 systems (server-a, server-b): name one")
	for _, id := range []string{"server-b", "7B2F1FA0-2C3D-4E4F-9051-6B7C8D9E0F1B"} {
		sys, err := c.System(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if sys.ID != "server-b" {
			t.Errorf("System(%q) found %q", id, sys.ID)
		}
		if p, err := sys.PowerState(ctx); err != nil || p != redfishclient.PowerOff {
			t.Errorf("server-b power %q, %v", p, err)
		}
	}
	_, err = c.System(ctx, "server-c")
	wantError(t, err, `no system "server-c" (it has: server-a, server-b)`)
}

// TestRefusedBeforeSending: a reset type or boot target the BMC does not advertise is refused
// before anything is sent, naming what it does allow.
func TestRefusedBeforeSending(t *testing.T) {
	b := newBackend(t)
	m := newBMC(t, b, bmcOptions{})
	sys := m.system(t)
	err := sys.Reset(t.Context(), redfishclient.ResetPowerCycle)
	wantError(t, err, `ResetType "PowerCycle"`, "it allows: On, ForceOff, GracefulShutdown, ForceRestart, GracefulRestart")
	err = sys.SetBootOverride(t.Context(), redfishclient.BootOverride{Target: "UefiHttp", Enabled: redfishclient.BootOnce})
	wantError(t, err, `BootSourceOverrideTarget "UefiHttp"`, "it allows: None, Pxe, Cd, Hdd")
	err = sys.InsertMedia(t.Context(), "ftp://images.example/x.iso")
	wantError(t, err, "absolute http or https URL")
	if got := m.log.changes(); len(got) != 0 {
		t.Errorf("requests sent: %q", got)
	}
	if len(b.Calls()) != 0 {
		t.Errorf("backend calls: %+v", b.Calls())
	}
}

// TestCheckAddress: every connection's address goes through CheckAddress; one it refuses is
// never made, and the error says why.
func TestCheckAddress(t *testing.T) {
	m := newBMC(t, newBackend(t), bmcOptions{})
	cfg := m.config()
	var checked []netip.AddrPort
	cfg.CheckAddress = func(a netip.AddrPort) error {
		checked = append(checked, a)
		return errors.New("not in the operator's BMC networks")
	}
	c, err := redfishclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.System(t.Context(), "")
	wantError(t, err, "BMC address 127.0.0.1:", "refused: not in the operator's BMC networks")
	if len(checked) != 1 || checked[0].Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("checked %v, want 127.0.0.1 once (a refusal is not retried)", checked)
	}
	if n := len(m.log.all()); n != 0 {
		t.Errorf("%d requests reached the BMC", n)
	}

	cfg.CheckAddress = func(netip.AddrPort) error { return nil }
	c, err = redfishclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.System(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
}

// TestEndpoint: New refuses endpoints that are not a BMC's base URL, and credentials in it.
func TestEndpoint(t *testing.T) {
	for _, e := range []string{"", "ftp://bmc", "https://", "https://admin:pw@bmc", "https://admin:pw@bmc:port", "https://bmc/other", "https://bmc/?x=1"} {
		if _, err := redfishclient.New(redfishclient.Config{Endpoint: e}); err == nil {
			t.Errorf("New accepted endpoint %q", e)
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("error %q shows the URL's password", err)
		}
	}
	for _, e := range []string{"https://10.0.0.50", "http://[fd00::5]:8000/", "https://bmc.example/redfish/v1/"} {
		c, err := redfishclient.New(redfishclient.Config{Endpoint: e})
		if err != nil {
			t.Errorf("New(%q): %v", e, err)
			continue
		}
		if c.Verified() != (e[:5] == "https") {
			t.Errorf("%s: Verified() = %v", e, c.Verified())
		}
	}
}
