package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var updateGolden = flag.Bool("update", false, "rewrite golden files")

func TestCmdlineGolden(t *testing.T) {
	base := VMSpec{
		Name: "dc-simulator.worker-1", Dir: "/var/lib/stargate/vms/dc-simulator/worker-1",
		QMPSocket: "/var/lib/stargate/run/0123456789abcdef.qmp", CPUs: 2, MemoryMiB: 4096,
		MAC: "52:54:00:12:34:56", Tap: "sg-0123456789ab",
	}
	const iso = "/var/lib/stargate/media/0123456789abcdef/image"
	for _, tc := range []struct {
		golden   string
		accel    Accel
		cd       string
		bootCD   bool
		noReboot bool
		noSeed   bool
		firmware bool
		faults   bool
	}{
		// Without a CD the command line is the one VMs had before virtual media.
		{golden: "tcg", accel: AccelTCG},
		{golden: "kvm", accel: AccelKVM},
		// A CD in the drive, the disk booting first; and a CD booted by an override.
		{golden: "cd-tcg", accel: AccelTCG, cd: iso},
		{golden: "cdboot-tcg", accel: AccelTCG, cd: iso, bootCD: true},
		// A golden image bake VM: a reboot ends it.
		{golden: "noreboot-tcg", accel: AccelTCG, noReboot: true},
		// A blank machine (never installed): no seed, the firmware on the console; its CD booted
		// by an override, or none.
		{golden: "blank-tcg", accel: AccelTCG, noSeed: true, firmware: true},
		{golden: "blank-cdboot-tcg", accel: AccelTCG, cd: iso, bootCD: true, noSeed: true, firmware: true},
		// Injected faults: the disk under blkdebug and throttled, the clock 90 minutes ahead.
		{golden: "faults-tcg", accel: AccelTCG, faults: true},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			spec := base
			spec.Accel, spec.CD, spec.BootCD, spec.NoReboot = tc.accel, tc.cd, tc.bootCD, tc.noReboot
			spec.NoSeed, spec.FirmwareConsole = tc.noSeed, tc.firmware
			if tc.faults {
				spec.Blkdebug, spec.DiskBytesPerSecond, spec.ClockSkew = true, 1048576, 90*time.Minute
				spec.StartedAt = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
			}
			got := strings.Join(Cmdline(spec), "\n") + "\n"
			golden := filepath.Join("testdata", "cmdline-"+tc.golden+".golden")
			if *updateGolden {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./pkg/qemu -run Golden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("command line differs from %s:\n got:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

// A comma in the CD's path would end QEMU's file= value and start an option of the path's
// choosing: it is doubled.
func TestCmdlineCDPathCommaEscaped(t *testing.T) {
	args := Cmdline(VMSpec{Dir: "/vm", CD: "/work,dir/media/x/image,format=qcow2", Accel: AccelTCG})
	want := "if=none,id=cd0,file=/work,,dir/media/x/image,,format=qcow2,format=raw,readonly=on,media=cdrom"
	if !slices.Contains(args, want) {
		t.Errorf("no %q in %q", want, args)
	}
}

func TestQMPSocketPathIsShort(t *testing.T) {
	dir := "/var/lib/stargate/vms/" + strings.Repeat("n", 63) + "/" + strings.Repeat("s", 63)
	p, err := QMPSocketPath("/var/lib/stargate/run", dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) > unixPathMax {
		t.Errorf("socket path %d bytes", len(p))
	}
	if _, err := QMPSocketPath("/"+strings.Repeat("x", 120), dir); err == nil {
		t.Error("an over-long socket path was accepted")
	}
}

func TestResolveAccel(t *testing.T) {
	if a, _, err := ResolveAccel(AccelTCG); err != nil || a != AccelTCG {
		t.Errorf("tcg: %s %v", a, err)
	}
	a, warning, err := ResolveAccel(AccelAuto)
	if err != nil || (a != AccelTCG && a != AccelKVM) {
		t.Errorf("auto: %s %v", a, err)
	}
	if a == AccelTCG && warning == "" {
		t.Error("falling back to TCG without a warning")
	}
	if _, _, err := ResolveAccel("hvf"); err == nil {
		t.Error("unknown accelerator accepted")
	}
}
