package simulator

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/imagecache"
)

// A golden image's key changes with everything that changes what the bake makes, and with the
// namespace (no tenant boots another's bake); it never depends on how the parts split.
func TestGoldenKey(t *testing.T) {
	base := goldenKey("sha256:aa", "team-a", []byte("#cloud-config\npackages: [nginx]\n"))
	if len(base) != 64 || goldenKey("sha256:aa", "team-a", []byte("#cloud-config\npackages: [nginx]\n")) != base {
		t.Fatalf("key %q is not a stable sha256", base)
	}
	for name, other := range map[string]string{
		"another OS image":     goldenKey("sha256:bb", "team-a", []byte("#cloud-config\npackages: [nginx]\n")),
		"another namespace":    goldenKey("sha256:aa", "team-b", []byte("#cloud-config\npackages: [nginx]\n")),
		"another installation": goldenKey("sha256:aa", "team-a", []byte("#cloud-config\npackages: [curl]\n")),
		// Length prefixes: moving bytes from one part to the next is another key.
		"parts shifted": goldenKey("sha256:aat", "eam-a", []byte("#cloud-config\npackages: [nginx]\n")),
	} {
		if other == base {
			t.Errorf("%s: same key %s", name, base)
		}
	}
}

// refusingCapacity is a host with no capacity left.
type refusingCapacity struct{ asked int }

func (c *refusingCapacity) TryHold(string, int64) bool { c.asked++; return false }
func (c *refusingCapacity) Release(string)             {}

// A bake is queued once per key, whoever asks, and waits in the queue: for the repave that asked
// for it to start its guest, for the CPUs of the guests installing, for capacity; and it is not
// queued again soon after it failed. The
// repave is told which, and nothing starts while the host has no room.
func TestStartBakeWaitsForRoom(t *testing.T) {
	key := goldenKey("sha256:aa", "team-a", []byte("#cloud-config\n{}\n"))
	req := controller.RepaveRequest{Server: types.NamespacedName{Namespace: "team-a", Name: "s"}, MemoryMiB: 1024, CPUs: 1}
	full := &refusingCapacity{}
	p := &Provider{layout: Layout{WorkDir: t.TempDir()}, watch: newWatchers(time.Second), capacity: full, hostCPUs: 2,
		bakes: map[string]*bakeJob{}, bakeFailures: map[string]bakeFailure{}, queuedBakes: map[string]queuedBake{},
		guestCPUs: map[types.NamespacedName]int{}}
	if msg := p.startBake(key, req, imagecache.Image{}); !strings.Contains(msg, "will be baked in the background as soon as the host has room") {
		t.Errorf("queued: %q", msg)
	}
	// Another Server's repave of the same installation at once: the same bake, queued once.
	other := req
	other.Server.Name = "other"
	if p.startBake(key, other, imagecache.Image{}); len(p.queuedBakes) != 1 || p.queuedBakes[key].req.Server != req.Server {
		t.Errorf("two repaves of one installation: %d bakes queued, want the first one only", len(p.queuedBakes))
	}
	p.startQueuedBakes()
	if full.asked != 0 {
		t.Error("a bake was considered before its repave could start its own guest")
	}
	// Queued long enough; a 2-CPU guest installs on this 2-CPU host: no room for the bake's CPU.
	q := p.queuedBakes[key]
	q.since = time.Now().Add(-time.Minute)
	p.queuedBakes[key] = q
	installing := types.NamespacedName{Namespace: "team-a", Name: "installing"}
	p.watch.byServer[installing] = &consoleWatch{}
	p.guestCPUs[installing] = 2
	p.startQueuedBakes()
	if full.asked != 0 {
		t.Error("a bake was considered while the installing guests use the host's CPUs")
	}
	delete(p.watch.byServer, installing)
	p.startQueuedBakes()
	if full.asked != 1 || len(p.queuedBakes) != 1 {
		t.Errorf("no guest installing: capacity asked %d times, %d queued; want asked once, still queued (no capacity)", full.asked, len(p.queuedBakes))
	}
	delete(p.queuedBakes, key)
	p.bakeFailures[key] = bakeFailure{at: time.Now().Add(-time.Minute), err: errors.New("cloud-init finished with errors: runcmd")}
	if msg := p.startBake(key, req, imagecache.Image{}); !strings.Contains(msg, "failed 1m0s ago") || !strings.Contains(msg, "runcmd") || len(p.queuedBakes) != 0 {
		t.Errorf("after a failure: %q, %d queued", msg, len(p.queuedBakes))
	}
	if n := p.bakesStarted.Load(); n != 0 || len(p.bakes) != 0 {
		t.Errorf("%d bakes started", n)
	}
}

// ImageReady's last console line while baking comes from the console's end, read once.
func TestReadConsoleEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if tail := readConsoleEnd(path); tail != nil {
		t.Errorf("no console: %q", tail)
	}
	console := append(bytes.Repeat([]byte("boot\n"), consoleTailBytes/5), "cloud-init done\n"...)
	if err := os.WriteFile(path, console, 0o600); err != nil {
		t.Fatal(err)
	}
	if tail := readConsoleEnd(path); !bytes.Equal(tail, console[len(console)-consoleTailBytes:]) {
		t.Errorf("console of %d bytes: tail of %d bytes ending %q", len(console), len(tail), tail[max(0, len(tail)-20):])
	}
}
