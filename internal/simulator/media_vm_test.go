package simulator_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// TestBootFromVirtualMediaWithQEMU boots a real ISO as a VM's virtual CD, under TCG: an ISO built
// here with grub-mkrescue whose GRUB prints a marker on the serial console, inserted from a
// file:// URL under the allowed image directory, booted by a one-time Cd override. The server's
// disk is a second GRUB image printing another marker, so the console says which device booted:
// the CD first, then — the override used up, the CD still inserted — the disk.
//
// The VM directory is made by hand (instance-id, vm.json, seed, an overlay disk) instead of by a
// repave, which would boot a whole guest OS first; PowerOn's code path is the real one.
func TestBootFromVirtualMediaWithQEMU(t *testing.T) {
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
	ctx := context.Background()
	images := t.TempDir()
	iso := buildGrubImage(t, filepath.Join(images, "installer.iso"), "STARGATE-ISO-BOOTED")
	diskBase := buildGrubImage(t, filepath.Join(t.TempDir(), "disk.img"), "STARGATE-DISK-BOOTED")

	cfg := simulator.Config{WorkDir: t.TempDir(), Accel: qemu.AccelTCG, Log: logr.Discard(), BootTimeout: time.Minute,
		Network: hostnet.Config{Bridge: "sgmedia-br0", Gateway: netip.MustParsePrefix("192.168.79.1/24")},
		Images:  simulator.ImagePolicy{FileDirs: []string{images}}}
	p, err := simulator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	server := types.NamespacedName{Namespace: "dc-simulator", Name: "media-1"}
	t.Cleanup(func() {
		if err := p.Release(ctx, server); err != nil {
			t.Error(err)
		}
		_ = p.Teardown()
	})
	must := mustFor(t)

	// Nothing can be set on a server that was never installed.
	if err := p.SetBoot(ctx, server, controller.BootOverride{Target: "Cd", Enabled: "Once"}); !errors.Is(err, controller.ErrNotInstalled) {
		t.Errorf("SetBoot before any installation: %v, want ErrNotInstalled", err)
	}
	installByHand(t, p, server, diskBase)

	// Refusals: PXE, a disk image, a host file outside the image directory.
	if err := p.SetBoot(ctx, server, controller.BootOverride{Target: "Pxe", Enabled: "Once"}); !errors.Is(err, controller.ErrUnsupported) {
		t.Errorf("Pxe: %v, want ErrUnsupported", err)
	}
	qcow2 := filepath.Join(images, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", qcow2, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	for url, cause := range map[string]error{
		"file://" + qcow2:    qemu.ErrUnsupportedMedia,
		"file:///etc/passwd": imagecache.ErrNotAllowed,
	} {
		var refused *simulator.MediaRefusedError
		if err := p.InsertMedia(ctx, server, url); !errors.As(err, &refused) || !errors.Is(err, cause) {
			t.Errorf("InsertMedia(%s) = %v, want a MediaRefusedError wrapping %v", url, err, cause)
		}
	}

	// Insert, override once, power on: the CD boots.
	url := "file://" + iso
	must(p.InsertMedia(ctx, server, url))
	must(p.SetBoot(ctx, server, controller.BootOverride{Target: "Cd", Enabled: "Once"}))
	info, err := p.Inspect(ctx, server)
	must(err)
	if !info.Media.Inserted || info.Media.Image != url || info.Boot != (controller.BootOverride{Target: "Cd", Enabled: "Once", Mode: "Legacy"}) {
		t.Errorf("before power-on: boot %+v, media %+v", info.Boot, info.Media)
	}
	console := filepath.Join(p.VMDir(server), filenames.ConsoleFile)
	start := time.Now()
	must(p.PowerOn(ctx, server))
	waitConsole(t, console, "STARGATE-ISO-BOOTED", "STARGATE-DISK-BOOTED", 90*time.Second)
	t.Logf("the ISO booted %s after PowerOn (TCG)", time.Since(start).Round(100*time.Millisecond))

	info, err = p.Inspect(ctx, server)
	must(err)
	if !info.Running || info.Boot.Enabled != controller.BootDisabled || info.Boot.Target != controller.BootTargetCd || !info.Media.Inserted {
		t.Errorf("after booting the CD: running %v, boot %+v (want Once used up), media %+v", info.Running, info.Boot, info.Media)
	}
	must(p.PowerOff(ctx, server))

	// The override is used up: with the CD still inserted, the disk boots first.
	start = time.Now()
	must(p.PowerOn(ctx, server))
	waitConsole(t, console, "STARGATE-DISK-BOOTED", "STARGATE-ISO-BOOTED", 90*time.Second)
	t.Logf("the disk booted %s after PowerOn (TCG)", time.Since(start).Round(100*time.Millisecond))
	must(p.PowerOff(ctx, server))

	must(p.EjectMedia(ctx, server))
	info, err = p.Inspect(ctx, server)
	must(err)
	if info.Media.Inserted || info.Running {
		t.Errorf("after eject and power-off: running %v, media %+v", info.Running, info.Media)
	}
	must(p.EjectMedia(ctx, server)) // an empty drive
}

// buildGrubImage writes, with grub-mkrescue, a BIOS-bootable hybrid ISO (bootable as a CD and as
// a disk) whose GRUB prints marker on the serial console and waits.
func buildGrubImage(t *testing.T, out, marker string) string {
	t.Helper()
	root := t.TempDir()
	must := mustFor(t)
	must(os.MkdirAll(filepath.Join(root, "boot", "grub"), 0o755))
	cfg := "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\necho " + marker + "\nsleep 600\n"
	must(os.WriteFile(filepath.Join(root, "boot", "grub", "grub.cfg"), []byte(cfg), 0o644))
	// BIOS only (no EFI image, so no mtools), no locales or themes: a small image, made in a second.
	cmd := exec.Command("grub-mkrescue", "-d", "/usr/lib/grub/i386-pc", "--locales=", "--themes=", "--fonts=", "-o", out, root)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("grub-mkrescue: %v\n%s", err, b)
	}
	return out
}

// installByHand makes the VM directory a repave would leave: instance-id, vm.json, a seed and an
// overlay disk on base.
func installByHand(t *testing.T, p *simulator.Provider, server types.NamespacedName, base string) {
	t.Helper()
	dir := p.VMDir(server)
	must := mustFor(t)
	must(os.MkdirAll(dir, 0o700))
	spec, err := json.Marshal(qemu.VMSpec{Name: server.Namespace + "." + server.Name, CPUs: 1, MemoryMiB: 256,
		MAC: hostnet.MACAddress(server.Namespace + "/" + server.Name)})
	must(err)
	must(os.WriteFile(filepath.Join(dir, filenames.VMSpecFile), spec, 0o600))
	must(os.WriteFile(filepath.Join(dir, filenames.SeedFile), make([]byte, 64<<10), 0o600))
	must(qemu.CreateOverlay(context.Background(), base, filepath.Join(dir, filenames.DiskFile), 0))
	must(os.WriteFile(filepath.Join(dir, filenames.InstanceIDFile), []byte("i-media-test\n"), 0o600))
}

// waitConsole waits until the console log shows want, failing when it shows never first.
func waitConsole(t *testing.T, console, want, never string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), never) {
			t.Fatalf("the console shows %s, want %s:\n%s", never, want, b)
		}
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s on the console within %s:\n%s", want, timeout, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
