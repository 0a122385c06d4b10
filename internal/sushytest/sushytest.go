// Package sushytest runs OpenStack's sushy-emulator (the Redfish BMC of Ironic's and Metal3's CI,
// from ../shared/third_party/sushy-tools) in front of a private libvirtd for tests: a BMC no one on
// this project wrote. libvirtd, virtlogd, QEMU and the emulator run as the unprivileged BMCUID, so
// libvirt runs in session mode with every socket, configuration and state file under a directory
// of the test's: nothing is shared with a system libvirt, if there is one. Call Start from a test
// that runs in a test-made network namespace (package netnstest).
package sushytest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/redfish"
	"stargate.io/stargate/pkg/redfishclient"
)

// BMCUID is the unprivileged user libvirtd, virtlogd, QEMU and the emulator run as.
const BMCUID = 65534 // nobody

// Packages are the Debian packages the emulator needs (hack/deps.sh has them).
const Packages = "libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 xorriso " +
	"python3-libvirt python3-flask python3-tenacity python3-bcrypt python3-webob python3-pbr python3-requests"

// debianPython is the interpreter with Debian's python3-* modules (a python3 earlier on PATH may
// have none of them).
const debianPython = "/usr/bin/python3"

// User is the emulator's one user.
const User = "stargate"

// Tools is the source tree of sushy-tools (see ../shared/third_party/README.md from the
// repository's root): $STARGATE_SUSHY_TOOLS, else shared/third_party/sushy-tools beside the
// checkout or beside one of its parents, else where this project's machines keep it (/work/shared),
// so that a clone made elsewhere (CI's fresh clone) finds it too.
func Tools() string {
	if dir := os.Getenv("STARGATE_SUSHY_TOOLS"); dir != "" {
		return dir
	}
	const tree = "shared/third_party/sushy-tools"
	if cwd, err := os.Getwd(); err == nil {
		for dir := cwd; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, tree, "sushy_tools")); err == nil {
				return filepath.Join(dir, tree)
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	return filepath.Join("/work", tree)
}

// Need stops the test (skip on a laptop, fail in CI: package testreq) unless what the emulator
// needs is there.
func Need(t *testing.T) {
	t.Helper()
	install := "sudo apt-get install -y --no-install-recommends " + Packages
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
	if _, err := os.Stat(filepath.Join(Tools(), "sushy_tools", "emulator", "main.py")); err != nil {
		testreq.Need(t, "sushy-tools' source tree at ../shared/third_party/sushy-tools from the repository's root, "+
			"or /work/shared/third_party/sushy-tools (or $STARGATE_SUSHY_TOOLS)",
			"see ../shared/third_party/README.md")
	}
}

// Emulator is a running sushy-emulator with its libvirtd.
type Emulator struct {
	// Config reaches the emulator over https (its certificate trusted) with its user's password.
	Config redfishclient.Config
	// CertPEM is the emulator's self-signed certificate.
	CertPEM []byte
	// LibvirtURI reaches the private libvirtd.
	LibvirtURI string
	// Dir is the emulator's and libvirt's directory, owned by BMCUID.
	Dir string
	// Pool is the directory of the libvirt storage pool "default", where the emulator keeps
	// inserted images.
	Pool string
	// Logs holds the daemons' logs (and the consoles of domains, see Domain), shown when the
	// test fails.
	Logs string
}

// Start starts virtlogd and libvirtd in session mode as BMCUID with all their state in a
// directory of its own, defines the storage pool "default", and starts sushy-emulator over https
// (on 127.0.0.1, with basic auth) in front of them; all of it ends with the test, whose failure
// shows the daemons' logs.
func Start(t *testing.T) *Emulator {
	t.Helper()
	// Not t.TempDir: its parent is private to root, and these run as BMCUID. A short path, too:
	// libvirt's sockets live below it.
	dir, err := os.MkdirTemp("", "sg-sushy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	e := &Emulator{Dir: dir, Pool: filepath.Join(dir, "pool"), Logs: filepath.Join(dir, "logs")}
	for _, d := range []string{"config", "runtime", "cache", "home", "pool", "tmp", "tls", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.DumpLogs(t)
		}
	})
	env := []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + filepath.Join(dir, "home"), "LC_ALL=C.UTF-8",
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "runtime"),
		"XDG_CACHE_HOME=" + filepath.Join(dir, "cache"), "TMPDIR=" + filepath.Join(dir, "tmp"),
	}

	// The emulator's https certificate and its user (bcrypt, htpasswd style), made before the
	// directory is handed to BMCUID.
	if _, err := redfish.EnsureCertificate(filepath.Join(dir, "tls"), []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	password := fmt.Sprintf("pw-%d", time.Now().UnixNano())
	hash := exec.Command(debianPython, "-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())")
	hash.Stdin = strings.NewReader(password)
	hashed, err := hash.Output()
	if err != nil {
		t.Fatalf("hashing the emulator's password: %v", err)
	}
	authFile := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(authFile, []byte(User+":"+strings.TrimSpace(string(hashed))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := chownTree(dir, BMCUID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil { // QEMU, as BMCUID, reaches the pool through it
		t.Fatal(err)
	}

	startDaemon(t, e.Logs, "virtlogd", "", env, "virtlogd")
	libvirtSock := filepath.Join(dir, "runtime", "libvirt", "libvirt-sock")
	startDaemon(t, e.Logs, "libvirtd", "", env, "libvirtd")
	e.LibvirtURI = "qemu+unix:///session?socket=" + libvirtSock
	waitFor(t, "libvirtd", func() error { _, err := e.TryVirsh("version"); return err })
	e.Virsh(t, "pool-define-as", "default", "dir", "--target", e.Pool)
	e.Virsh(t, "pool-start", "default")
	t.Cleanup(func() {
		_, _ = e.TryVirsh("pool-destroy", "default")
		_, _ = e.TryVirsh("pool-undefine", "default")
	})

	port := freePort(t)
	cfgFile := filepath.Join(dir, "emulator.conf")
	cfg := fmt.Sprintf("SUSHY_EMULATOR_LISTEN_IP = %s\nSUSHY_EMULATOR_LISTEN_PORT = %d\nSUSHY_EMULATOR_LIBVIRT_URI = %s\n"+
		"SUSHY_EMULATOR_AUTH_FILE = %s\nSUSHY_EMULATOR_SSL_CERT = %s\nSUSHY_EMULATOR_SSL_KEY = %s\nSUSHY_EMULATOR_STATE_DIR = %s\n",
		pyString("127.0.0.1"), port, pyString(e.LibvirtURI), pyString(authFile), pyString(filepath.Join(dir, "tls", redfish.CertFile)),
		pyString(filepath.Join(dir, "tls", redfish.KeyFile)), pyString(filepath.Join(dir, "tmp")))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := filepath.Abs(Tools())
	if err != nil {
		t.Fatal(err)
	}
	emulator := startDaemon(t, e.Logs, "sushy-emulator", tree, append(env, "PBR_VERSION=2.2.0", "PYTHONDONTWRITEBYTECODE=1"),
		debianPython, "-c", "import sys; sys.argv = ['sushy-emulator', '--config', sys.argv[1]]; from sushy_tools.emulator import main; sys.exit(main.main())",
		cfgFile)

	if e.CertPEM, err = os.ReadFile(filepath.Join(dir, "tls", redfish.CertFile)); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.CertPEM)
	e.Config = redfishclient.Config{
		Endpoint: "https://127.0.0.1:" + strconv.Itoa(port), Username: User, Password: password, RootCAs: pool,
		RequestTimeout: time.Minute, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	}
	probe, err := redfishclient.New(redfishclient.Config{Endpoint: e.Config.Endpoint, RootCAs: pool, Attempts: 1, RequestTimeout: 5 * time.Second})
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

// Virsh runs virsh against the private libvirtd and returns its trimmed output.
func (e *Emulator) Virsh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.TryVirsh(args...)
	if err != nil {
		t.Fatalf("virsh %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TryVirsh is Virsh for cleanups and polls: it returns the error.
func (e *Emulator) TryVirsh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", e.LibvirtURI}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// DumpLogs shows the daemons' logs and the domains' consoles (their last 8 KiB each) in the
// test's output.
func (e *Emulator) DumpLogs(t testing.TB) {
	t.Helper()
	entries, _ := os.ReadDir(e.Logs)
	for _, ent := range entries {
		data, _ := os.ReadFile(filepath.Join(e.Logs, ent.Name()))
		if len(data) > 8<<10 {
			data = data[len(data)-8<<10:]
		}
		t.Logf("--- %s (end):\n%s", ent.Name(), terminalControl.ReplaceAll(data, nil))
	}
}

// terminalControl matches what a console writes for terminals (colours, cursor moves, carriage
// returns), dropped from logs shown.
var terminalControl = regexp.MustCompile(`\x1b\[[0-9;?]*[a-zA-Z]|\r`)

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

// accessLine is a request in the emulator's (werkzeug's) log: `... "METHOD PATH HTTP/1.1" STATUS`.
var accessLine = regexp.MustCompile(`"([A-Z]+ \S+) HTTP/[0-9.]+" ([0-9]{3})`)

// Refused lists the requests the emulator answered with a 4xx or 5xx status, as "STATUS METHOD
// PATH", in order: what a client did that this BMC did not take.
func (e *Emulator) Refused(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.Logs, "sushy-emulator.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range accessLine.FindAllStringSubmatch(string(data), -1) {
		if m[2] >= "400" {
			out = append(out, m[2]+" "+m[1])
		}
	}
	return out
}
