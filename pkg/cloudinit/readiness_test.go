package cloudinit

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// Both vendor-data scripts are shell that every guest runs: they must parse, and only the bake's
// cleans the instance and powers off.
func TestVendorDataScriptsParse(t *testing.T) {
	sh := testreq.Command(t, "sh", "apt-get install -y dash")
	for name, vd := range map[string][]byte{"readiness": ReadinessVendorData("i-1"), "bake": BakeVendorData("bake-1")} {
		script := filepath.Join(t.TempDir(), name+".sh")
		if err := os.WriteFile(script, vd, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(sh, "-n", script).CombinedOutput(); err != nil {
			t.Errorf("%s vendor-data does not parse: %v\n%s", name, err, out)
		}
		bakes := bytes.Contains(vd, []byte("cloud-init clean --logs")) && bytes.Contains(vd, []byte("systemctl poweroff"))
		if bakes != (name == "bake") {
			t.Errorf("%s vendor-data: cleans and powers off = %v", name, bakes)
		}
		if !bytes.Contains(vd, []byte(`"`+map[string]string{"readiness": "i-1", "bake": "bake-1"}[name]+`"`)) {
			t.Errorf("%s vendor-data does not report its instance-id", name)
		}
	}
	// The finish script is written by a quoted here-document and run after the report.
	if !bytes.Contains(BakeVendorData("b"), []byte("python3 /run/stargate-report.py; exec sh /run/stargate-finish.sh")) {
		t.Error("the bake does not finish after the report")
	}
}

// The lines a console cap must keep are exactly those the host waits for.
func TestIsMarkerLine(t *testing.T) {
	for line, want := range map[string]bool{
		"\x1b[0mSTARGATE-READY {\"instance_id\":\"i-1\",\"errors\":[]}\r": true,
		BakedMarker("stargate-bake-0123456789abcdef") + "\r":              true,
		"STARGATE-READY (no JSON)":                                        false,
		"[   12.3] cloud-init[601]: Cloud-init v. 22.4.2 finished":        false,
		"": false,
	} {
		if got := IsMarkerLine([]byte(line)); got != want {
			t.Errorf("IsMarkerLine(%q) = %v, want %v", line, got, want)
		}
	}
	// What the reporter prints is a marker line.
	line := "STARGATE-READY " + `{"instance_id": "i-1", "errors": [], "timeline": {}}`
	if !IsMarkerLine([]byte(line)) || !ParseGuestResult([]byte(line+"\n"), "i-1").Done {
		t.Errorf("the reporter's line %q is not a marker", line)
	}
}

// The callback reporter runs for real against a test server standing in for the controller: it
// waits for cloud-init's result, then POSTs the readiness line with the token.
func TestCallbackVendorDataPostsTheResult(t *testing.T) {
	python := testreq.Command(t, "python3", "apt-get install -y python3")
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- r.Method + " " + r.URL.Path + " " + r.Header.Get("Authorization") + "\n" + string(body)
	}))
	defer srv.Close()
	vd := CallbackVendorData("i-7", srv.URL+"/i/abc/ready", "tok-"+strings.Repeat("x", 40))
	if !bytes.Contains(vd, []byte("umask 077")) {
		t.Error("the script that writes the token does not keep it from other users")
	}
	start := bytes.Index(vd, []byte("<<'STARGATE_EOF'\n"))
	end := bytes.Index(vd, []byte("STARGATE_EOF\nif"))
	if start < 0 || end < 0 {
		t.Fatalf("vendor-data has no embedded program:\n%s", vd)
	}
	dir := t.TempDir()
	result := filepath.Join(dir, "result.json")
	if err := os.WriteFile(result, []byte(`{"v1": {"errors": []}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// The guest's paths, moved into the test's directory.
	prog := strings.NewReplacer("/run/cloud-init/result.json", result, `"/dev/ttyS0", "/dev/console"`, `"`+filepath.Join(dir, "console")+`",`).
		Replace(string(vd[start+len("<<'STARGATE_EOF'\n") : end]))
	if out, err := exec.Command(python, "-c", prog).CombinedOutput(); err != nil {
		t.Fatalf("the reporter failed: %v\n%s", err, out)
	}
	req := <-got
	head, body, _ := strings.Cut(req, "\n")
	if head != "POST /i/abc/ready Bearer tok-"+strings.Repeat("x", 40) {
		t.Errorf("request %q", head)
	}
	if r := ParseGuestResult([]byte(body), "i-7"); !r.Done || len(r.Errors) != 0 {
		t.Errorf("the body %q does not parse as a successful result: %+v", body, r)
	}
}

// The lines of a guest whose disk broke beneath it (seen with a DiskWriteError fault) are found
// among ordinary ones, newest last, at most the number asked for.
func TestGuestErrors(t *testing.T) {
	console := []byte("[    1.2] Linux version 6.1\r\n" +
		"[    3.1] I/O error, dev vda, sector 2048 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2\r\n" +
		"[    3.2] Buffer I/O error on dev vda1, logical block 0, lost sync page write\r\n" +
		"\x1b[0;1;31m[    3.3] EXT4-fs (vda1): I/O error while writing superblock\x1b[0m\r\n" +
		"[   40.0] cloud-init[312]: OSError: [Errno 30] Read-only file system: '/var/lib/cloud'\r\n" +
		"[  118.7] clocksource: Switched to clocksource hpet\r\n")
	got := GuestErrors(console, 3)
	want := []string{"[    3.2] Buffer I/O error on dev vda1, logical block 0, lost sync page write",
		"[    3.3] EXT4-fs (vda1): I/O error while writing superblock",
		"[   40.0] cloud-init[312]: OSError: [Errno 30] Read-only file system: '/var/lib/cloud'"}
	if !slices.Equal(got, want) {
		t.Errorf("GuestErrors:\n%q\nwant\n%q", got, want)
	}
	if got := GuestErrors([]byte("[ 1.0] all is well\n[ 2.0] cloud-init finished\n"), 3); len(got) != 0 {
		t.Errorf("a healthy console: %q", got)
	}
}
