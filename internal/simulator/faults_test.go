package simulator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/qemu"
)

func TestSupportsFault(t *testing.T) {
	p := &Provider{nft: true}
	for _, typ := range []stargatev1.FaultType{stargatev1.FaultDiskReadError, stargatev1.FaultDiskWriteError, stargatev1.FaultDiskSlow,
		stargatev1.FaultClockSkew, stargatev1.FaultPowerLoss, stargatev1.FaultHang, stargatev1.FaultNetworkLatency,
		stargatev1.FaultNetworkLoss, stargatev1.FaultNetworkPartition, stargatev1.FaultNoDNS, stargatev1.FaultNoRouteToAPIServer} {
		for _, at := range stargatev1.RepaveSteps {
			want := at == stargatev1.ConditionVMRunning || at == stargatev1.ConditionGuestReady // a VM runs
			if got := p.SupportsFault(typ, at); got != want {
				t.Errorf("SupportsFault(%s, %s) = %v, want %v", typ, at, got, want)
			}
		}
		if p.SupportsFault(typ, stargatev1.FaultAtRunning) {
			t.Errorf("%s at Running: supported, want not", typ)
		}
	}
	for _, typ := range []stargatev1.FaultType{stargatev1.FaultImageSlow, stargatev1.FaultKernelCrash, stargatev1.FaultBMCUnavailable} {
		if p.SupportsFault(typ, stargatev1.ConditionVMRunning) {
			t.Errorf("%s: supported, want not", typ)
		}
	}
}

func fault(name string, typ stargatev1.FaultType, set func(*stargatev1.Fault)) stargatev1.Fault {
	f := stargatev1.Fault{Name: name, Type: typ, At: stargatev1.ConditionVMRunning, FirstN: ptr.To[int32](1)}
	if set != nil {
		set(&f)
	}
	return f
}

// Several faults of one kind: the smallest count and rate win, skews add up; values out of bounds
// (tenant input) and counts beyond what blkdebug counts are left out, the latter said so.
func TestMachineFaultsOf(t *testing.T) {
	after := func(n int64) func(*stargatev1.Fault) { return func(f *stargatev1.Fault) { f.AfterOperations = &n } }
	bps := func(n int64) func(*stargatev1.Fault) { return func(f *stargatev1.Fault) { f.BytesPerSecond = &n } }
	skew := func(d time.Duration) func(*stargatev1.Fault) {
		return func(f *stargatev1.Fault) { f.Duration = &metav1.Duration{Duration: d} }
	}
	m := machineFaultsOf([]stargatev1.Fault{
		fault("w1", stargatev1.FaultDiskWriteError, after(500)),
		fault("w2", stargatev1.FaultDiskWriteError, after(40)),
		fault("r-huge", stargatev1.FaultDiskReadError, after(qemu.MaxCountedOperations+1)),
		fault("s1", stargatev1.FaultDiskSlow, bps(1<<20)),
		fault("s-tiny", stargatev1.FaultDiskSlow, bps(10)),
		fault("c1", stargatev1.FaultClockSkew, skew(time.Hour)),
		fault("c2", stargatev1.FaultClockSkew, skew(30*time.Minute)),
		fault("c-bad", stargatev1.FaultClockSkew, skew(2*time.Hour)),
		fault("hang", stargatev1.FaultHang, skew(time.Minute)),
		fault("early", stargatev1.FaultDiskWriteError, func(f *stargatev1.Fault) { f.AfterOperations = ptr.To[int64](0); f.At = stargatev1.ConditionImageReady }),
	})
	if m.disk != (qemu.DiskErrors{ReadAfter: -1, WriteAfter: 40}) || m.bps != 1<<20 || m.skew != 90*time.Minute {
		t.Errorf("got disk %+v, bps %d, skew %s", m.disk, m.bps, m.skew)
	}
	notes := strings.Join(m.notes, "\n")
	for _, want := range []string{"w2: disk writes fail with EIO after 40 operations", "r-huge (DiskReadError after 50001 operations) not injected",
		"s1: disk throttled to 1048576 bytes/s", "c2: clock 30m0s ahead"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "s-tiny") || strings.Contains(notes, "c-bad") || strings.Contains(notes, "early") {
		t.Errorf("notes name a fault that was not made:\n%s", notes)
	}
}

// The blkdebug rules are written with the VM's spec, and removed when a new installation has none.
func TestMachineFaultsApply(t *testing.T) {
	dir := t.TempDir()
	spec := qemu.VMSpec{Dir: dir}
	m := machineFaultsOf([]stargatev1.Fault{fault("w", stargatev1.FaultDiskWriteError, func(f *stargatev1.Fault) { f.AfterOperations = ptr.To[int64](3) })})
	if err := m.apply(&spec); err != nil {
		t.Fatal(err)
	}
	if !spec.Blkdebug {
		t.Error("spec without blkdebug")
	}
	if _, err := os.Stat(filepath.Join(dir, filenames.BlkdebugFile)); err != nil {
		t.Error(err)
	}
	spec = qemu.VMSpec{Dir: dir}
	if err := machineFaultsOf(nil).apply(&spec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, filenames.BlkdebugFile)); !os.IsNotExist(err) || spec.Blkdebug || spec.DiskBytesPerSecond != 0 || spec.ClockSkew != 0 {
		t.Errorf("a clean installation kept faults: %v, %+v", err, spec)
	}
}

// A hang whose end has passed is over: its record goes, also when its VM is gone (a simulator
// killed mid-hang comes back to it); one still running is said in GuestReady's message.
func TestHangLevelTriggered(t *testing.T) {
	p := &Provider{}
	dir := t.TempDir()
	hangFile := filepath.Join(dir, filenames.HangFile)
	if err := os.WriteFile(hangFile, []byte(time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.resumeHang(dir, "/nonexistent.qmp"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(hangFile); err != nil {
		t.Fatal("a hang still on was ended")
	}
	st := controller.RepaveStatus{Steps: []controller.Step{{Type: stargatev1.ConditionGuestReady, State: controller.StepInProgress, Message: "Waiting"}}}
	if msg := withFaultNotes(st, nil, dir).Steps[0].Message; !strings.HasPrefix(msg, "the VM is stopped by an injected Hang (QMP stop) until ") {
		t.Errorf("GuestReady message %q", msg)
	}
	if err := os.WriteFile(hangFile, []byte(time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.resumeHang(dir, "/nonexistent.qmp"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(hangFile); !os.IsNotExist(err) {
		t.Errorf("an ended hang is still recorded: %v", err)
	}
}

// Without nft the tap's faults cannot be made: they are reported unsupported, not left to fail a
// repave; the delay (in QEMU) still is.
func TestNetworkFaultsNeedNFT(t *testing.T) {
	p := &Provider{}
	if p.SupportsFault(stargatev1.FaultNetworkPartition, stargatev1.ConditionVMRunning) || p.SupportsFault(stargatev1.FaultNoDNS, stargatev1.ConditionVMRunning) {
		t.Error("a host without nft claims the faults made with it")
	}
	if !p.SupportsFault(stargatev1.FaultNetworkLatency, stargatev1.ConditionVMRunning) {
		t.Error("NetworkLatency needs QEMU only")
	}
}
