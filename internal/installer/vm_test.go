package installer

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/installeriso"
	"stargate.io/stargate/pkg/installspec"
)

func TestMain(m *testing.M) { os.Exit(netnstest.Main(m)) }

// envInstallerISO names the base installer ISO (hack/installer-iso/build.sh prints its path).
const envInstallerISO = "STARGATE_INSTALLER_ISO"

// controllerStub is the controller's side of an install, as small as a test can make it: it serves
// the image and takes the agent's reports.
type controllerStub struct {
	image []byte
	// imagePath, when set, is served instead of image (an image too large for memory).
	imagePath string
	token     string

	mu       sync.Mutex
	reports  []installspec.Report
	badToken int
}

func (c *controllerStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/images/test.raw" && c.imagePath != "":
		http.ServeFile(w, r, c.imagePath)
	case r.Method == http.MethodGet && r.URL.Path == "/images/test.raw":
		http.ServeContent(w, r, "test.raw", time.Time{}, bytes.NewReader(c.image))
	case r.Method == http.MethodPost && r.URL.Path == "/callback":
		if r.Header.Get("Authorization") != "Bearer "+c.token {
			c.mu.Lock()
			c.badToken++
			c.mu.Unlock()
			http.Error(w, "wrong token", http.StatusUnauthorized)
			return
		}
		rep, err := installspec.DecodeReport(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.reports = append(c.reports, *rep)
		c.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func (c *controllerStub) phases() []installspec.Phase {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []installspec.Phase
	for _, r := range c.reports {
		if len(out) == 0 || out[len(out)-1] != r.Phase {
			out = append(out, r.Phase)
		}
	}
	return out
}

// vmRun is one boot of the installer ISO and what came of it.
type vmRun struct {
	stub          *controllerStub
	image         []byte
	before        sfdiskDump // the image's own partition table
	files         map[string][]byte
	target, decoy string
	console       string
}

// bootInstaller boots the real installer ISO (TCG) with a Spec in its config slot, two virtio
// disks (the target named by serial, and a decoy that would fit too) and a virtio NIC on QEMU's
// user network, and waits until the VM powers itself off. The stub controller serves a small GPT
// image and takes the reports. edit may change the Spec; uefi boots with OVMF instead of SeaBIOS.
// Call it inside a test-made network namespace.
func bootInstaller(t *testing.T, edit func(*installspec.Spec), uefi bool) *vmRun {
	t.Helper()
	isoPath := os.Getenv(envInstallerISO)
	if isoPath == "" {
		testreq.Need(t, envInstallerISO+" (the base installer ISO)", envInstallerISO+"=$(hack/installer-iso/build.sh) go test ...")
	}
	qemuBin := testreq.Command(t, "qemu-system-x86_64", "sudo apt-get install -y qemu-system-x86")
	testreq.Command(t, "sfdisk", "sudo apt-get install -y fdisk")
	const ovmfCode, ovmfVars = "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"
	if _, err := os.Stat(ovmfCode); uefi && err != nil {
		testreq.Need(t, "OVMF (UEFI firmware for QEMU)", "sudo apt-get install -y ovmf")
	}

	image, _ := makeImage(t, "gpt")
	run := &vmRun{image: image, before: sfdiskJSON(t, writeTemp(t, image))}
	run.stub = &controllerStub{image: image, token: rand.Text() + rand.Text()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: run.stub, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	// QEMU's user network: the guest reaches the host's loopback (of this namespace) as 10.0.2.2.
	host := fmt.Sprintf("http://10.0.2.2:%d", port)
	run.files = map[string][]byte{
		"meta-data": []byte("instance-id: i-vm\nlocal-hostname: vm\n"),
		"user-data": []byte("#cloud-config\nfinal_message: installed by the test\n"),
	}
	spec := &installspec.Spec{
		APIVersion: installspec.APIVersion,
		Image:      installspec.Image{URL: host + "/images/test.raw", ChunkedSHA256: installspec.DigestOf(image), SizeBytes: int64(len(image))},
		Network:    installspec.Network{MAC: "52:54:00:5a:7e:01", Address: "10.0.2.15/24", Gateway: "10.0.2.2"},
		RootDevice: installspec.RootDeviceHint{Serial: "stargate-target"},
		Seed:       installspec.Seed{MetaData: run.files["meta-data"], UserData: run.files["user-data"]},
		Callback:   installspec.Callback{URL: host + "/callback", Token: run.stub.token},
	}
	if edit != nil {
		edit(spec)
	}

	dir := t.TempDir()
	isoFile := writeInstallerISO(t, isoPath, spec, dir)
	run.target, run.decoy = filepath.Join(dir, "target.raw"), filepath.Join(dir, "decoy.raw")
	for _, d := range []string{run.target, run.decoy} {
		if err := os.WriteFile(d, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(d, 160*mib); err != nil {
			t.Fatal(err)
		}
	}
	console := filepath.Join(dir, "console.log")
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", "1024", "-display", "none", "-no-reboot",
		"-serial", "file:" + console, "-monitor", "none",
		"-drive", "file=" + isoFile + ",media=cdrom,readonly=on", "-boot", "order=d",
		"-drive", "file=" + run.target + ",if=none,id=target,format=raw", "-device", "virtio-blk-pci,drive=target,serial=stargate-target",
		"-drive", "file=" + run.decoy + ",if=none,id=decoy,format=raw", "-device", "virtio-blk-pci,drive=decoy,serial=decoy",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:5a:7e:01",
	}
	if uefi {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		b, err := os.ReadFile(ovmfVars)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vars, b, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, qemuBin, args...).CombinedOutput()
	consoleLog, _ := os.ReadFile(console)
	run.console = string(consoleLog)
	t.Logf("QEMU ran %s", time.Since(start).Round(time.Second))
	if err != nil || ctx.Err() != nil {
		t.Fatalf("QEMU: %v (%v)\n%s\nconsole:\n%s", err, ctx.Err(), out, consoleLog)
	}
	for _, line := range strings.Split(run.console, "\n") {
		if strings.Contains(line, "stargate-installer:") {
			t.Log("console: " + strings.TrimSpace(line))
		}
	}
	run.stub.mu.Lock()
	defer run.stub.mu.Unlock()
	if run.stub.badToken != 0 {
		t.Errorf("%d reports came with a wrong token", run.stub.badToken)
	}
	return run
}

// writeInstallerISO writes dir/installer.iso: the base ISO with spec in its config slot.
func writeInstallerISO(t testing.TB, baseISO string, spec *installspec.Spec, dir string) string {
	t.Helper()
	base, err := installeriso.OpenBase(baseISO)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	medium, err := base.NewMedium(spec)
	if err != nil {
		t.Fatal(err)
	}
	isoFile := filepath.Join(dir, "installer.iso")
	if err := medium.WriteFile(isoFile); err != nil {
		t.Fatal(err)
	}
	return isoFile
}

// TestInstallerBootsAndInstalls: booted by SeaBIOS, the agent loads its drivers, configures the
// static address, streams the image from the stub controller, reports each step with the token,
// writes the seed partition and powers the VM off. The target disk then holds the image and the
// seed, and the decoy is untouched.
func TestInstallerBootsAndInstalls(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG; skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	run := bootInstaller(t, nil, false)
	if !strings.Contains(run.console, "stargate-installer: install complete") {
		t.Fatalf("the console does not say the install completed:\n%s", run.console)
	}
	want := []installspec.Phase{installspec.PhaseBooted, installspec.PhaseWriting, installspec.PhaseWritten,
		installspec.PhaseSeeded, installspec.PhaseDone}
	if got := run.stub.phases(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("report phases = %v, want %v\nconsole:\n%s", got, want, run.console)
	}
	last := run.stub.reports[len(run.stub.reports)-1]
	if last.BytesWritten != int64(len(run.image)) || !strings.Contains(last.Disk, "serial stargate-target") {
		t.Errorf("Done report = %+v, want %d bytes written to the disk with serial stargate-target", last, len(run.image))
	}
	// The seed partition lies where the agent's own code puts it on a disk of this size.
	part := SeedPartition{Table: "gpt", Number: 3, Size: SeedPartitionBytes,
		Start: (160*mib - gptReservedSectors*512 - SeedPartitionBytes) / partitionAlign * partitionAlign}
	checkInstalledDisk(t, run.target, run.before, part, run.files)
	assertZeros(t, run.decoy, 160*mib)
}

// TestInstallerReportsDigestMismatch: booted by UEFI (OVMF), with a Spec whose sha256 is not the
// image's, the agent writes the image, finds the mismatch, wipes the disk's first MiB, reports
// Failed with the reason and powers off.
func TestInstallerReportsDigestMismatch(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG; skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	run := bootInstaller(t, func(s *installspec.Spec) { s.Image.ChunkedSHA256 = strings.Repeat("0", 64) }, true)
	want := []installspec.Phase{installspec.PhaseBooted, installspec.PhaseWriting, installspec.PhaseFailed}
	if got := run.stub.phases(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("report phases = %v, want %v\nconsole:\n%s", got, want, run.console)
	}
	last := run.stub.reports[len(run.stub.reports)-1]
	if !strings.Contains(last.Message, "sha256") || !strings.Contains(last.Message, "wiped") {
		t.Errorf("Failed report message = %q, want the sha256 mismatch and that the disk was wiped", last.Message)
	}
	if !strings.Contains(run.console, "stargate-installer: FAILED:") {
		t.Errorf("the console does not show the failure:\n%s", run.console)
	}
	assertZeros(t, run.target, mib)
	assertZeros(t, run.decoy, 160*mib)
}

// assertZeros checks that the first n bytes of the file at path are zero.
func assertZeros(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, make([]byte, n)) {
		t.Errorf("%s: the first %d bytes are not all zero", filepath.Base(path), n)
	}
}

// TestGuestBootsFromSeedPartition proves the layout the agent leaves behind on the project's real
// guest image (Debian 12, MBR, cloud-init): the image converted to raw on a larger disk, the seed
// added by WriteSeedPartition, the disk booted (TCG) — cloud-init's NoCloud datasource must find
// the cidata partition and run its user-data (final_message on the serial console). The image
// write itself is what the VM tests above cover; this boot is about the guest's side.
func TestGuestBootsFromSeedPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG; skipped in -short mode")
	}
	if netnstest.RanIsolated(t) {
		return // it ran in a network namespace of its own: output and verdict above
	}
	guest := os.Getenv("STARGATE_GUEST_IMAGE")
	if guest == "" {
		testreq.Need(t, "STARGATE_GUEST_IMAGE (the offline guest image)", "STARGATE_GUEST_IMAGE=$(hack/guest-image/build.sh) go test ...")
	}
	qemuImg := testreq.Command(t, "qemu-img", "sudo apt-get install -y qemu-utils")
	qemuBin := testreq.Command(t, "qemu-system-x86_64", "sudo apt-get install -y qemu-system-x86")

	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.raw")
	run(t, qemuImg, "convert", "-f", "qcow2", "-O", "raw", guest, disk)
	st, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	imageSize, diskSize := st.Size(), st.Size()+256*mib
	if err := os.Truncate(disk, diskSize); err != nil {
		t.Fatal(err)
	}
	const marker = "stargate: the seed came from the cidata partition"
	files := map[string][]byte{
		"meta-data":      []byte("instance-id: seed-partition-test\nlocal-hostname: seeded\n"),
		"user-data":      []byte("#cloud-config\nfinal_message: \"" + marker + "\"\n"),
		"network-config": []byte("version: 2\nethernets: {}\n"), // no NIC: nothing to wait for
	}
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	part, err := WriteSeedPartition(f, diskSize, imageSize, 512, files, dir)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seed: partition %d of the %s at byte %d", part.Number, part.Table, part.Start)

	console := filepath.Join(dir, "console.log")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuBin, "-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", "1024",
		"-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none", "-serial", "file:"+console,
		"-drive", "file="+disk+",if=virtio,format=raw")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	start := time.Now()
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), marker) {
			t.Logf("cloud-init ran the partition's user-data after %s", time.Since(start).Round(time.Second))
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("no %q on the console after %s:\n%s", marker, time.Since(start).Round(time.Second), b)
		}
		time.Sleep(2 * time.Second)
	}
}
