package redfishdc_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/installspec"
	"stargate.io/stargate/pkg/redfish"
)

// TestRepaveThroughTheBMC repaves a server through package redfish's BMC; the test stands in for
// the machine (see machine). Conditions and the BMC's state are checked at each step, and the
// attacks on the callback (a wrong token, a report after the end) change nothing.
func TestRepaveThroughTheBMC(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.addSystem("node-1")
	// A CD left in the drive (a previous attempt's, someone's): it must be ejected first.
	if err := d.backend.InsertMedia(context.Background(), "node-1", "http://old.example/stale.iso", bmcUser); err != nil {
		t.Fatal(err)
	}
	d.basics()
	d.create(d.server("worker-1", "node-1", d.bmc.URL), repave("r1", "worker-1", 0))

	op := d.waitForCondition("r1", stargatev1.ConditionMediaInserted)
	for _, c := range []string{stargatev1.ConditionImageReady, stargatev1.ConditionInstallerReady} {
		if !meta.IsStatusConditionTrue(op.Status.Conditions, c) {
			t.Errorf("%s is not True once the media is inserted", c)
		}
	}
	d.waitForCDBoot("r1")
	sys := d.system("node-1")
	// Eject before insert (this BMC, like many, refuses an insert into a full drive), a one-time CD boot, and — it
	// was on — forced off first, then on; that boot uses the override up.
	var calls []string
	for _, c := range d.backend.Calls() {
		calls = append(calls, c.Op+" "+c.Arg)
		if c.User != bmcUser {
			t.Errorf("a BMC call as %q, not the Secret's user", c.User)
		}
	}
	want := []string{"InsertMedia http://old.example/stale.iso", "EjectMedia ", "InsertMedia " + sys.Media.Image, "SetBoot Cd/Once/", "Reset ForceOff", "Reset On"}
	if strings.Join(calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("BMC calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
	if !sys.Media.Inserted {
		t.Errorf("the CD is not inserted: %+v", sys.Media)
	}

	m := d.bootFromCD("node-1")
	if m.spec.Network.Address != "10.0.1.11/24" || m.spec.Network.MAC != "52:54:00:00:00:0a" || m.spec.RootDevice.Serial != "DISK-0001" {
		t.Errorf("the install spec does not carry the Server's network and hint: %+v %+v", m.spec.Network, m.spec.RootDevice)
	}
	if !strings.Contains(string(m.spec.Seed.UserData), "runcmd") || !strings.Contains(string(m.spec.Seed.MetaData), "local-hostname: worker-1") {
		t.Errorf("the seed does not carry the profile's user-data and the host name:\n%s\n%s", m.spec.Seed.MetaData, m.spec.Seed.UserData)
	}
	if string(m.writeImage()) != string(d.rawImage) {
		t.Error("the image served is not the profile's image as a raw disk")
	}

	// A wrong token changes nothing.
	if code := m.report(strings.Repeat("x", 43), installspec.Report{Phase: installspec.PhaseFailed, Message: "forged"}); code != http.StatusUnauthorized {
		t.Errorf("a report with a wrong token: %d, want 401", code)
	}
	token := m.spec.Callback.Token
	for _, rep := range []installspec.Report{
		{Phase: installspec.PhaseBooted, Disk: "/dev/sda (serial DISK-0001)"},
		{Phase: installspec.PhaseWriting, Disk: "/dev/sda", BytesWritten: 1 << 20, TotalBytes: 3 << 20, BytesPerSecond: 1 << 20},
	} {
		if code := m.report(token, rep); code != http.StatusNoContent {
			t.Fatalf("report %s: %d", rep.Phase, code)
		}
	}
	op = d.waitFor("r1", "write progress", func(op *stargatev1.Operation) bool {
		c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageWritten)
		return c != nil && strings.Contains(c.Message, "1.0 MiB of 3.0 MiB (33%), 1.0 MiB/s")
	})
	if !meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionInstallerBooted) || op.Status.Phase != stargatev1.OperationRunning {
		t.Errorf("after the installer's reports: %+v", op.Status)
	}
	for _, rep := range []installspec.Report{{Phase: installspec.PhaseWritten, BytesWritten: 3 << 20}, {Phase: installspec.PhaseSeeded}, {Phase: installspec.PhaseDone}} {
		if code := m.report(token, rep); code != http.StatusNoContent {
			t.Fatalf("report %s: %d", rep.Phase, code)
		}
	}
	// The installer is done: its URLs are closed.
	if code := m.report(token, installspec.Report{Phase: installspec.PhaseWriting}); code != http.StatusGone {
		t.Errorf("a report after Done: %d, want 410", code)
	}
	// The installer powers the machine off; the controller then boots its disk.
	if err := d.backend.Reset(context.Background(), "node-1", redfish.ResetForceOff, "machine"); err != nil {
		t.Fatal(err)
	}
	d.waitForCondition("r1", stargatev1.ConditionBootedFromDisk)
	sys = d.system("node-1")
	if sys.Media.Inserted || sys.PowerState != redfish.PowerOn {
		t.Errorf("after BootedFromDisk: media %+v, power %s; want ejected and on", sys.Media, sys.PowerState)
	}
	after := d.backend.Calls()
	if last := after[len(after)-2]; last.Op != "SetBoot" || !strings.HasPrefix(last.Arg, "Hdd/Once") {
		t.Errorf("before the last power-on: %+v, want a one-time disk boot", last)
	}

	url, guestToken := m.guestCallback()
	if code := m.post(url, token, readyLine(controller.InstanceID(op))); code != http.StatusUnauthorized {
		t.Errorf("the guest callback with the installer's token: %d, want 401", code)
	}
	// The installed OS reports its own boot timeline (here, the kernel's 1.5 s).
	guestLine := strings.Replace(readyLine(controller.InstanceID(op)), `"timeline": {}`, `"timeline": {"init_start": 1.5}`, 1)
	if code := m.post(url, guestToken, guestLine); code != http.StatusNoContent {
		t.Fatalf("the guest callback: %d", code)
	}
	op = d.waitForPhase("r1", stargatev1.OperationSucceeded)
	for _, c := range stargatev1.RedfishRepaveSteps {
		if !meta.IsStatusConditionTrue(op.Status.Conditions, c) {
			t.Errorf("condition %s is not True after success: %+v", c, meta.FindStatusCondition(op.Status.Conditions, c))
		}
	}
	// The write's average rate stays in the message, its duration in the timeline.
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageWritten); !strings.Contains(c.Message, "(3.0 MiB at 1.0 MiB/s)") {
		t.Errorf("ImageWritten after the write: %q, want the size and the installer's average rate", c.Message)
	}
	// The timeline grew as the repave went: the write's step first, the guest's after it.
	if tl := op.Status.Timeline; len(tl) != 2 || tl[0].Name != "image-write" || tl[0].Duration.Duration <= 0 ||
		tl[1].Name != "kernel" || tl[1].Duration.Duration != 1500*time.Millisecond {
		t.Errorf("timeline %+v, want the image write, then the guest's kernel (1.5s)", tl)
	}
	// After the Operation, every URL of it answers 410.
	if code := m.post(url, guestToken, readyLine(controller.InstanceID(op))); code != http.StatusGone {
		t.Errorf("the guest callback after the end: %d, want 410", code)
	}
	if resp, err := http.Get(m.spec.Image.URL); err != nil || resp.StatusCode != http.StatusGone {
		t.Errorf("the image after the end: %v %v, want 410", resp.Status, err)
	}
	srv := &stargatev1.Server{}
	d.waitForServer("worker-1", "Ready and on", func(s *stargatev1.Server) bool {
		srv = s
		return s.Status.State == stargatev1.ServerReady && s.Status.PowerState == stargatev1.PowerOn
	})
	if srv.Status.IPAddress != "10.0.1.11" || srv.Status.BMC == nil || srv.Status.BMC.TLS != stargatev1.BMCTLSPlainHTTP {
		t.Errorf("Server status %+v (bmc %+v)", srv.Status, srv.Status.BMC)
	}
}

// waitForCDBoot waits until the BMC was told to power the machine on after the installer ISO was
// inserted (the machine was on before: its power state alone says nothing).
func (d *dc) waitForCDBoot(op string) {
	d.t.Helper()
	d.waitFor(op, "a power-on after the CD's insertion", func(*stargatev1.Operation) bool {
		inserted := false
		for _, c := range d.backend.Calls() {
			inserted = inserted || c.Op == "InsertMedia"
			if inserted && c.Op == "Reset" && c.Arg == "On" {
				return true
			}
		}
		return false
	})
}

func (d *dc) waitForServer(name, what string, cond func(*stargatev1.Server) bool) {
	d.t.Helper()
	s := &stargatev1.Server{}
	deadline := time.Now().Add(time.Minute)
	for {
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: d.ns, Name: name}, s); err == nil && cond(s) {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("Server %s: not %s within a minute; status %+v", name, what, s.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The installer found the image corrupt: the Operation fails with its reason and the server is
// powered off.
func TestInstallerFailureFailsTheRepave(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.addSystem("node-1")
	d.basics()
	d.create(d.server("worker-1", "node-1", d.bmc.URL), repave("r1", "worker-1", 0))
	d.waitForCDBoot("r1")
	m := d.bootFromCD("node-1")
	token := m.spec.Callback.Token
	m.report(token, installspec.Report{Phase: installspec.PhaseBooted})
	const why = "sha256 mismatch: the image is 9f86d0… but the spec says 2c26b4…; the first MiB of /dev/sda was wiped"
	if code := m.report(token, installspec.Report{Phase: installspec.PhaseFailed, Message: why}); code != http.StatusNoContent {
		t.Fatalf("the Failed report: %d", code)
	}
	op := d.waitForPhase("r1", stargatev1.OperationFailed)
	c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageWritten)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != "InstallerFailed" || !strings.Contains(c.Message, why) {
		t.Errorf("ImageWritten %+v, want False with the installer's reason", c)
	}
	if !strings.Contains(op.Status.Message, why) || !strings.Contains(op.Status.Message, "the server was powered off") {
		t.Errorf("the Operation's message %q does not say why", op.Status.Message)
	}
	if d.system("node-1").PowerState != redfish.PowerOff {
		t.Error("the server runs on after the failed install")
	}
	if code := m.report(token, installspec.Report{Phase: installspec.PhaseWriting}); code != http.StatusGone {
		t.Errorf("a report after the failure: %d, want 410", code)
	}
}

// install plays the machine through a whole repave of systemID: it boots the installer from the
// CD, writes the image, reports, powers off, and calls back from the installed OS.
func (d *dc) install(opName, systemID string) {
	d.t.Helper()
	d.waitForCDBoot(opName)
	m := d.bootFromCD(systemID)
	m.writeImage()
	for _, phase := range []installspec.Phase{installspec.PhaseBooted, installspec.PhaseWritten, installspec.PhaseSeeded, installspec.PhaseDone} {
		if code := m.report(m.spec.Callback.Token, installspec.Report{Phase: phase}); code != http.StatusNoContent {
			d.t.Fatalf("report %s: %d", phase, code)
		}
	}
	if err := d.backend.Reset(context.Background(), systemID, redfish.ResetForceOff, "machine"); err != nil {
		d.t.Fatal(err)
	}
	op := d.waitForCondition(opName, stargatev1.ConditionBootedFromDisk)
	url, token := m.guestCallback()
	if code := m.post(url, token, readyLine(controller.InstanceID(op))); code != http.StatusNoContent {
		d.t.Fatalf("the guest callback: %d", code)
	}
}

// The user-data Secret deleted once the installer carries it: the repave goes on (the server has
// what it needs).
func TestUserDataSecretDeletedAfterTheInstallerIsBuilt(t *testing.T) {
	d := newDC(t, dcOptions{})
	d.addSystem("node-1")
	d.basics()
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "user-data"}, Type: stargatev1.UserDataSecretType,
		Data: map[string][]byte{"user-data": []byte("#cloud-config\n{}\n")}}
	d.create(secret, &stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "from-secret"}, Spec: stargatev1.ProvisioningProfileSpec{
		CloudInitSecretRef: &stargatev1.SecretKeyReference{Name: "user-data"}, Image: stargatev1.ImageSource{URL: d.imageURL}}})
	r1 := repave("r1", "worker-1", 0)
	r1.Spec.ProvisioningProfileRef.Name = "from-secret"
	d.create(d.server("worker-1", "node-1", d.bmc.URL), r1)
	d.waitForCondition("r1", stargatev1.ConditionInstallerReady)
	if err := env.Client.Delete(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	d.install("r1", "node-1")
	d.waitForPhase("r1", stargatev1.OperationSucceeded)
}
