package redfishdc_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/redfishdc"
	"stargate.io/stargate/internal/testenv"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/installeriso"
	"stargate.io/stargate/pkg/installspec"
	"stargate.io/stargate/pkg/redfish"
	"stargate.io/stargate/pkg/redfishclient"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(logr.Discard())
	// As root, the package runs in a network namespace of its own (netnstest), where envtest starts:
	// the sushy-emulator test runs in one of its own from there.
	os.Exit(netnstest.MainFunc(func() int { return testenv.Main(m, &env) }))
}

const (
	bmcUser     = "admin"
	bmcPassword = "bmc-password-7f3a"
)

var nsCounter atomic.Int32

// dc is one test's Redfish datacenter: a namespace, the BMCs (package redfish's real Service over
// a MemoryBackend, served by httptest), the provider with its HTTP server, and the controller.
type dc struct {
	t        *testing.T
	ns       string
	backend  *redfish.MemoryBackend
	bmc      *httptest.Server
	provider *redfishdc.Provider
	// imageURL is the profile's image (a qcow2 file); rawImage the disk it must become.
	imageURL string
	rawImage []byte
	// bmcCA is the PEM certificate an https BMC's is checked against.
	bmcCA []byte
}

type dcOptions struct {
	// bmcNetworks default to loopback, where the test's BMC listens.
	bmcNetworks []netip.Prefix
	// bmcHandler wraps the BMC's service (a BMC that misbehaves).
	bmcHandler func(http.Handler) http.Handler
	// https serves the BMC with a certificate of its own CA (dc.bmcCA).
	https bool
	// pool is the datacenter's address pool (--address-pool).
	pool *redfishdc.AddressPool
}

func newDC(t *testing.T, opt dcOptions) *dc {
	t.Helper()
	qemuImg := testreq.Command(t, "qemu-img", "apt-get install -y qemu-utils")
	ns := fmt.Sprintf("rf%d-%s", nsCounter.Add(1), strings.ToLower(strings.ReplaceAll(t.Name(), "_", "-")))
	ns = strings.Trim(strings.ReplaceAll(ns[:min(len(ns), 50)], "/", "-"), "-")
	if err := env.Client.Create(context.Background(), testenv.Namespace(ns)); err != nil {
		t.Fatal(err)
	}
	d := &dc{t: t, ns: ns, backend: redfish.NewMemoryBackend()}
	var h http.Handler = &redfish.Service{Backend: d.backend}
	if opt.bmcHandler != nil {
		h = opt.bmcHandler(h)
	}
	d.bmc = httptest.NewUnstartedServer(h)
	d.bmc.Config.ErrorLog = stdlog.New(io.Discard, "", 0) // handshakes a test refuses on purpose
	if opt.https {
		certDir := t.TempDir()
		cert, err := redfish.EnsureCertificate(certDir, []string{"127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		if d.bmcCA, err = os.ReadFile(filepath.Join(certDir, redfish.CertFile)); err != nil {
			t.Fatal(err)
		}
		d.bmc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		d.bmc.StartTLS()
	} else {
		d.bmc.Start()
	}
	t.Cleanup(d.bmc.Close)

	dir := t.TempDir()
	d.imageURL, d.rawImage = writeImage(t, qemuImg, filepath.Join(dir, "images"))
	networks := opt.bmcNetworks
	if networks == nil {
		networks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	d.provider = startProvider(t, ns, "127.0.0.1:0", controller.Options{PollInterval: 50 * time.Millisecond}, redfishdc.Config{
		Images: imageCache(filepath.Join(dir, "cache"), filepath.Join(dir, "images")),
		RawDir: filepath.Join(dir, "raw"), QemuImg: qemuImg,
		InstallerISO: fakeInstallerISO(t, dir),
		BMCNetworks:  networks,
		AddressPool:  opt.pool,
		BMCClient:    redfishclient.Config{RequestTimeout: 300 * time.Millisecond, Attempts: 2, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond},
		StepRetry:    50 * time.Millisecond,
	})
	return d
}

// writeImage writes an OS image as a profile names it (qcow2) and returns its URL and the raw
// disk it stands for: a partition table and random sectors, so a wrong byte anywhere shows.
func writeImage(t *testing.T, qemuImg, dir string) (string, []byte) {
	t.Helper()
	raw := make([]byte, 3<<20)
	_, _ = rand.Read(raw[512:])
	raw[510], raw[511] = 0x55, 0xAA // an MBR boot signature: the image cache takes only disks
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rawPath, qcowPath := filepath.Join(dir, "os.raw"), filepath.Join(dir, "os.qcow2")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "qcow2", rawPath, qcowPath).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	return "file://" + qcowPath, raw
}

// fakeInstallerISO writes an ISO shaped like hack/installer-iso/build.sh's (its volume id and the
// blank config slot) without a kernel: no machine boots it here.
func fakeInstallerISO(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "installer.iso")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := iso9660.Create(file.New(f, false), 0, 0, 2048, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Mkdir("/stargate"); err != nil {
		t.Fatal(err)
	}
	w, err := fs.OpenFile(installeriso.SlotPath, os.O_CREATE|os.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, installeriso.SlotBytes)); err != nil {
		t.Fatal(err)
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: installspec.ISOVolumeID}); err != nil {
		t.Fatal(err)
	}
	return path
}

// addSystem adds a powered-on machine to the BMC.
func (d *dc) addSystem(id string) {
	d.t.Helper()
	if err := d.backend.Add(redfish.System{ID: id, PowerState: redfish.PowerOn, MACAddresses: []string{"52:54:00:00:00:0a"},
		Boot: redfish.Boot{Mode: redfish.BootModeUEFI}, MemoryMiB: 4096, CPUs: 2}, bmcUser, bmcPassword); err != nil {
		d.t.Fatal(err)
	}
}

// create creates objects in the test's namespace.
func (d *dc) create(objs ...client.Object) {
	d.t.Helper()
	for _, o := range objs {
		o.SetNamespace(d.ns)
		if err := env.Client.Create(context.Background(), o); err != nil {
			d.t.Fatal(err)
		}
	}
}

// server is a Server whose BMC is the test's, with its credentials Secret, profile and network.
func (d *dc) server(name, systemID, address string) *stargatev1.Server {
	return &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: stargatev1.ServerSpec{
		BMC: &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "bmc"}, Address: address, SystemID: systemID},
		Network: &stargatev1.StaticNetwork{MACAddress: "52:54:00:00:00:0a", Address: "10.0.1.11/24", Gateway: "10.0.1.1",
			DNS: []string{"10.0.1.2"}},
		RootDeviceHint: &stargatev1.RootDeviceHint{Serial: "DISK-0001"},
	}}
}

func (d *dc) basics() {
	d.create(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bmc"}, Type: corev1.SecretTypeBasicAuth,
			Data: map[string][]byte{"username": []byte(bmcUser), "password": []byte(bmcPassword)}},
		&stargatev1.ProvisioningProfile{ObjectMeta: metav1.ObjectMeta{Name: "worker"}, Spec: stargatev1.ProvisioningProfileSpec{
			CloudInit: "#cloud-config\nruncmd: [[true]]\n", Image: stargatev1.ImageSource{URL: d.imageURL}}},
	)
}

func repave(name, server string, timeout time.Duration) *stargatev1.Operation {
	op := &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: stargatev1.OperationSpec{
		Operation: stargatev1.OperationRepave, ServerRef: stargatev1.LocalObjectReference{Name: server},
		ProvisioningProfileRef: &stargatev1.LocalObjectReference{Name: "worker"}}}
	if timeout > 0 {
		op.Spec.Timeout = &metav1.Duration{Duration: timeout}
	}
	return op
}

func powerOp(name, server string, t stargatev1.OperationType) *stargatev1.Operation {
	return &stargatev1.Operation{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: stargatev1.OperationSpec{
		Operation: t, ServerRef: stargatev1.LocalObjectReference{Name: server}}}
}

// waitFor polls the Operation until cond holds (or a minute passed: the test then fails).
func (d *dc) waitFor(name, what string, cond func(*stargatev1.Operation) bool) *stargatev1.Operation {
	d.t.Helper()
	op := &stargatev1.Operation{}
	deadline := time.Now().Add(time.Minute)
	for {
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: d.ns, Name: name}, op); err == nil && cond(op) {
			return op
		}
		if op.Status.Phase == stargatev1.OperationFailed || op.Status.Phase == stargatev1.OperationSucceeded {
			d.t.Fatalf("Operation %s ended (%s: %s) without %s", name, op.Status.Phase, op.Status.Message, what)
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("Operation %s: no %s within a minute; status %+v", name, what, op.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *dc) waitForCondition(name, typ string) *stargatev1.Operation {
	d.t.Helper()
	return d.waitFor(name, typ, func(op *stargatev1.Operation) bool { return meta.IsStatusConditionTrue(op.Status.Conditions, typ) })
}

func (d *dc) waitForPhase(name string, phase stargatev1.OperationPhase) *stargatev1.Operation {
	d.t.Helper()
	return d.waitFor(name, string(phase), func(op *stargatev1.Operation) bool {
		if op.Status.Phase != phase && (op.Status.Phase == stargatev1.OperationFailed || op.Status.Phase == stargatev1.OperationSucceeded) {
			d.t.Fatalf("Operation %s: %s (%s), want %s", name, op.Status.Phase, op.Status.Message, phase)
		}
		return op.Status.Phase == phase
	})
}

// system is the BMC's view of a machine.
func (d *dc) system(id string) redfish.System {
	d.t.Helper()
	s, err := d.backend.System(context.Background(), id)
	if err != nil {
		d.t.Fatal(err)
	}
	return s
}

// machine stands in for a real server that boots the installer from its virtual CD: it does over
// HTTP what the installer agent (internal/installer) does on a real machine — fetch the ISO the
// BMC was given, read its install spec, download the raw image, report with the token. The boot
// of the real ISO on a (virtual) machine is the next slice's proof, through the simulator's BMC.
type machine struct {
	t    *testing.T
	spec *installspec.Spec
}

// bootFromCD fetches the ISO the BMC holds and reads the Spec the way the kernel finds it: the
// cpio archive in the ISO's config slot.
func (d *dc) bootFromCD(systemID string) *machine {
	d.t.Helper()
	sys := d.system(systemID)
	// Unguessable (52 random base32 characters), ending in .iso, no ?&: after the port: what picky
	// BMCs take.
	if !sys.Media.Inserted || !regexp.MustCompile(`^http://127\.0\.0\.1:\d+/i/[a-z2-7]{52}/installer\.iso$`).MatchString(sys.Media.Image) {
		d.t.Fatalf("virtual media %+v: want an inserted ISO URL ending in .iso without ?&:", sys.Media)
	}
	resp, err := http.Get(sys.Media.Image)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		d.t.Fatalf("GET the ISO: %s", resp.Status)
	}
	path := filepath.Join(d.t.TempDir(), "cd.iso")
	f, err := os.Create(path)
	if err != nil {
		d.t.Fatal(err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		d.t.Fatal(err)
	}
	st, _ := f.Stat()
	fs, err := iso9660.Read(file.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		d.t.Fatal(err)
	}
	slot, err := fs.OpenFile(installeriso.SlotPath, os.O_RDONLY)
	if err != nil {
		d.t.Fatal(err)
	}
	r := cpio.NewReader(slot)
	for {
		h, err := r.Next()
		if err != nil {
			d.t.Fatalf("no %s on the CD: %v", installspec.ConfigPath, err)
		}
		if "/"+h.Name == installspec.ConfigPath {
			spec, err := installspec.Decode(r)
			if err != nil {
				d.t.Fatal(err)
			}
			return &machine{t: d.t, spec: spec}
		}
	}
}

// writeImage downloads the image as the installer does — in Range requests — and checks it
// against the spec's sha256.
func (m *machine) writeImage() []byte {
	m.t.Helper()
	var disk []byte
	const chunk = 1 << 20
	for off := int64(0); off < m.spec.Image.SizeBytes; off += chunk {
		req, _ := http.NewRequest(http.MethodGet, m.spec.Image.URL, nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, min(off+chunk, m.spec.Image.SizeBytes)-1))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			m.t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusPartialContent {
			m.t.Fatalf("GET %s with Range: %s, %v", m.spec.Image.URL, resp.Status, err)
		}
		disk = append(disk, b...)
	}
	if installspec.DigestOf(disk) != m.spec.Image.ChunkedSHA256 {
		m.t.Fatalf("the image's chunked sha256 is not the spec's")
	}
	return disk
}

// report posts a Report with token and returns the answer's status code.
func (m *machine) report(token string, rep installspec.Report) int {
	m.t.Helper()
	rep.APIVersion = installspec.APIVersion
	body := fmt.Sprintf(`{"apiVersion":%q,"phase":%q,"disk":%q,"bytesWritten":%d,"totalBytes":%d,"bytesPerSecond":%d,"message":%q}`,
		rep.APIVersion, rep.Phase, rep.Disk, rep.BytesWritten, rep.TotalBytes, rep.BytesPerSecond, rep.Message)
	return m.post(m.spec.Callback.URL, token, body)
}

func (m *machine) post(url, token, body string) int {
	m.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewBufferString(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// guestCallback is where and with which token the installed OS calls back, read from the seed's
// vendor-data as cloud-init would run it.
func (m *machine) guestCallback() (url, token string) {
	m.t.Helper()
	vd := string(m.spec.Seed.VendorData)
	u := regexp.MustCompile(`urllib\.request\.Request\("([^"]+)"`).FindStringSubmatch(vd)
	tok := regexp.MustCompile(`"Bearer " \+ "([^"]+)"`).FindStringSubmatch(vd)
	if u == nil || tok == nil {
		m.t.Fatalf("the seed's vendor-data has no callback:\n%s", vd)
	}
	return u[1], tok[1]
}

// readyLine is what the installed OS's reporter posts (pkg/cloudinit's readiness line).
func readyLine(instanceID string, errors ...string) string {
	errs := "[]"
	if len(errors) > 0 {
		errs = `["` + strings.Join(errors, `","`) + `"]`
	}
	return fmt.Sprintf("\nSTARGATE-READY {\"instance_id\": %q, \"errors\": %s, \"timeline\": {}}\n", instanceID, errs)
}
