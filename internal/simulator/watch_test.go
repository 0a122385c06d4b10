package simulator

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func readyLine(instanceID string) string {
	return fmt.Sprintf("STARGATE-READY {\"instance_id\": %q, \"errors\": []}\n", instanceID)
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// waitChange returns the next notification, or fails after timeout.
func waitChange(t *testing.T, w *watchers, timeout time.Duration) types.NamespacedName {
	t.Helper()
	select {
	case s := <-w.changes:
		return s
	case <-time.After(timeout):
		t.Fatal("no notification")
		return types.NamespacedName{}
	}
}

func noChange(t *testing.T, w *watchers, d time.Duration) {
	t.Helper()
	select {
	case s := <-w.changes:
		t.Fatalf("unexpected notification for %s", s)
	case <-time.After(d):
	}
}

func TestWatcherNotifiesOnItsReadinessLineOnly(t *testing.T) {
	base := runtime.NumGoroutine()
	w := newWatchers(5 * time.Millisecond)
	console := filepath.Join(t.TempDir(), "console.log")
	server := types.NamespacedName{Namespace: "ns", Name: "s1"}
	w.start(server, "id-2", console, func() bool { return true }) // before QEMU made the file
	w.start(server, "id-2", console, func() bool { return true }) // idempotent
	appendTo(t, console, "booting\n"+readyLine("id-1"))           // a previous installation's line
	noChange(t, w, 100*time.Millisecond)
	line := readyLine("id-2")
	appendTo(t, console, "cloud-init done\n"+line[:20]) // the line arrives in two pieces
	noChange(t, w, 50*time.Millisecond)
	appendTo(t, console, line[20:])
	if got := waitChange(t, w, 5*time.Second); got != server {
		t.Errorf("notified %s, want %s", got, server)
	}
	w.stopAll()
	if n := len(w.byServer); n != 0 {
		t.Errorf("%d watchers left after the guest finished", n)
	}
	waitGoroutines(t, base)
}

func TestWatcherNotifiesWhenTheVMExits(t *testing.T) {
	w := newWatchers(5 * time.Millisecond)
	console := filepath.Join(t.TempDir(), "console.log")
	var exited atomic.Bool
	w.start(types.NamespacedName{Namespace: "ns", Name: "s1"}, "id-1", console, func() bool { return !exited.Load() })
	noChange(t, w, 50*time.Millisecond)
	exited.Store(true)
	waitChange(t, w, 5*time.Second)
	w.stopAll()
}

// A watcher ends, without a word, when its VM is stopped or released, when another installation
// replaces it, and when the provider stops; none is left behind.
func TestWatchersStopAndNeverLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	w := newWatchers(5 * time.Millisecond)
	dir := t.TempDir()
	alive := func() bool { return true }
	s1, s2 := types.NamespacedName{Namespace: "ns", Name: "s1"}, types.NamespacedName{Namespace: "ns", Name: "s2"}
	w.start(s1, "id-1", filepath.Join(dir, "s1.log"), alive)
	first := w.byServer[s1]
	w.stop(s1) // returns once the watcher ended
	select {
	case <-first.done:
	default:
		t.Error("stop returned before the watcher ended")
	}
	w.stop(s1) // nothing to stop: fine

	w.start(s1, "id-1", filepath.Join(dir, "s1.log"), alive)
	replaced := w.byServer[s1]
	w.start(s1, "id-2", filepath.Join(dir, "s1.log"), alive)
	select {
	case <-replaced.done:
	case <-time.After(5 * time.Second):
		t.Error("the replaced watcher still runs")
	}
	w.start(s2, "id-3", filepath.Join(dir, "s2.log"), alive)
	if n := len(w.byServer); n != 2 {
		t.Errorf("%d watchers, want 2", n)
	}
	w.stopAll()
	w.start(s2, "id-4", filepath.Join(dir, "s2.log"), alive) // after the provider stopped: nothing starts
	noChange(t, w, 20*time.Millisecond)
	waitGoroutines(t, base)
}

// waitGoroutines waits until no more goroutines run than base (the runtime ends them lazily).
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > base; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before: a watcher leaked", runtime.NumGoroutine(), base)
		}
	}
}
