package simulator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/bmc"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/qemu"
	"stargate.io/stargate/pkg/redfish"
)

// TestBlankMachineWithQEMU drives a Server that was never repaved through its own BMC with
// OpenStack's sushy, under TCG: the BMC makes the blank machine; an ISO built here with
// grub-mkrescue is inserted, the boot override set to Cd once, the power turned on, and the
// serial console shows the CD booted from a machine whose disk is empty; a simulator restarted
// while it runs adopts it and powers it off. Without media the machine powers on into its empty
// disk and finds nothing to boot. Then a repave of the same Server replaces the blank machine (its
// OS image is a second GRUB image, so no guest OS boots: the repave is seen to start the
// installation, which is all that differs from a blank machine), and Release removes everything.
// The Kubernetes side (Server, Secret) is a fake client: the BMC backend is the real one.
func TestBlankMachineWithQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG; skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	const isoPkgs = "sudo apt-get install -y grub-pc-bin grub-common xorriso"
	testreq.Command(t, "grub-mkrescue", isoPkgs)
	testreq.Command(t, "xorriso", isoPkgs)
	testreq.Command(t, "qemu-system-x86_64", "sudo apt-get install -y qemu-system-x86")
	testreq.Command(t, "qemu-img", "sudo apt-get install -y qemu-utils")
	if _, err := os.Stat("/usr/lib/grub/i386-pc"); err != nil {
		testreq.Need(t, "GRUB's BIOS modules (/usr/lib/grub/i386-pc)", isoPkgs)
	}
	needSushy(t)
	ctx := context.Background()
	must := mustFor(t)
	images := t.TempDir()
	iso := buildGrubImage(t, filepath.Join(images, "installer.iso"), "STARGATE-ISO-BOOTED")
	osImage := buildGrubImage(t, filepath.Join(images, "os.img"), "STARGATE-DISK-BOOTED")

	// The ISO is served over HTTP, as a BMC client names it (Redfish takes http(s) URLs only),
	// from loopback, which the host's policy refuses unless allowed.
	isoSrv := httptest.NewServer(http.FileServer(http.Dir(images)))
	t.Cleanup(isoSrv.Close)
	cfg := simulator.Config{WorkDir: t.TempDir(), Accel: qemu.AccelTCG, Log: testr.New(t), BootTimeout: 5 * time.Minute,
		Network: hostnet.Config{Bridge: "sgblank-br0", Gateway: netip.MustParsePrefix("192.168.78.1/24")},
		Images:  simulator.ImagePolicy{FileDirs: []string{images}, AllowHosts: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}}
	p, err := simulator.New(cfg)
	must(err)
	server := &stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Namespace: "hardware", Name: "blank-1", UID: "uid-blank-1"},
		Spec: stargatev1.ServerSpec{CPUs: 1, Memory: ptr.To(resource.MustParse("512Mi")), Disk: ptr.To(resource.MustParse("2Gi")),
			BMC: &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: "blank-1-bmc"}}},
		Status: stargatev1.ServerStatus{Host: "host-a"}}
	key := client.ObjectKeyFromObject(server)
	t.Cleanup(func() {
		if err := p.Release(ctx, key); err != nil {
			t.Error(err)
		}
		_ = p.Teardown()
	})

	scheme := runtime.NewScheme()
	must(clientgoscheme.AddToScheme(scheme))
	must(stargatev1.AddToScheme(scheme))
	kube := fake.NewClientBuilder().WithScheme(scheme).WithObjects(server, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "hardware", Name: "blank-1-bmc"}, Type: corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{"username": []byte("tenant"), "password": []byte("pw")}}).
		WithIndex(&stargatev1.Operation{}, "spec.serverRef.name", func(o client.Object) []string {
			return []string{o.(*stargatev1.Operation).Spec.ServerRef.Name}
		}).Build()
	backend := &bmc.Backend{Client: kube, APIReader: kube, Provider: p, Recorder: events.NewFakeRecorder(100),
		Locks: &controller.ServerLocks{}, HostID: "host-a", MaxCPUs: 2, MaxMemoryBytes: 1 << 30}
	bmcSrv := httptest.NewServer(&redfish.Service{Backend: backend, Log: testr.New(t)})
	t.Cleanup(bmcSrv.Close)
	sushy := func(steps ...string) []sushyStep {
		t.Helper()
		return runSushySteps(t, bmcSrv.URL, "/redfish/v1/Systems/"+controller.BMCSystemID(key), steps)
	}
	console := filepath.Join(p.VMDir(key), filenames.ConsoleFile)

	// 1. The virtual CD, booted once: the machine is made, its empty disk created, the CD booted.
	start := time.Now()
	seen := sushy("insert "+isoSrv.URL+"/"+filepath.Base(iso), "boot_cd_once", "on")
	if last := seen[len(seen)-1]; last.Power != "On" || last.BootEnabled != "Disabled" || !last.MediaInserted {
		t.Errorf("after insert, boot Cd once, on: sushy sees %+v, want on, the override used up, the CD inserted", last)
	}
	waitConsole(t, console, "STARGATE-ISO-BOOTED", "STARGATE-DISK-BOOTED", 90*time.Second)
	t.Logf("the blank machine booted its virtual CD %s after the first Redfish request (TCG); its console:\n%s",
		time.Since(start).Round(100*time.Millisecond), readConsole(t, console))
	info, err := p.Inspect(ctx, key)
	must(err)
	if !info.Running || !info.Blank || info.InstanceID != "" || info.IPAddress == "" {
		t.Errorf("blank machine booted from CD: %+v, want running, blank, an address, no installation", info)
	}
	disk, err := qemu.InspectBaseImage(ctx, filepath.Join(p.VMDir(key), filenames.DiskFile))
	if err != nil || disk.Format != "qcow2" || disk.VirtualSize != 2<<30 {
		t.Errorf("blank machine's disk: %+v %v, want an empty qcow2 of spec.disk (2 GiB)", disk, err)
	}
	if backing, err := qemu.BackingFile(filepath.Join(p.VMDir(key), filenames.DiskFile)); err != nil || backing != "" {
		t.Errorf("blank machine's disk overlays %q (%v), want no backing image", backing, err)
	}
	if cmdline := qemuCmdline(t, p.VMDir(key)); strings.Contains(cmdline, filenames.SeedFile) {
		t.Errorf("the blank machine got a cloud-init seed: %s", cmdline)
	}

	// 2. The simulator restarts while the machine runs: the new one adopts it (its BMC too).
	p2, err := simulator.New(cfg)
	must(err)
	if info, err := p2.Inspect(ctx, key); err != nil || !info.Running || !info.Blank {
		t.Fatalf("restarted simulator sees %+v %v, want the running blank machine", info, err)
	}
	backend.Provider, p = p2, p2
	if seen := sushy("force_off"); seen[0].Power != "Off" {
		t.Errorf("after ForceOff through the restarted simulator: %+v", seen[0])
	}
	if n := countQEMU(t, cfg.WorkDir); n != 0 {
		t.Errorf("%d QEMU processes after ForceOff, want 0", n)
	}

	// 3. No media: the empty disk has nothing to boot.
	start = time.Now()
	seen = sushy("eject", "on")
	if last := seen[len(seen)-1]; last.Power != "On" || last.MediaInserted {
		t.Errorf("after eject, on: sushy sees %+v", last)
	}
	waitConsole(t, console, noBootableDevice, "STARGATE-ISO-BOOTED", 120*time.Second)
	t.Logf("the blank machine found no bootable device %s after power-on (TCG); its console:\n%s",
		time.Since(start).Round(100*time.Millisecond), readConsole(t, console))
	if seen := sushy("force_off"); seen[0].Power != "Off" {
		t.Errorf("after ForceOff: %+v", seen[0])
	}

	// 4. A repave replaces the blank machine: seed, fresh disk on the OS image, installation.
	req := controller.RepaveRequest{Server: key, InstanceID: "i-blank-repave", CPUs: 1, MemoryMiB: 512, DiskBytes: 2 << 30,
		ImageURL: "file://" + osImage, UserData: []byte("#cloud-config\n{}\n")}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := p.Repave(ctx, req)
		must(err)
		if st.Failed {
			t.Fatalf("repave of the blank machine failed: %s: %s", st.Reason, st.Message)
		}
		if vmRunning(st) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("repave of the blank machine did not start its VM within 2m: %+v", st.Steps)
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitConsole(t, console, "STARGATE-DISK-BOOTED", "STARGATE-ISO-BOOTED", 90*time.Second)
	info, err = p.Inspect(ctx, key)
	must(err)
	if !info.Running || info.Blank || info.InstanceID != "i-blank-repave" {
		t.Errorf("after the repave: %+v, want running, installed, no longer blank", info)
	}
	if cmdline := qemuCmdline(t, p.VMDir(key)); !strings.Contains(cmdline, filenames.SeedFile) {
		t.Errorf("the repaved machine has no cloud-init seed: %s", cmdline)
	}
	if _, err := os.Stat(filepath.Join(p.VMDir(key), filenames.BlankFile)); !os.IsNotExist(err) {
		t.Errorf("the blank machine's mark outlived its repave: %v", err)
	}

	// 5. Release (the Server's deletion) leaves nothing: VM, directory, address claim.
	must(p.Release(ctx, key))
	if info, err := p.Inspect(ctx, key); err != nil || info.Exists {
		t.Errorf("after Release: %+v %v", info, err)
	}
	files, _ := os.ReadDir(filepath.Join(simulator.Layout{WorkDir: cfg.WorkDir}.IPAMDir(), cfg.Network.Bridge))
	for _, f := range files {
		if _, err := netip.ParseAddr(f.Name()); err == nil { // a claim is a file named by its address
			b, _ := os.ReadFile(filepath.Join(simulator.Layout{WorkDir: cfg.WorkDir}.IPAMDir(), cfg.Network.Bridge, f.Name()))
			t.Errorf("address %s still claimed after Release, by %s", f.Name(), b)
		}
	}
	if n := countQEMU(t, cfg.WorkDir); n != 0 {
		t.Errorf("%d QEMU processes left", n)
	}
}

// readConsole is the console log, for the test's output.
func readConsole(t *testing.T, console string) string {
	t.Helper()
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// noBootableDevice is what SeaBIOS prints when no device boots.
const noBootableDevice = "No bootable device"

func vmRunning(st controller.RepaveStatus) bool {
	for _, s := range st.Steps {
		if s.Type == stargatev1.ConditionVMRunning {
			return s.State == controller.StepDone
		}
	}
	return false
}

// qemuCmdline is the command line of the QEMU process of the VM in dir.
func qemuCmdline(t *testing.T, dir string) string {
	t.Helper()
	pid, err := os.ReadFile(filepath.Join(dir, filenames.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

// sushyStep is what testdata/sushy_steps.py saw after one step.
type sushyStep struct {
	Step          string `json:"step"`
	Power         string `json:"power"`
	BootTarget    string `json:"boot_target"`
	BootEnabled   string `json:"boot_enabled"`
	MediaImage    string `json:"media_image"`
	MediaInserted bool   `json:"media_inserted"`
}

const sushyPython = "/usr/bin/python3" // Debian's, which has python3-sushy (a pyenv one first on PATH has not)

func needSushy(t *testing.T) {
	t.Helper()
	const install = "sudo apt-get install -y python3-sushy"
	if _, err := os.Stat(sushyPython); err != nil {
		testreq.Need(t, sushyPython, install)
	}
	if out, err := exec.Command(sushyPython, "-c", "import sushy").CombinedOutput(); err != nil {
		testreq.Need(t, "the python3-sushy package (import sushy: "+string(out)+")", install)
	}
}

// runSushySteps runs testdata/sushy_steps.py against the system and returns what it saw.
func runSushySteps(t *testing.T, url, system string, steps []string) []sushyStep {
	t.Helper()
	cfg, err := json.Marshal(map[string]any{"url": url, "user": "tenant", "password": "pw", "system": system, "steps": steps})
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(sushyPython, "testdata/sushy_steps.py", string(cfg))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sushy %v: %v\nstderr:\n%s\nstdout:\n%s", steps, err, stderr.String(), out)
	}
	var got struct {
		Steps []sushyStep `json:"steps"`
	}
	if err := json.Unmarshal(out, &got); err != nil || len(got.Steps) != len(steps) {
		t.Fatalf("sushy output %q: %v", out, err)
	}
	return got.Steps
}
