package cloudinit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stargate.io/stargate/internal/testreq"
)

func TestParseGuestTimeline(t *testing.T) {
	console := []byte("boot...\r\n" + readyMarker + `{"instance_id":"i-1","errors":[],"timeline":{"btime":1764130000,` +
		`"init_start":2.37,"stages":[["init-local",1764130004.0,1764130005.5],["init",1764130006.0,1764130010.25],` +
		`["modules-config",1764130011.0,1764130012.0],["modules-final",1764130012.5,1764130040.0],["bogus",1,2]],` +
		`"user_commands":[1764130013.0,1764130039.0]}}` + "\r\n")
	r := ParseGuestResult(console, "i-1")
	want := []TimelineStep{{"kernel", 2370 * time.Millisecond}, {"cloud-init-local", 1500 * time.Millisecond},
		{"cloud-init-network", 4250 * time.Millisecond}, {"cloud-init-config", time.Second}, {"cloud-init-final", 27500 * time.Millisecond},
		{"user-commands", 26 * time.Second}}
	if !r.Done || len(r.Timeline) != len(want) {
		t.Fatalf("result %+v", r)
	}
	for i := range want {
		if r.Timeline[i] != want[i] {
			t.Errorf("step %d: %+v, want %+v", i, r.Timeline[i], want[i])
		}
	}
	if !r.KernelStart.Equal(time.Unix(1764130000, 0)) {
		t.Errorf("kernel start %v", r.KernelStart)
	}
	// An older guest (no timeline) still reports readiness; nothing is invented.
	old := ParseGuestResult([]byte(readyMarker+`{"instance_id":"i-1","errors":[]}`+"\n"), "i-1")
	if !old.Done || len(old.Timeline) != 0 || !old.KernelStart.IsZero() {
		t.Errorf("without a timeline: %+v", old)
	}
}

// The reporter is Python that runs in every guest: it must at least parse.
func TestReporterProgramCompiles(t *testing.T) {
	python := testreq.Command(t, "python3", "apt-get install -y python3")
	vd := ReadinessVendorData("stargate-test")
	start := bytes.Index(vd, []byte("<<'STARGATE_EOF'\n"))
	end := bytes.Index(vd, []byte("STARGATE_EOF\nif"))
	if start < 0 || end < 0 {
		t.Fatalf("vendor-data has no embedded program:\n%s", vd)
	}
	prog := filepath.Join(t.TempDir(), "report.py")
	if err := os.WriteFile(prog, vd[start+len("<<'STARGATE_EOF'\n"):end], 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(python, "-c", "import ast,sys; ast.parse(open(sys.argv[1]).read())", prog).CombinedOutput()
	if err != nil {
		t.Fatalf("the reporter does not parse: %v\n%s", err, out)
	}
	if !strings.Contains(string(vd), `"timeline": timeline`) {
		t.Error("the reporter does not report the timeline")
	}
}
