package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite golden files")

func TestCmdlineGolden(t *testing.T) {
	for _, accel := range []Accel{AccelTCG, AccelKVM} {
		t.Run(string(accel), func(t *testing.T) {
			got := strings.Join(Cmdline(VMSpec{
				Name: "dc-simulator.worker-1", Dir: "/var/lib/stargate/vms/dc-simulator/worker-1",
				QMPSocket: "/var/lib/stargate/run/0123456789abcdef.qmp", CPUs: 2, MemoryMiB: 4096,
				MAC: "52:54:00:12:34:56", Tap: "sg-0123456789ab", Accel: accel,
			}), "\n") + "\n"
			golden := filepath.Join("testdata", "cmdline-"+string(accel)+".golden")
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
