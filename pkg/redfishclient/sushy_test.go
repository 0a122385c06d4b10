package redfishclient_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/redfish"
	"stargate.io/stargate/pkg/redfishclient"
)

func TestMain(m *testing.M) { os.Exit(netnstest.Main(m)) }

// sushyTools is the source tree of OpenStack's sushy-tools (see ../shared/third_party/README.md
// from the repository's root): $STARGATE_SUSHY_TOOLS, else shared/third_party/sushy-tools beside
// the checkout or beside one of its parents, else where this project's machines keep it
// (/work/shared), so that a clone made elsewhere (CI's fresh clone) finds it too.
func sushyTools() string {
	if dir := os.Getenv("STARGATE_SUSHY_TOOLS"); dir != "" {
		return dir
	}
	const tree = "shared/third_party/sushy-tools"
	root, err := filepath.Abs("../..")
	if err != nil {
		return filepath.Join("../../..", tree)
	}
	for dir := filepath.Dir(root); ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, tree, "sushy_tools")); err == nil {
			return filepath.Join(dir, tree)
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	return filepath.Join("/work", tree)
}

// debianPython is the interpreter with Debian's python3-* modules (a python3 earlier on PATH may
// have none of them).
const debianPython = "/usr/bin/python3"

// sushyPackages are the Debian packages the sushy-emulator test needs (hack/deps.sh has them).
const sushyPackages = "libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 xorriso " +
	"python3-libvirt python3-flask python3-tenacity python3-bcrypt python3-webob python3-pbr python3-requests"

// bmcUID is the unprivileged user libvirtd, virtlogd, QEMU and the emulator run as: libvirt then
// runs in session mode, with every socket, configuration and state file under the test's own
// directory, so that nothing is shared with a system libvirt, if there is one.
const bmcUID = 65534 // nobody

// needSushyEmulator stops the test (skip on a laptop, fail in CI) unless what the emulator
// needs is there.
func needSushyEmulator(t *testing.T) {
	t.Helper()
	install := "sudo apt-get install -y --no-install-recommends " + sushyPackages
	for _, cmd := range []string{"libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "xorriso"} {
		testreq.Command(t, cmd, install)
	}
	if _, err := os.Stat(debianPython); err != nil {
		testreq.Need(t, debianPython, install)
	}
	const modules = "libvirt, flask, tenacity, bcrypt, webob, pbr, requests"
	if out, err := exec.Command(debianPython, "-c", "import "+modules).CombinedOutput(); err != nil {
		testreq.Need(t, "Python modules "+modules+" for sushy-emulator ("+strings.TrimSpace(string(out))+")", install)
	}
	if _, err := os.Stat(filepath.Join(sushyTools(), "sushy_tools", "emulator", "main.py")); err != nil {
		testreq.Need(t, "sushy-tools' source tree at ../shared/third_party/sushy-tools from the repository's root, "+
			"or /work/shared/third_party/sushy-tools (or $STARGATE_SUSHY_TOOLS)",
			"see ../shared/third_party/README.md")
	}
}

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
	needSushyEmulator(t)
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
	bad := e.config
	bad.Password = "not-" + e.config.Password
	c, err := redfishclient.New(bad)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.System(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") || strings.Contains(err.Error(), bad.Password) {
		t.Errorf("with a wrong password: %v; want a 401 without the password", err)
	}

	c, err = redfishclient.New(e.config)
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
		if s := e.virsh(t, "domstate", e.domain); s != domstate {
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
	if !e.domainXML(t).bootsFromCD() {
		t.Errorf("the domain does not boot from its CD first:\n%s", e.virsh(t, "dumpxml", "--inactive", e.domain))
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
	attached := e.domainXML(t).cdromSource()
	if !strings.HasPrefix(attached, e.pool+"/") {
		t.Errorf("the domain's CD drive holds %q, want a volume of the pool %s", attached, e.pool)
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
	if src := e.domainXML(t).cdromSource(); src != "" {
		t.Errorf("after eject the domain's CD drive still holds %q", src)
	}
	t.Logf("the whole exchange took %s", time.Since(start).Round(time.Millisecond))
}

// sushyEmulator is a running sushy-emulator with its libvirt.
type sushyEmulator struct {
	config redfishclient.Config
	// libvirtURI reaches the private libvirtd.
	libvirtURI string
	domain     string
	uuid       string
	// other is the UUID of a second domain, which the test leaves alone.
	other string
	// pool is the directory of the libvirt storage pool "default", where the emulator keeps
	// inserted images.
	pool string
}

// virsh runs virsh against the private libvirtd and returns its trimmed output.
func (e *sushyEmulator) virsh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := virsh(e.libvirtURI, args...)
	if err != nil {
		t.Fatalf("virsh %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func virsh(uri string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", uri}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// startSushyEmulator starts virtlogd and libvirtd in session mode as bmcUID with all their state
// in a directory of the test's, defines the storage pool "default" and a small domain, and
// starts sushy-emulator over https in front of them; all of it ends with the test.
func startSushyEmulator(t *testing.T) *sushyEmulator {
	t.Helper()
	// Not t.TempDir: its parent is private to root, and these run as bmcUID. A short path, too:
	// libvirt's sockets live below it.
	dir, err := os.MkdirTemp("", "sg-sushy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	logs := filepath.Join(dir, "logs")
	for _, d := range []string{"config", "runtime", "cache", "home", "pool", "tmp", "tls", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, logs)
		}
	})
	env := []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + filepath.Join(dir, "home"), "LC_ALL=C.UTF-8",
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "runtime"),
		"XDG_CACHE_HOME=" + filepath.Join(dir, "cache"), "TMPDIR=" + filepath.Join(dir, "tmp"),
	}

	// The emulator's https certificate and its users (bcrypt, htpasswd style), made before the
	// directory is handed to bmcUID.
	if _, err := redfish.EnsureCertificate(filepath.Join(dir, "tls"), []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	const bmcUser = "stargate"
	bmcPassword := fmt.Sprintf("pw-%d", time.Now().UnixNano())
	hash := exec.Command(debianPython, "-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())")
	hash.Stdin = strings.NewReader(bmcPassword)
	hashed, err := hash.Output()
	if err != nil {
		t.Fatalf("hashing the emulator's password: %v", err)
	}
	authFile := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(authFile, []byte(bmcUser+":"+strings.TrimSpace(string(hashed))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := chownTree(dir, bmcUID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil { // QEMU, as bmcUID, reaches the pool through it
		t.Fatal(err)
	}

	startDaemon(t, logs, "virtlogd", "", env, "virtlogd")
	libvirtSock := filepath.Join(dir, "runtime", "libvirt", "libvirt-sock")
	startDaemon(t, logs, "libvirtd", "", env, "libvirtd")
	uri := "qemu+unix:///session?socket=" + libvirtSock
	waitFor(t, "libvirtd", func() error { _, err := virsh(uri, "version"); return err })

	e := &sushyEmulator{libvirtURI: uri, domain: "sg-bmc-test", uuid: "5b1b2c6e-9a41-4c3e-8d2f-0e6f1a2b3c4d", pool: filepath.Join(dir, "pool")}
	e.virsh(t, "pool-define-as", "default", "dir", "--target", e.pool)
	e.virsh(t, "pool-start", "default")
	// The domain the test drives, and another one (never started), so the BMC has two systems.
	e.other = "0c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5"
	for _, d := range []struct{ name, uuid string }{{e.domain, e.uuid}, {"sg-bmc-other", e.other}} {
		disk := filepath.Join(e.pool, d.name+".raw")
		if err := os.WriteFile(disk, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(disk, 64<<20); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(disk, bmcUID, bmcUID); err != nil {
			t.Fatal(err)
		}
		domXML := filepath.Join(dir, d.name+".xml")
		if err := os.WriteFile(domXML, []byte(fmt.Sprintf(domainXML, d.name, d.uuid, disk)), 0o644); err != nil {
			t.Fatal(err)
		}
		e.virsh(t, "define", domXML)
		t.Cleanup(func() {
			// The domain's QEMU is not libvirtd's child: end it before libvirtd goes.
			_, _ = virsh(uri, "destroy", d.name)
			_, _ = virsh(uri, "undefine", d.name)
		})
	}
	t.Cleanup(func() {
		_, _ = virsh(uri, "pool-destroy", "default")
		_, _ = virsh(uri, "pool-undefine", "default")
	})

	port := freePort(t)
	cfgFile := filepath.Join(dir, "emulator.conf")
	cfg := fmt.Sprintf("SUSHY_EMULATOR_LISTEN_IP = %s\nSUSHY_EMULATOR_LISTEN_PORT = %d\nSUSHY_EMULATOR_LIBVIRT_URI = %s\n"+
		"SUSHY_EMULATOR_AUTH_FILE = %s\nSUSHY_EMULATOR_SSL_CERT = %s\nSUSHY_EMULATOR_SSL_KEY = %s\nSUSHY_EMULATOR_STATE_DIR = %s\n",
		pyString("127.0.0.1"), port, pyString(uri), pyString(authFile), pyString(filepath.Join(dir, "tls", redfish.CertFile)),
		pyString(filepath.Join(dir, "tls", redfish.KeyFile)), pyString(filepath.Join(dir, "tmp")))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := filepath.Abs(sushyTools())
	if err != nil {
		t.Fatal(err)
	}
	emulator := startDaemon(t, logs, "sushy-emulator", tree, append(env, "PBR_VERSION=2.2.0", "PYTHONDONTWRITEBYTECODE=1"),
		debianPython, "-c", "import sys; sys.argv = ['sushy-emulator', '--config', sys.argv[1]]; from sushy_tools.emulator import main; sys.exit(main.main())",
		cfgFile)

	pem := mustRead(t, filepath.Join(dir, "tls", redfish.CertFile))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	e.config = redfishclient.Config{
		Endpoint: "https://127.0.0.1:" + strconv.Itoa(port), Username: bmcUser, Password: bmcPassword, RootCAs: pool,
		RequestTimeout: time.Minute, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	}
	probe, err := redfishclient.New(redfishclient.Config{Endpoint: e.config.Endpoint, RootCAs: pool, Attempts: 1, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sushy-emulator", func() error {
		select {
		case <-emulator.exited:
			return errors.New("it exited (its log is below)")
		default:
		}
		// The service root answers without credentials; anything else is 401.
		_, err := probe.System(context.Background(), "")
		var he *redfishclient.HTTPError
		if errors.As(err, &he) && he.StatusCode == http.StatusUnauthorized {
			return nil
		}
		return fmt.Errorf("not ready: %w", err)
	})
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

// libvirtDomain is the part of a libvirt domain's XML the test reads.
type libvirtDomain struct {
	OSBoot []struct {
		Dev string `xml:"dev,attr"`
	} `xml:"os>boot"`
	Disks []struct {
		Device string `xml:"device,attr"`
		Source struct {
			File string `xml:"file,attr"`
		} `xml:"source"`
		Boot struct {
			Order string `xml:"order,attr"`
		} `xml:"boot"`
	} `xml:"devices>disk"`
}

// domain reads the domain's persistent definition (what the next power-on uses).
func (e *sushyEmulator) domainXML(t *testing.T) libvirtDomain {
	t.Helper()
	var d libvirtDomain
	if err := xml.Unmarshal([]byte(e.virsh(t, "dumpxml", "--inactive", e.domain)), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// cdromSource is the file in the domain's CD drive ("" when none, or when it has no CD drive:
// sushy-emulator removes the drive on eject).
func (d libvirtDomain) cdromSource() string {
	for _, disk := range d.Disks {
		if disk.Device == "cdrom" && disk.Source.File != "" {
			return disk.Source.File
		}
	}
	return ""
}

// bootsFromCD reports whether the domain boots from its CD drive first, by per-device boot order
// or by the <os> boot list.
func (d libvirtDomain) bootsFromCD() bool {
	for _, disk := range d.Disks {
		if disk.Boot.Order == "1" {
			return disk.Device == "cdrom"
		}
	}
	return len(d.OSBoot) > 0 && d.OSBoot[0].Dev == "cdrom"
}

// daemon is a process startDaemon started.
type daemon struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited
}

// startDaemon starts argv in workDir ("" for the test's) as bmcUID, its output in
// logs/name.log; it is stopped (SIGTERM, then SIGKILL) with its process group when the test ends.
func startDaemon(t *testing.T, logs, name, workDir string, env []string, argv ...string) *daemon {
	t.Helper()
	log, err := os.Create(filepath.Join(logs, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = workDir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: bmcUID, Gid: bmcUID},
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	d := &daemon{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = log.Close()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-d.exited
		}
	})
	return d
}

// waitFor calls ready until it succeeds, for at most a minute.
func waitFor(t *testing.T, what string, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after a minute: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePort returns a TCP port free on 127.0.0.1 (in the test's own network namespace, where
// nothing else listens).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// pyString is s as a Python string literal (a JSON string is one).
func pyString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// chownTree gives dir and everything below it to uid.
func chownTree(dir string, uid int) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
}

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

// dumpLogs shows the daemons' logs (their last 8 KiB each) in the test's output.
func dumpLogs(t *testing.T, logs string) {
	entries, _ := os.ReadDir(logs)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(logs, e.Name()))
		if len(data) > 8<<10 {
			data = data[len(data)-8<<10:]
		}
		t.Logf("--- %s (end):\n%s", e.Name(), data)
	}
}
