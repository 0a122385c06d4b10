package installer

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
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

	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/installspec"
)

// The VM both sides of BenchmarkInstallerWriteVsDD run in: the shape of the simulator's blank
// machine in the e2e (TCG on all host threads, 2 vCPUs, 2 GiB, virtio disk on a qcow2 with discard,
// virtio NIC), with QEMU's user network reaching the benchmark's server as 10.0.2.2.
var benchVM = []string{"-machine", "q35", "-accel", "tcg,thread=multi", "-smp", "2", "-m", "2048",
	"-display", "none", "-monitor", "none", "-no-reboot"}

const benchMAC = "52:54:00:5a:7e:02"

// BenchmarkInstallerWriteVsDD compares the installer's image write with `curl | dd` of the same
// raw image in the same kind of VM (root, STARGATE_GUEST_IMAGE and STARGATE_INSTALLER_ISO, TCG;
// one iteration each: -benchtime=1x). The image is the offline guest image converted to raw
// (3 GiB, ~500 MiB of data), served over HTTP from this package's network namespace; the target is
// an empty 10 GiB qcow2. installer-MB/s is the installer's own report (bytes over the time from
// its first byte to the image verified); dd-MB/s is the guest's clock around `curl | dd
// oflag=direct` and a sync, both into a fresh disk. ratio = installer / dd; the goal is ≥ 0.9.
func BenchmarkInstallerWriteVsDD(b *testing.B) {
	netnstest.Require(b)
	guest, iso := os.Getenv("STARGATE_GUEST_IMAGE"), os.Getenv(envInstallerISO)
	if guest == "" || iso == "" {
		testreq.Need(b, "STARGATE_GUEST_IMAGE and "+envInstallerISO, "make bench (it builds and names both)")
	}
	qemuImg := testreq.Command(b, "qemu-img", "sudo apt-get install -y qemu-utils")
	qemuBin := testreq.Command(b, "qemu-system-x86_64", "sudo apt-get install -y qemu-system-x86")

	dir := b.TempDir()
	raw := filepath.Join(dir, "image.raw")
	mustRun(b, qemuImg, "convert", "-f", "qcow2", "-O", "raw", guest, raw)
	st, err := os.Stat(raw)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(raw)
	if err != nil {
		b.Fatal(err)
	}
	digest := installspec.NewImageDigest()
	if _, err := io.CopyBuffer(digest, f, make([]byte, installspec.DigestChunkBytes)); err != nil {
		b.Fatal(err)
	}
	f.Close()
	sum := digest.Finish()
	stub := &controllerStub{imagePath: raw, token: rand.Text() + rand.Text()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: stub, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	host := fmt.Sprintf("http://10.0.2.2:%d", ln.Addr().(*net.TCPAddr).Port)

	var installerRate, ddRate float64
	for b.Loop() {
		installerRate = benchInstallerWrite(b, qemuBin, qemuImg, iso, dir, stub, installspec.Image{
			URL: host + "/images/test.raw", ChunkedSHA256: sum, SizeBytes: st.Size()})
		ddRate = benchDDWrite(b, qemuBin, qemuImg, guest, dir, host+"/images/test.raw", st.Size())
	}
	b.ReportMetric(installerRate/1e6, "installer-MB/s")
	b.ReportMetric(ddRate/1e6, "dd-MB/s")
	b.ReportMetric(installerRate/ddRate, "ratio")
}

// benchInstallerWrite boots the installer on an empty disk and returns its write rate (bytes/s).
func benchInstallerWrite(b *testing.B, qemuBin, qemuImg, iso, dir string, stub *controllerStub, img installspec.Image) float64 {
	stub.mu.Lock()
	stub.reports = nil
	stub.mu.Unlock()
	spec := &installspec.Spec{
		APIVersion: installspec.APIVersion, Image: img,
		Network:  installspec.Network{MAC: benchMAC, Address: "10.0.2.15/24", Gateway: "10.0.2.2"},
		Seed:     installspec.Seed{MetaData: []byte("instance-id: i-bench\nlocal-hostname: bench\n"), UserData: []byte("#cloud-config\n")},
		Callback: installspec.Callback{URL: strings.TrimSuffix(img.URL, "/images/test.raw") + "/callback", Token: stub.token},
	}
	isoFile := writeInstallerISO(b, iso, spec, dir)
	target := emptyQcow2(b, qemuImg, dir, "installer-target.qcow2")
	runVM(b, qemuBin, filepath.Join(dir, "installer-console.log"),
		"-drive", "file="+isoFile+",media=cdrom,readonly=on", "-boot", "order=d",
		"-drive", "file="+target+",if=virtio,format=qcow2,discard=unmap",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac="+benchMAC)
	stub.mu.Lock()
	defer stub.mu.Unlock()
	for _, r := range stub.reports {
		if r.Phase == installspec.PhaseWritten && r.BytesPerSecond > 0 {
			b.Logf("installer: %d bytes at %.1f MB/s", r.BytesWritten, float64(r.BytesPerSecond)/1e6)
			return float64(r.BytesPerSecond)
		}
	}
	b.Fatalf("the installer reported no Written phase: %+v", stub.reports)
	return 0
}

// ddLine is what the dd VM prints: the guest's clock before and after the write.
var ddLine = regexp.MustCompile(`STARGATE-DD ([0-9.]+) ([0-9.]+) rc=0`)

// benchDDWrite boots the guest image with an empty second disk; cloud-init writes the image to it
// with curl | dd and prints the guest's clock around it. It returns bytes/s.
func benchDDWrite(b *testing.B, qemuBin, qemuImg, guest, dir, url string, size int64) float64 {
	osDisk := filepath.Join(dir, "dd-os.qcow2")
	mustRun(b, qemuImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", guest, osDisk)
	target := emptyQcow2(b, qemuImg, dir, "dd-target.qcow2")
	seed := filepath.Join(dir, "dd-seed.iso")
	userData := "#cloud-config\nruncmd:\n  - [sh, -c, 's=$(date +%s.%N); curl -sfS " + url +
		" | dd of=/dev/vdb bs=4M iflag=fullblock oflag=direct status=none && sync; rc=$?; e=$(date +%s.%N);" +
		" echo \"STARGATE-DD $s $e rc=$rc\" > /dev/ttyS0; poweroff']\n"
	if err := cloudinit.WriteNoCloudISO(seed, cloudinit.Config{InstanceID: "i-dd", Hostname: "dd", UserData: []byte(userData)}); err != nil {
		b.Fatal(err)
	}
	console := filepath.Join(dir, "dd-console.log")
	runVM(b, qemuBin, console,
		"-drive", "file="+osDisk+",if=virtio,format=qcow2,discard=unmap",
		"-drive", "file="+target+",if=virtio,format=qcow2,discard=unmap",
		// The seed on virtio too: the guest's cloud kernel has no CD-ROM driver.
		"-drive", "file="+seed+",if=virtio,format=raw,readonly=on",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac="+benchMAC)
	out, _ := os.ReadFile(console)
	m := ddLine.FindSubmatch(out)
	if m == nil {
		b.Fatalf("the dd VM printed no successful STARGATE-DD line; console tail:\n%s", tail(out, 3000))
	}
	start, _ := strconv.ParseFloat(string(m[1]), 64)
	end, _ := strconv.ParseFloat(string(m[2]), 64)
	b.Logf("dd: %d bytes in %.1f s", size, end-start)
	return float64(size) / (end - start)
}

// runVM runs QEMU until the guest powers off (10 minutes at most), its serial console to console.
func runVM(b *testing.B, qemuBin, console string, args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	args = append(append(append([]string{}, benchVM...), "-serial", "file:"+console), args...)
	start := time.Now()
	if out, err := exec.CommandContext(ctx, qemuBin, args...).CombinedOutput(); err != nil {
		log, _ := os.ReadFile(console)
		b.Fatalf("QEMU: %v\n%s\nconsole tail:\n%s", err, out, tail(log, 3000))
	}
	b.Logf("%s: the VM ran %s", filepath.Base(console), time.Since(start).Round(time.Second))
}

func emptyQcow2(b *testing.B, qemuImg, dir, name string) string {
	p := filepath.Join(dir, name)
	_ = os.Remove(p)
	mustRun(b, qemuImg, "create", "-q", "-f", "qcow2", p, "10G")
	return p
}

func mustRun(b testing.TB, name string, args ...string) {
	b.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func tail(b []byte, n int) []byte { return b[max(0, len(b)-n):] }
