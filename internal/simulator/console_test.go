package simulator

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/consolelog"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/qemu"
)

const testConsoleSize = consolelog.MinSize

// consoleProvider is a Provider with only what the console code uses: no network, no QEMU.
func consoleProvider(t *testing.T) *Provider {
	t.Helper()
	return &Provider{cfg: Config{ConsoleSize: testConsoleSize, Accel: qemu.AccelTCG, BootTimeout: time.Hour, Log: logr.Discard()},
		layout: Layout{WorkDir: t.TempDir()}, locks: map[types.NamespacedName]*sync.Mutex{}, watch: newWatchers(5 * time.Millisecond)}
}

// flood appends about n bytes of numbered lines, as a guest printing in a loop does.
func flood(t *testing.T, path string, n int) {
	t.Helper()
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "flood %d %s\n", i, strings.Repeat("f", 100))
	}
	appendTo(t, path, b.String())
}

// vmWithConsole makes the VM directory of server with an instance-id and a console.
func vmWithConsole(t *testing.T, p *Provider, server types.NamespacedName, console string) string {
	t.Helper()
	dir := p.VMDir(server)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filenames.InstanceIDFile), []byte("i-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	appendTo(t, filepath.Join(dir, filenames.ConsoleFile), console)
	return dir
}

// capAll runs the enforcer's passes until console is within its size.
func capAll(p *Provider, console string) {
	for consolelog.DiskUsage(console) > testConsoleSize {
		p.capVMConsoles()
	}
}

// The enforcer caps the console of every VM directory it finds — VMs started before this
// process (a restart) included — and leaves a Server whose lock is taken for the next pass.
func TestEnforcerCapsEveryVMConsole(t *testing.T) {
	p := consoleProvider(t)
	a, b := types.NamespacedName{Namespace: "ns", Name: "a"}, types.NamespacedName{Namespace: "ns", Name: "b"}
	for _, s := range []types.NamespacedName{a, b} {
		flood(t, filepath.Join(vmWithConsole(t, p, s, "boot\n"), filenames.ConsoleFile), 5*testConsoleSize)
	}
	unlock := p.lock(b) // a repave of b in progress
	p.capVMConsoles()
	usage := func(s types.NamespacedName) int64 {
		return consolelog.DiskUsage(filepath.Join(p.VMDir(s), filenames.ConsoleFile))
	}
	if usage(a) > testConsoleSize || usage(b) < 5*testConsoleSize {
		t.Errorf("after a pass with b busy: a takes %d, b %d bytes (size %d)", usage(a), usage(b), testConsoleSize)
	}
	unlock()

	// The running enforcer (Provider.Start) catches up with b, and with a guest that keeps printing.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Start(ctx) }()
	defer func() { cancel(); <-done }()
	flood(t, filepath.Join(p.VMDir(a), filenames.ConsoleFile), 3*testConsoleSize)
	for deadline := time.Now().Add(10 * time.Second); usage(a) > testConsoleSize || usage(b) > testConsoleSize; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not capped within 10s: a takes %d, b %d bytes (size %d)", usage(a), usage(b), testConsoleSize)
		}
	}
}

// Whatever the guest printed after its readiness line, and however much, the repave sees the
// line (with the guest's timeline) once the enforcer dropped it from the console; and a failure
// still shows the newest console lines.
func TestObserveGuestThroughAFloodedConsole(t *testing.T) {
	const timeline = `"timeline": {"btime": 1700000000, "init_start": 3.5, "stages": [["init-local", 1700000010, 1700000012]]}`
	for _, tc := range []struct {
		name, ready, wantReason string
		done                    bool
	}{
		{"succeeded", `STARGATE-READY {"instance_id": "i-1", "errors": [], ` + timeline + "}\n", "", true},
		{"cloud-init failed", `STARGATE-READY {"instance_id": "i-1", "errors": ["runcmd failed"]}` + "\n", "CloudInitFailed", false},
		{"no readiness line", "", "VMExited", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := consoleProvider(t)
			server := types.NamespacedName{Namespace: "ns", Name: "s"}
			dir := vmWithConsole(t, p, server, "SeaBIOS\nLinux version 6.1\ncloud-init[1]: running 'init-local'\n")
			console := filepath.Join(dir, filenames.ConsoleFile)
			flood(t, console, 2*testConsoleSize) // past the head, which is never dropped
			appendTo(t, console, tc.ready)
			flood(t, console, 6*testConsoleSize)
			appendTo(t, console, "the newest line\n")
			capAll(p, console)
			if raw, _ := os.ReadFile(console); tc.ready != "" && bytes.Contains(raw, []byte("STARGATE-READY")) {
				t.Fatal("test setup: the readiness line is still in the console")
			}
			st := p.observeGuest(newStatus(), controller.RepaveRequest{Server: server, InstanceID: "i-1"}, dir)
			if st.Done != tc.done || st.Reason != tc.wantReason {
				t.Fatalf("done %v, reason %q (want %v, %q): %s", st.Done, st.Reason, tc.done, tc.wantReason, st.Message)
			}
			if tc.done {
				steps := map[string]bool{}
				for _, s := range st.Timeline {
					steps[s.Name] = true
				}
				if !steps["kernel"] || !steps["cloud-init-local"] {
					t.Errorf("timeline %v, want the guest's kernel and cloud-init-local", st.Timeline)
				}
				return
			}
			if !strings.HasSuffix(st.Message, "the newest line") || !strings.Contains(st.Message, console) {
				t.Errorf("the failure does not end with the newest console line and name the console:\n%s", st.Message)
			}
		})
	}
}

// A watcher that reads a console only after the readiness line went into a dropped part (the
// simulator was down while the guest flooded it) still reports the guest ready.
func TestWatcherFindsADroppedReadinessLine(t *testing.T) {
	p := consoleProvider(t)
	server := types.NamespacedName{Namespace: "ns", Name: "s"}
	dir := vmWithConsole(t, p, server, "boot\n")
	console := filepath.Join(dir, filenames.ConsoleFile)
	flood(t, console, 2*testConsoleSize)
	appendTo(t, console, readyLine("i-1"))
	flood(t, console, 10*testConsoleSize)
	p.watch.consoleSize = testConsoleSize
	p.watch.start(server, "i-1", console, func() bool { return true })
	defer p.watch.stopAll()
	noChange(t, p.watch, 100*time.Millisecond) // skipped, not yet dropped
	capAll(p, console)
	if got := waitChange(t, p.watch, 5*time.Second); got != server {
		t.Errorf("notified %s, want %s", got, server)
	}
}
