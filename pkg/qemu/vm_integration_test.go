package qemu

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/ipam"
)

// guestImage returns the bootable Debian test image that `make guest-image` builds offline
// (hack/guest-image/build.sh) and `make test` passes in STARGATE_GUEST_IMAGE.
func guestImage(t testing.TB) string {
	t.Helper()
	img := os.Getenv("STARGATE_GUEST_IMAGE")
	if img == "" {
		testreq.Need(t, "the offline guest image (STARGATE_GUEST_IMAGE)", "run `sudo make test`, which builds it with hack/guest-image/build.sh and sets it")
	}
	if _, err := os.Stat(img); err != nil {
		t.Fatalf("STARGATE_GUEST_IMAGE: %v", err)
	}
	return img
}

// bootedVM is a VM under test and what it takes to clean it up.
type bootedVM struct {
	dir, qmp, tap string
	ip            netip.Addr
	net           *hostnet.Network
	ipam          *ipam.Pool
	instanceID    string
	started       time.Time
}

// bootVM sets up a bridge, a tap, an address, a disk and a seed, and starts a VM under TCG.
func bootVM(t testing.TB, userData string) *bootedVM {
	t.Helper()
	img := guestImage(t)
	ctx := context.Background()
	work := t.TempDir()
	n, err := hostnet.New(hostnet.Config{Bridge: "sgvm-br0", Gateway: netip.MustParsePrefix("192.168.100.1/24"), NAT: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ensure(); err != nil {
		t.Fatal(err)
	}
	vm := &bootedVM{dir: filepath.Join(work, "vms", "test-ns", "vm1"), net: n, instanceID: "i-" + time.Now().Format("150405.000000"),
		ipam: &ipam.Pool{Dir: filepath.Join(work, "ipam"), First: netip.MustParseAddr("192.168.100.11"), Last: netip.MustParseAddr("192.168.100.20")}}
	if err := os.MkdirAll(vm.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if vm.ip, err = vm.ipam.Allocate("test-ns/vm1"); err != nil {
		t.Fatal(err)
	}
	vm.tap = hostnet.TapName("test-ns/vm1")
	if err := n.EnsureTap(vm.tap); err != nil {
		t.Fatal(err)
	}
	mac := hostnet.MACAddress("test-ns/vm1")
	if err := CreateOverlay(ctx, img, filepath.Join(vm.dir, filenames.DiskFile), 4<<30); err != nil {
		t.Fatal(err)
	}
	if err := cloudinit.WriteNoCloudISO(filepath.Join(vm.dir, filenames.SeedFile), cloudinit.Config{
		InstanceID: vm.instanceID, Hostname: "vm1", UserData: []byte(userData), VendorData: cloudinit.ReadinessVendorData(vm.instanceID),
		Network: &cloudinit.GuestNetwork{MAC: mac, Address: netip.PrefixFrom(vm.ip, 24), Gateway: netip.MustParseAddr("192.168.100.1")},
	}); err != nil {
		t.Fatal(err)
	}
	if vm.qmp, err = QMPSocketPath(filepath.Join(work, "run"), vm.dir); err != nil {
		t.Fatal(err)
	}
	vm.started = time.Now()
	if err := (VMs{}).Start(ctx, VMSpec{Name: "test", Dir: vm.dir, QMPSocket: vm.qmp, CPUs: 2, MemoryMiB: 1536, MAC: mac, Tap: vm.tap, Accel: AccelTCG}); err != nil {
		t.Fatal(err)
	}
	return vm
}

// waitGuest polls the console until the guest reports cloud-init's result for this instance.
func (vm *bootedVM) waitGuest(t testing.TB, timeout time.Duration) (cloudinit.GuestResult, []byte) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		console, _ := os.ReadFile(filepath.Join(vm.dir, filenames.ConsoleFile))
		if r := cloudinit.ParseGuestResult(console, vm.instanceID); r.Done {
			return r, console
		}
		if st, _ := (VMs{}).Status(vm.dir); !st.Running {
			t.Fatalf("VM exited before cloud-init finished; console:\n%s", cloudinit.ConsoleTail(console, 40, 4000))
		}
		if time.Now().After(deadline) {
			t.Fatalf("cloud-init did not finish within %s; console:\n%s", timeout, cloudinit.ConsoleTail(console, 40, 4000))
		}
		time.Sleep(2 * time.Second) // polling a guest booting under software emulation
	}
}

// destroy stops the VM and removes everything bootVM created.
func (vm *bootedVM) destroy(t testing.TB, grace time.Duration) {
	t.Helper()
	if err := (VMs{}).Stop(context.Background(), vm.dir, vm.qmp, grace); err != nil {
		t.Error(err)
	}
	if err := vm.net.DeleteTap(vm.tap); err != nil {
		t.Error(err)
	}
	if err := vm.ipam.Release("test-ns/vm1"); err != nil {
		t.Error(err)
	}
	if err := os.RemoveAll(vm.dir); err != nil {
		t.Error(err)
	}
	_ = os.Remove(vm.qmp)
	if err := vm.net.Teardown(); err != nil {
		t.Error(err)
	}
}

func TestVMBootsRunsCloudInitAndCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG (minutes); skipped in -short mode")
	}
	netnstest.Require(t)
	userData := "#cloud-config\n" +
		"write_files:\n  - path: /etc/stargate-test\n    content: from-user-data\n" +
		"runcmd:\n  - [sh, -c, 'echo STARGATE-TEST-MARKER $(cat /etc/stargate-test) > /dev/ttyS0']\n"
	vm := bootVM(t, userData)
	cleaned := false
	defer func() {
		if !cleaned {
			vm.destroy(t, 0)
		}
	}()

	result, console := vm.waitGuest(t, 10*time.Minute)
	t.Logf("boot to cloud-init done under TCG: %s", time.Since(vm.started).Round(time.Second))
	if len(result.Errors) > 0 {
		t.Fatalf("cloud-init reported errors: %v", result.Errors)
	}
	if !strings.Contains(string(console), "STARGATE-TEST-MARKER from-user-data") {
		t.Errorf("the user-data's runcmd output is not on the console:\n%s", cloudinit.ConsoleTail(console, 40, 4000))
	}
	// The guest answers on its allocated address, seen from the bridge.
	if out, err := exec.Command("ping", "-c", "3", "-W", "2", vm.ip.String()).CombinedOutput(); err != nil {
		t.Errorf("guest does not answer on %s: %v\n%s", vm.ip, err, out)
	}

	st, err := (VMs{}).Status(vm.dir)
	if err != nil || !st.Running {
		t.Fatalf("status: %+v %v", st, err)
	}
	vm.destroy(t, 20*time.Second) // ACPI powerdown over QMP first, then kill
	cleaned = true
	// A daemonized QEMU is reaped by init, which may take a moment: a zombie is gone for us.
	if stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(st.PID), "stat")); err == nil && !strings.Contains(string(stat), ") Z ") {
		t.Errorf("QEMU pid %d still runs: %s", st.PID, stat)
	}
	if taps, _ := hostnet.Taps(); len(taps) != 0 {
		t.Errorf("taps left: %v", taps)
	}
	if _, err := os.Stat(vm.dir); !os.IsNotExist(err) {
		t.Errorf("VM directory left: %v", err)
	}
	if all, _ := vm.ipam.Allocations(); len(all) != 0 {
		t.Errorf("addresses left: %v", all)
	}
}

// BenchmarkBootToCloudInit measures QEMU start to "cloud-init finished" of the offline Debian
// image under TCG, one boot per iteration (run with -benchtime=1x; needs root and the image).
func BenchmarkBootToCloudInit(b *testing.B) {
	netnstest.Require(b)
	for b.Loop() {
		vm := bootVM(b, "#cloud-config\n{}\n")
		if r, _ := vm.waitGuest(b, 10*time.Minute); len(r.Errors) > 0 {
			b.Fatalf("cloud-init errors: %v", r.Errors)
		}
		b.ReportMetric(time.Since(vm.started).Seconds(), "s-to-cloud-init")
		b.StopTimer()
		vm.destroy(b, 0)
		b.StartTimer()
	}
}
