package simulator

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/testreq"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/qemu"
)

// These tests drive prune with real files: images fetched into a real image cache from file://
// URLs, golden images and VM and bake disks made by qemu-img. No VM, no root.

// pruneEnv is a Provider with what prune needs, and the log it wrote.
type pruneEnv struct {
	t      *testing.T
	p      *Provider
	src    string // where file:// images come from
	old    time.Time
	mu     sync.Mutex
	logged []string
}

func newPruneEnv(t *testing.T, limit int64) *pruneEnv {
	t.Helper()
	testreq.Command(t, "qemu-img", "apt-get install -y qemu-utils")
	work := t.TempDir()
	layout := Layout{WorkDir: work}
	for _, d := range []string{layout.ImagesDir(), layout.GoldenDir(), layout.VMsDir(), layout.BakesDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	e := &pruneEnv{t: t, src: t.TempDir(), old: time.Now().Add(-24 * time.Hour).Truncate(time.Second)}
	pol := ImagePolicy{FileDirs: []string{e.src}}
	log := funcr.New(func(prefix, args string) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.logged = append(e.logged, prefix+" "+args)
	}, funcr.Options{})
	e.p = &Provider{cfg: Config{WorkDir: work, ImageCacheSize: limit, Images: pol, Log: log},
		images: newImageCache(layout.ImagesDir(), pol, netip.Prefix{}), layout: layout, fetches: map[string]*imageFetch{}}
	return e
}

// age is the i-th point in time of a test, oldest first.
func (e *pruneEnv) age(i int) time.Time { return e.old.Add(time.Duration(i) * time.Minute) }

// cached puts a raw disk of size bytes in the image cache, last used at lastUse, and returns
// its path.
func (e *pruneEnv) cached(name string, size int, lastUse time.Time) string {
	e.t.Helper()
	src := filepath.Join(e.src, name)
	if err := os.WriteFile(src, imgTestMBR(size), 0o600); err != nil {
		e.t.Fatal(err)
	}
	img, err := e.p.images.Fetch(e.t.Context(), "file://"+src, "", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.setUse(filepath.Dir(img.Path), lastUse)
	return img.Path
}

// golden writes a golden image, last used at lastUse.
func (e *pruneEnv) golden(key string, lastUse time.Time) string {
	e.t.Helper()
	path := filepath.Join(e.p.layout.GoldenDir(), key+".qcow2")
	e.qemuImg("create", "-q", "-f", "qcow2", path, "1M")
	e.setUse(path, lastUse)
	return path
}

// vmDisk makes the disk of a VM (ns/name) an overlay of base, as a repave does.
func (e *pruneEnv) vmDisk(ns, name, base string) string {
	e.t.Helper()
	return e.overlay(e.p.layout.VMDir(types.NamespacedName{Namespace: ns, Name: name}), base)
}

// bakeDisk makes the disk of a bake an overlay of base.
func (e *pruneEnv) bakeDisk(key, base string) string {
	e.t.Helper()
	return e.overlay(filepath.Join(e.p.layout.BakesDir(), key), base)
}

func (e *pruneEnv) overlay(dir, base string) string {
	e.t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	disk := filepath.Join(dir, filenames.DiskFile)
	if err := qemu.CreateOverlay(e.t.Context(), base, disk, 1<<20); err != nil {
		e.t.Fatal(err)
	}
	return disk
}

func (e *pruneEnv) qemuImg(args ...string) {
	e.t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		e.t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (e *pruneEnv) setUse(path string, at time.Time) {
	e.t.Helper()
	if err := os.Chtimes(path, at, at); err != nil {
		e.t.Fatal(err)
	}
}

// size is what prune counts for an image.
func (e *pruneEnv) size(path string) int64 {
	e.t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		e.t.Fatal(err)
	}
	return allocated(fi)
}

// expect checks which paths exist.
func (e *pruneEnv) expect(kept, removed []string) {
	e.t.Helper()
	for _, path := range kept {
		if _, err := os.Lstat(path); err != nil {
			e.t.Errorf("%s: %v, want it kept", path, err)
		}
	}
	for _, path := range removed {
		if _, err := os.Lstat(path); err == nil {
			e.t.Errorf("%s kept, want it removed", path)
		}
	}
}

// logs returns the log lines containing s, and forgets every line logged so far.
func (e *pruneEnv) logs(s string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var lines []string
	for _, l := range e.logged {
		if strings.Contains(l, s) {
			lines = append(lines, l)
		}
	}
	e.logged = nil
	return lines
}

// TestPruneRemovesLeastRecentlyUsed: cached and golden images count together; the least
// recently used go first, only until the rest fits.
func TestPruneRemovesLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 0)
	a := e.cached("a.raw", 64<<10, e.age(0))
	g := e.golden("g", e.age(1))
	b := e.cached("b.raw", 128<<10, e.age(2))
	c := e.cached("c.raw", 64<<10, e.age(3))

	e.p.cfg.ImageCacheSize = e.size(g) + e.size(b) + e.size(c)
	e.p.prune()
	e.expect([]string{g, b, c}, []string{a})
	if got := e.logs("removed the least recently used image"); len(got) != 1 || !strings.Contains(got[0], a) {
		t.Errorf("logged %q, want one removal, of %s", got, a)
	}

	e.p.cfg.ImageCacheSize = e.size(b) + e.size(c)
	e.p.prune()
	e.expect([]string{b, c}, []string{g})
	e.p.cfg.ImageCacheSize = e.size(c) + 1 // b is in the way, c alone fits
	e.p.prune()
	e.expect([]string{c}, []string{b})
	if got := e.logs("removed the least recently used image"); len(got) != 2 || !strings.Contains(got[0], g) ||
		!strings.Contains(got[0], `"lastUse"`) || !strings.Contains(got[0], `"size"`) {
		t.Errorf("logged %q, want the removals of %s then %s with size and last use", got, g, b)
	}
	if got := e.logs("over limit"); len(got) != 0 {
		t.Errorf("logged %q, want nothing over the limit", got)
	}
}

// TestPruneKeepsImagesInUse: an image a VM disk or a bake disk overlays, or a pinned one, is
// never removed, however old; what is in use over the limit is said once per prune.
func TestPruneKeepsImagesInUse(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 1)
	vmBase := e.cached("vm.raw", 64<<10, e.age(0))
	bakeBase := e.cached("bake.raw", 64<<10, e.age(1))
	pinned := e.cached("pinned.raw", 64<<10, e.age(2))
	vmGolden := e.golden("vm", e.age(3))
	unusedGolden := e.golden("unused", e.age(4))
	unused := e.cached("unused.raw", 64<<10, e.age(5))
	vmDir := filepath.Dir(e.vmDisk("team-a", "web", vmBase))
	e.vmDisk("team-b", "db", vmGolden)
	bakeDisk := e.bakeDisk("k8s-worker", bakeBase)
	unpin := e.p.pinImage(pinned)
	unpinAgain := e.p.pinImage(pinned) // pins add up

	e.p.prune()
	e.expect([]string{vmBase, bakeBase, pinned, vmGolden}, []string{unusedGolden, unused})
	inUse := e.size(vmBase) + e.size(bakeBase) + e.size(pinned) + e.size(vmGolden) + e.size(bakeDisk) // a bake's disk counts too
	if got := e.logs(fmt.Sprintf("image cache over limit, %d bytes in use", inUse)); len(got) != 1 {
		t.Errorf("logged %d lines saying %d bytes are in use over the limit, want 1", len(got), inUse)
	}

	unpin()
	unpin() // idempotent: the other pin still holds
	e.p.prune()
	e.expect([]string{pinned}, nil)
	unpinAgain()
	e.p.prune()
	e.expect([]string{vmBase, bakeBase, vmGolden}, []string{pinned})

	if err := os.RemoveAll(vmDir); err != nil { // the Server was released
		t.Fatal(err)
	}
	e.p.prune()
	e.expect([]string{bakeBase, vmGolden}, []string{vmBase})
}

// TestPruneWithinLimit: no limit (0) or a cache within it removes nothing, however old.
func TestPruneWithinLimit(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 0)
	images := []string{e.cached("a.raw", 64<<10, e.age(0)), e.golden("g", e.age(1)), e.cached("b.raw", 64<<10, e.age(2))}
	e.p.prune()
	var total int64
	for _, path := range images {
		total += e.size(path)
	}
	e.p.cfg.ImageCacheSize = total
	e.p.prune()
	e.expect(images, nil)
	if got := e.logs(""); len(got) != 0 {
		t.Errorf("logged %q, want nothing", got)
	}
}

// TestPruneNamespaceGoldenImages: over --golden-images-per-namespace, a namespace's least recently
// used golden images go first, but never one a VM disk overlays or one pinned; other namespaces'
// images, and images of the older layout (no namespace in the name), are not counted.
func TestPruneNamespaceGoldenImages(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 0)
	e.p.cfg.GoldenImagesPerNamespace = 2
	key := func(i int) string { return fmt.Sprintf("%064d", i) }
	oldest := e.golden("team-a."+key(1), e.age(1))
	overlaid := e.golden("team-a."+key(2), e.age(2))
	pinned := e.golden("team-a."+key(3), e.age(3))
	older := e.golden("team-a."+key(4), e.age(4))
	newest := e.golden("team-a."+key(5), e.age(5))
	other := e.golden("team-b."+key(6), e.age(0))
	legacy := e.golden(key(7), e.age(0))
	e.vmDisk("team-a", "s1", overlaid)
	defer e.p.pinImage(pinned)()
	e.p.pruneNamespace("team-a")
	// Five over a limit of two: the oldest unused go first until two are left; the overlaid and
	// the pinned one are in use, so they are the two.
	e.expect([]string{overlaid, pinned, other, legacy}, []string{oldest, older, newest})
	if lines := e.logs("over the namespace's limit"); len(lines) != 0 {
		t.Errorf("the namespace is within its limit, but the log says %v", lines)
	}
	// Three in use over a limit of two: nothing else to remove, and the log says so.
	third := e.golden("team-a."+key(8), e.age(6))
	e.vmDisk("team-a", "s2", third)
	e.p.pruneNamespace("team-a")
	e.expect([]string{overlaid, pinned, third}, nil)
	if lines := e.logs("over the namespace's limit: 3 in use"); len(lines) != 1 {
		t.Errorf("want one line saying the namespace stays over its limit, got %v", lines)
	}
	if goldenNamespace(newest) != "team-a" || goldenNamespace(legacy) != "" {
		t.Errorf("namespaces read from names: %q %q", goldenNamespace(newest), goldenNamespace(legacy))
	}
}

// TestPruneCountsBakesInProgress: a bake's disk and a golden image being flattened take disk
// space: they count towards the limit (and are never removed), so older images go.
func TestPruneCountsBakesInProgress(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 0)
	old := e.cached("old.img", 2<<20, e.age(1))
	recent := e.cached("recent.img", 2<<20, e.age(2))
	bake := e.bakeDisk(fmt.Sprintf("%064d", 1), recent)
	if err := os.WriteFile(bake, make([]byte, 3<<20), 0o600); err != nil { // the installation wrote 3 MiB
		t.Fatal(err)
	}
	flattening := filepath.Join(e.p.layout.GoldenDir(), ".team-a.x.qcow2.tmp-1")
	if err := os.WriteFile(flattening, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without the bake the two images (4 MiB) fit in 6 MiB; with it (4 MiB more), old must go.
	e.p.cfg.ImageCacheSize = 6 << 20
	e.p.prune(recent)
	e.expect([]string{recent, bake, flattening}, []string{old})
}
