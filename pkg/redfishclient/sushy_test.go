package redfishclient_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/sushytest"
	"stargate.io/stargate/pkg/redfishclient"
)

func TestMain(m *testing.M) { os.Exit(netnstest.Main(m)) }

// TestSushyEmulator drives a BMC no one on this project wrote: OpenStack's sushy-emulator (the
// BMC of Ironic's and Metal3's CI) in front of a libvirt domain (TCG, an empty disk and a CD
// drive; a second domain makes it a BMC of two systems), over https with basic auth, as a
// Redfish datacenter would: find the system by its UUID, power it on and off, set a boot override
// to CD, insert an ISO the test serves over HTTP (which the emulator downloads and attaches to
// the domain's CD drive) and eject it. What the emulator says is checked against libvirt's own
// view of the domain.
func TestSushyEmulator(t *testing.T) {
	if testing.Short() {
		t.Skip("starts libvirtd, QEMU and sushy-emulator; skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	sushytest.Need(t)
	start := time.Now()
	e := startSushyEmulator(t)
	t.Logf("libvirtd and sushy-emulator ready after %s", time.Since(start).Round(time.Millisecond))
	ctx := t.Context()

	// The ISO the BMC fetches, served by the test; the log shows that it was fetched.
	iso := makeISO(t)
	fetched := make(chan string, 10)
	images := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched <- r.Method + " " + r.URL.Path
		http.ServeFile(w, r, iso)
	}))
	t.Cleanup(images.Close)
	imageURL := images.URL + "/installer.iso"

	// Wrong credentials first: a clear error, and nothing else.
	bad := e.Config
	bad.Password = "not-" + e.Config.Password
	c, err := redfishclient.New(bad)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.System(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") || strings.Contains(err.Error(), bad.Password) {
		t.Errorf("with a wrong password: %v; want a 401 without the password", err)
	}

	c, err = redfishclient.New(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Verified() {
		t.Error("the emulator's certificate is not verified")
	}
	// Two domains, two Systems: the caller must say which.
	_, err = c.System(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "the BMC has 2 systems") || !strings.Contains(err.Error(), e.uuid) ||
		!strings.Contains(err.Error(), e.other) {
		t.Errorf("System without an id: %v; want an error naming both systems", err)
	}
	sys, err := c.System(ctx, strings.ToUpper(e.uuid)) // a UUID in capitals is the same UUID
	if err != nil {
		t.Fatal(err)
	}
	if sys.UUID != e.uuid || sys.ID != e.uuid { // sushy-emulator names a domain's System by its UUID
		t.Errorf("found system %+v, want the domain %s", sys, e.uuid)
	}
	power := func(want redfishclient.PowerState, domstate string) {
		t.Helper()
		got, err := sys.PowerState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("power state %q, want %q", got, want)
		}
		if s := e.Virsh(t, "domstate", e.domain); s != domstate {
			t.Errorf("libvirt says the domain is %q, want %q", s, domstate)
		}
	}
	power(redfishclient.PowerOff, "shut off")

	if err := sys.SetBootOverride(ctx, redfishclient.BootOverride{Target: redfishclient.BootCd, Enabled: redfishclient.BootOnce}); err != nil {
		t.Fatal(err)
	}
	st, err := sys.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The emulator keeps every override (it says Continuous): libvirt's boot order is what counts.
	if st.Boot.Target != redfishclient.BootCd {
		t.Errorf("boot override %+v, want target Cd", st.Boot)
	}
	if !e.Domain(t, e.domain, true).BootsFromCD() {
		t.Errorf("the domain does not boot from its CD first:\n%s", e.Virsh(t, "dumpxml", "--inactive", e.domain))
	}

	if err := sys.InsertMedia(ctx, imageURL); err != nil {
		t.Fatal(err)
	}
	select {
	case req := <-fetched:
		if req != "GET /installer.iso" {
			t.Errorf("the emulator asked the image server for %q", req)
		}
	default:
		t.Error("the emulator inserted the image without fetching it")
	}
	media, err := sys.VirtualMedia(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := "/redfish/v1/Systems/" + e.uuid + "/VirtualMedia/Cd"; media.Path != want || media.Image != imageURL {
		t.Errorf("virtual media %+v, want %s holding %s", media, want, imageURL)
	}
	attached := e.Domain(t, e.domain, true).CDROMSource()
	if !strings.HasPrefix(attached, e.Pool+"/") {
		t.Errorf("the domain's CD drive holds %q, want a volume of the pool %s", attached, e.Pool)
	} else if data, err := os.ReadFile(attached); err != nil || !bytes.Equal(data, mustRead(t, iso)) {
		t.Errorf("the attached volume %s is not the ISO served (%v)", attached, err)
	}

	if err := sys.Reset(ctx, redfishclient.ResetOn); err != nil {
		t.Fatal(err)
	}
	power(redfishclient.PowerOn, "running")
	// A reset type the emulator does not offer is refused before anything is sent.
	err = sys.Reset(ctx, redfishclient.ResetPowerCycle)
	if err == nil || !strings.Contains(err.Error(), `ResetType "PowerCycle" (it allows: On, ForceOff`) {
		t.Errorf("PowerCycle: %v; want it refused with the emulator's list", err)
	}
	if err := sys.Reset(ctx, redfishclient.ResetForceOff); err != nil {
		t.Fatal(err)
	}
	power(redfishclient.PowerOff, "shut off")

	if err := sys.EjectMedia(ctx); err != nil {
		t.Fatal(err)
	}
	if media, err := sys.VirtualMedia(ctx); err != nil || media.Inserted || media.Image != "" {
		t.Errorf("after eject: %+v, %v", media, err)
	}
	if src := e.Domain(t, e.domain, true).CDROMSource(); src != "" {
		t.Errorf("after eject the domain's CD drive still holds %q", src)
	}
	// The emulator's log tells what it refused: the wrong password, and that alone.
	if refused := e.Refused(t); !slices.Contains(refused, "401 GET /redfish/v1/Systems") || slices.ContainsFunc(refused, func(r string) bool {
		return !strings.HasPrefix(r, "401 ")
	}) {
		t.Errorf("the emulator refused %q; want the 401s of the wrong password and the readiness probe alone", refused)
	}
	t.Logf("the whole exchange took %s", time.Since(start).Round(time.Millisecond))
}

// sushyEmulator is sushy-emulator with the test's two domains.
type sushyEmulator struct {
	*sushytest.Emulator
	domain, uuid string
	// other is the UUID of a second domain, which the test leaves alone.
	other string
}

// startSushyEmulator starts the emulator with the domain the test drives and another one (never
// started), so that the BMC has two systems.
func startSushyEmulator(t *testing.T) *sushyEmulator {
	t.Helper()
	e := &sushyEmulator{Emulator: sushytest.Start(t), domain: "sg-bmc-test", uuid: "5b1b2c6e-9a41-4c3e-8d2f-0e6f1a2b3c4d",
		other: "0c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5"}
	for _, d := range []struct{ name, uuid string }{{e.domain, e.uuid}, {"sg-bmc-other", e.other}} {
		e.Define(t, d.name, fmt.Sprintf(domainXML, d.name, d.uuid, e.Disk(t, d.name, 64<<20)))
	}
	return e
}

// domainXML is the test's libvirt domain: TCG (no KVM needed), 64 MiB, an empty disk and an
// empty IDE CD drive for InsertMedia to fill, no network. It has nothing to boot: power is all
// the test needs of it.
const domainXML = `<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>
    <serial type='pty'/>
  </devices>
</domain>
`

// makeISO makes a small ISO 9660 image with xorriso.
func makeISO(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	content := filepath.Join(dir, "content")
	if err := os.MkdirAll(content, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(content, "README.TXT"), []byte("Stargate redfishclient test medium\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(dir, "installer.iso")
	if out, err := exec.Command("xorriso", "-as", "mkisofs", "-quiet", "-V", "SGTEST", "-o", iso, content).CombinedOutput(); err != nil {
		t.Fatalf("xorriso: %v\n%s", err, out)
	}
	return iso
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
