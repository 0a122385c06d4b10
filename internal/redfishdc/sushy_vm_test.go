package redfishdc_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/redfishdc"
	"stargate.io/stargate/internal/sushytest"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/redfishclient"
)

// The machine behind sushy-emulator, on a bridge of the test's network namespace.
const (
	vmBridge  = "sgbr0"
	vmTap     = "sgtap0"
	vmName    = "sg-sushy-repave"
	vmUUID    = "7d3c9a1e-4b2f-4e6a-9c8d-1f2e3a4b5c6d"
	vmMAC     = "52:54:00:5e:00:05"
	vmAddress = "10.77.0.5"
)

var vmGateway = netip.MustParsePrefix("10.77.0.1/24")

// vmDomainXML is the machine: TCG, 2 vCPUs, 1.5 GiB, an empty 10 GiB disk (the only one the
// installer can choose), an empty IDE CD drive for InsertMedia, ACPI (the installer powers off
// through it), a virtio NIC on a tap the test made (libvirt in session mode cannot make one) and
// the serial console in a file.
const vmDomainXML = `<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>1536</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>
    <interface type='ethernet'><mac address='%s'/><target dev='%s' managed='no'/><model type='virtio'/></interface>
    <serial type='file'><source path='%s' append='on'/><target port='0'/></serial>
  </devices>
</domain>
`

// TestRepaveThroughSushyEmulator repaves a machine through a BMC no one on this project wrote:
// OpenStack's sushy-emulator (the BMC of Ironic's and Metal3's CI) in front of a libvirt domain on
// a bridge of the test's network namespace. The real provider (the real installer ISO, its HTTP
// server on the bridge) and the real controllers on envtest drive it through https with a verified
// certificate and basic auth: the installer boots from the virtual CD the emulator attached,
// writes the guest image, powers off; the domain boots its disk and cloud-init calls back. The
// profile joins no cluster — envtest runs no kubelet-capable cluster; the join through the
// Redfish datacenter is proven by make e2e, through the simulator's BMC.
func TestRepaveThroughSushyEmulator(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM through libvirt and sushy-emulator for minutes; skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	sushytest.Need(t)
	iso, guestImage := os.Getenv("STARGATE_INSTALLER_ISO"), os.Getenv("STARGATE_GUEST_IMAGE")
	if iso == "" {
		testreq.Need(t, "STARGATE_INSTALLER_ISO (the base installer ISO)", "STARGATE_INSTALLER_ISO=$(hack/installer-iso/build.sh) go test ...")
	}
	if guestImage == "" {
		testreq.Need(t, "STARGATE_GUEST_IMAGE (the offline guest image)", "run `sudo make test`, which builds it")
	}
	qemuImg := testreq.Command(t, "qemu-img", "sudo apt-get install -y qemu-utils")
	testreq.Command(t, "ping", "sudo apt-get install -y iputils-ping")
	start := time.Now()

	sushytest.Bridge(t, vmBridge, vmGateway)
	sushytest.Tap(t, vmBridge, vmTap)
	e := sushytest.Start(t)
	e.Define(t, vmName, fmt.Sprintf(vmDomainXML, vmName, vmUUID, e.Disk(t, vmName, 10<<30), vmMAC, vmTap, e.Console(vmName)))
	t.Logf("bridge, libvirtd and sushy-emulator ready after %s", time.Since(start).Round(time.Millisecond))

	ns := "sushy-repave"
	if err := env.Client.Create(context.Background(), testenv.Namespace(ns)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	providerLog, err := os.Create(filepath.Join(dir, "provider.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			showTail(t, providerLog.Name(), 16<<10)
		}
	})
	startProvider(t, ns, vmGateway.Addr().String()+":0", controller.Options{PollInterval: 2 * time.Second}, redfishdc.Config{
		Images: imageCache(filepath.Join(dir, "cache"), filepath.Dir(guestImage)),
		RawDir: filepath.Join(dir, "raw"), QemuImg: qemuImg, InstallerISO: iso,
		BMCNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		BMCClient:   redfishclient.Config{RequestTimeout: time.Minute},
		StepRetry:   2 * time.Second,
		Log:         zap.New(zap.WriteTo(providerLog), zap.UseDevMode(true)), // V(1) too: what a failure needs
	})

	d := &dc{t: t, ns: ns}
	server := &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: "sushy-1"}, Spec: stargatev1.ServerSpec{
		BMC: &stargatev1.BMCSpec{Address: e.Config.Endpoint, SystemID: vmUUID,
			CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "bmc"}, CASecretRef: &stargatev1.LocalSecretReference{Name: "bmc-ca"}},
		Network: &stargatev1.StaticNetwork{MACAddress: vmMAC, Address: vmAddress + "/24", Gateway: vmGateway.Addr().String()},
	}}
	d.create(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bmc"}, Type: corev1.SecretTypeBasicAuth,
			Data: map[string][]byte{"username": []byte(e.Config.Username), "password": []byte(e.Config.Password)}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bmc-ca"}, Data: map[string][]byte{"ca.crt": e.CertPEM}},
		&stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "worker"}, Spec: stargatev1.ProvisioningProfileSpec{
			CloudInit: "#cloud-config\nruncmd: [[touch, /run/stargate-sushy-test]]\n",
			Image:     stargatev1.ImageSource{URL: "file://" + guestImage}}},
		server,
		repave("repave-1", server.Name, 25*time.Minute),
	)
	op := d.waitForEnd("repave-1", 20*time.Minute)
	logSteps(t, op, time.Since(start))
	if op.Status.Phase != stargatev1.OperationSucceeded {
		t.Fatalf("Operation repave-1: %s (%s), want Succeeded", op.Status.Phase, op.Status.Message)
	}
	checkRepaved(t, e, d, op, server.Name)
	t.Logf("the whole repave through sushy-emulator took %s", time.Since(start).Round(time.Second))
}

// checkRepaved checks a Succeeded repave: every step True, the write's rate reported, the Server
// Ready at its static address (which answers ping), its BMC's certificate verified, and from
// libvirt's side the domain running with its CD ejected.
func checkRepaved(t *testing.T, e *sushytest.Emulator, d *dc, op *stargatev1.Operation, server string) {
	t.Helper()
	for _, step := range stargatev1.RedfishRepaveSteps {
		c := meta.FindStatusCondition(op.Status.Conditions, step)
		if c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("condition %s is %+v, want True", step, c)
		}
	}
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageWritten); c != nil &&
		(!strings.Contains(c.Message, " at ") || !strings.Contains(c.Message, "/s)")) {
		t.Errorf("ImageWritten does not say the write rate: %s", c.Message)
	}
	s := &stargatev1.Server{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: d.ns, Name: server}, s); err != nil {
		t.Fatal(err)
	}
	if s.Status.State != stargatev1.ServerReady || s.Status.IPAddress != vmAddress {
		t.Errorf("Server %s: %s at %q, want Ready at %s", server, s.Status.State, s.Status.IPAddress, vmAddress)
	}
	if s.Status.BMC == nil || s.Status.BMC.TLS != stargatev1.BMCTLSVerified {
		t.Errorf("Server %s: status.bmc %+v, want tls Verified", server, s.Status.BMC)
	}
	if out, err := exec.Command("ping", "-c", "3", "-W", "2", vmAddress).CombinedOutput(); err != nil {
		t.Errorf("%s does not answer ping: %v\n%s", vmAddress, err, out)
	}
	if state := e.Virsh(t, "domstate", vmName); state != "running" {
		t.Errorf("libvirt says the domain is %q, want running", state)
	}
	for _, inactive := range []bool{false, true} {
		if src := e.Domain(t, vmName, inactive).CDROMSource(); src != "" {
			t.Errorf("the domain's CD drive still holds %q (inactive definition: %v)", src, inactive)
		}
	}
	// The emulator keeps a "Once" override for good (it says Continuous): the domain's next boot
	// must be its disk, not the CD.
	if e.Domain(t, vmName, true).BootsFromCD() {
		t.Errorf("the domain boots from its CD next:\n%s", e.Virsh(t, "dumpxml", "--inactive", vmName))
	}
	// Nothing the provider asked of this BMC was refused (sushytest.Start's readiness probe asks
	// for the Systems without credentials: its 401s are expected).
	for _, r := range e.Refused(t) {
		if r != "401 GET /redfish/v1/Systems" {
			t.Errorf("sushy-emulator refused %s", r)
		}
	}
}

// waitForEnd waits until the Operation Succeeded or Failed, logging its steps as they change.
func (d *dc) waitForEnd(name string, timeout time.Duration) *stargatev1.Operation {
	d.t.Helper()
	op := &stargatev1.Operation{}
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: d.ns, Name: name}, op)
		if err == nil {
			var now []string
			for _, c := range op.Status.Conditions {
				now = append(now, c.Type+"="+c.Reason)
			}
			if s := strings.Join(now, " "); s != last {
				d.t.Logf("%s %s: %s", time.Now().Format("15:04:05"), op.Status.Phase, s)
				last = s
			}
			if op.Status.Phase == stargatev1.OperationSucceeded || op.Status.Phase == stargatev1.OperationFailed {
				return op
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("Operation %s did not end within %s; status %+v", name, timeout, op.Status)
		}
		time.Sleep(2 * time.Second)
	}
}

// logSteps logs the Operation's step table (when each condition last changed, from the
// Operation's creation) and the timeline the guest reported.
func logSteps(t *testing.T, op *stargatev1.Operation, total time.Duration) {
	t.Helper()
	created := op.CreationTimestamp.Time
	var b strings.Builder
	fmt.Fprintf(&b, "Operation %s: %s after %s\n", op.Name, op.Status.Phase, total.Round(time.Second))
	for _, c := range op.Status.Conditions {
		fmt.Fprintf(&b, "  %-16s %-5s +%-6s %-18s %s\n", c.Type, c.Status, c.LastTransitionTime.Sub(created).Round(time.Second), c.Reason, c.Message)
	}
	for _, s := range op.Status.Timeline {
		fmt.Fprintf(&b, "  timeline %-22s %s\n", s.Name, s.Duration.Round(100*time.Millisecond))
	}
	t.Log(b.String())
}

// showTail logs the end of a file.
func showTail(t *testing.T, path string, n int) {
	t.Helper()
	data, _ := os.ReadFile(path)
	if len(data) > n {
		data = data[len(data)-n:]
	}
	t.Logf("--- %s (end):\n%s", filepath.Base(path), data)
}
