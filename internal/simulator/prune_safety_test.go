package simulator

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// TestPruneRemovesOnlyWhatItListed: symlinks, directories, FIFOs and temp files in golden/, a
// symlinked cache entry, and a VM disk whose backing file is outside the cache never lead prune
// (root, in production) to remove anything but the cache's own images.
func TestPruneRemovesOnlyWhatItListed(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 1)
	outside := t.TempDir()
	victim := filepath.Join(outside, "precious.qcow2")
	e.qemuImg("create", "-q", "-f", "qcow2", victim, "1M")
	victimEntry := filepath.Join(outside, "entry")
	golden, images := e.p.layout.GoldenDir(), e.p.layout.ImagesDir()
	var odd []string // what prune must leave, with old mtimes where it has its own
	file := func(path string, b []byte) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		e.setUse(path, e.age(0))
		odd = append(odd, path)
	}
	symlink := func(target, path string) {
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		odd = append(odd, path)
	}
	file(filepath.Join(golden, "dir.qcow2", "inside.qcow2"), []byte("x"))
	file(filepath.Join(golden, ".tmp-being-written.qcow2"), []byte("x"))
	file(filepath.Join(golden, ".k.qcow2.tmp-123"), []byte("x")) // qemu.Flatten's temp file
	file(filepath.Join(golden, "notes.txt"), []byte("x"))
	file(filepath.Join(victimEntry, "data"), imgTestMBR(4096))
	file(filepath.Join(victimEntry, "lock"), nil)
	symlink(victim, filepath.Join(golden, "link.qcow2"))
	symlink(victimEntry, filepath.Join(images, strings.Repeat("ab", 32))) // an "entry" that leads out
	fifo := filepath.Join(golden, "fifo.qcow2")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	odd = append(odd, fifo)
	e.setUse(victim, e.age(0))
	e.vmDisk("team-a", "outside", victim)
	raw := filepath.Join(e.p.layout.VMDir(types.NamespacedName{Namespace: "team-a", Name: "raw"}), "disk.qcow2") // not qcow2: names nothing
	if err := os.MkdirAll(filepath.Dir(raw), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(raw, imgTestMBR(4096), 0o600); err != nil {
		t.Fatal(err)
	}
	image, goldenImage := e.cached("a.raw", 64<<10, e.age(1)), e.golden("g", e.age(2))

	e.p.prune()
	e.expect(append([]string{victim, raw}, odd...), []string{image, goldenImage})
	if got := e.logs("removed the least recently used image"); len(got) != 2 {
		t.Errorf("logged %q, want the two removals", got)
	}
}

// TestPruneStopsWhenADiskCannotBeRead: a VM disk whose backing file cannot be told (a symlink,
// a damaged header) might overlay any image: prune removes nothing and says why.
func TestPruneStopsWhenADiskCannotBeRead(t *testing.T) {
	t.Parallel()
	damaged := make([]byte, 4096)
	copy(damaged, "QFI\xfb")
	binary.BigEndian.PutUint32(damaged[4:], 3)
	binary.BigEndian.PutUint64(damaged[8:], 1<<40)
	binary.BigEndian.PutUint32(damaged[16:], 0xffffffff)
	for name, makeDisk := range map[string]func(disk, base string) error{
		"symlink": func(disk, base string) error { return os.Symlink(base, disk) },
		"damaged": func(disk, _ string) error { return os.WriteFile(disk, damaged, 0o600) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newPruneEnv(t, 1)
			image := e.cached("a.raw", 64<<10, e.age(0))
			disk := filepath.Join(e.p.layout.VMDir(types.NamespacedName{Namespace: "team-a", Name: "odd"}), "disk.qcow2")
			if err := os.MkdirAll(filepath.Dir(disk), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := makeDisk(disk, image); err != nil {
				t.Fatal(err)
			}
			e.p.prune()
			e.expect([]string{image}, nil)
			if got := e.logs("not pruning"); len(got) != 1 || !strings.Contains(got[0], disk) {
				t.Errorf("logged %q, want one error naming %s", got, disk)
			}
		})
	}
}

// TestPruneRacingPinnedUses: repaves that pin an image, look it up (fetching it again when a
// prune removed it) and use it, race with prunes that remove every unpinned image: under its
// pin, an image looked up is never removed.
func TestPruneRacingPinnedUses(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 1)
	content := imgTestMBR(64 << 10)
	path := e.cached("a.raw", len(content), e.age(0))
	url := "file://" + filepath.Join(e.src, "a.raw")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				e.p.prune()
			}
		}
	})
	for range 100 {
		unpin := e.p.pinImage(path)
		img, ok, err := e.p.images.Lookup(t.Context(), url, "")
		if err == nil && !ok {
			img, err = e.p.images.Fetch(t.Context(), url, "", nil)
		}
		if err != nil || img.Path != path {
			t.Fatalf("looking up a pinned image: %+v, %v", img, err)
		}
		time.Sleep(time.Millisecond) // a prune or two run meanwhile
		if b, err := os.ReadFile(img.Path); err != nil || !bytes.Equal(b, content) {
			t.Fatalf("a pinned image was removed or damaged under its user: %v", err)
		}
		unpin()
		time.Sleep(time.Millisecond) // unpinned: a prune removes it
	}
	close(stop)
	wg.Wait()
	removals := len(e.logs("removed the least recently used image"))
	t.Logf("%d removals raced with 100 pinned uses", removals)
	if removals == 0 {
		t.Error("no prune removed the image while it was unpinned: the race was not run")
	}
}

// TestFetchPrunes: a new image in the cache prunes it, keeping the new image, which the repave
// waiting for it has not pinned yet.
func TestFetchPrunes(t *testing.T) {
	t.Parallel()
	e := newPruneEnv(t, 1)
	old := e.cached("old.raw", 64<<10, e.age(0))
	if err := os.WriteFile(filepath.Join(e.src, "new.raw"), imgTestMBR(64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	f := e.p.fetchImage("file://"+filepath.Join(e.src, "new.raw"), "", "instance-1")
	deadline := time.Now().Add(20 * time.Second)
	var overLimit []string
	for len(overLimit) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		e.mu.Lock()
		for _, l := range e.logged {
			if strings.Contains(l, "image cache over limit") {
				overLimit = append(overLimit, l)
			}
		}
		e.mu.Unlock()
	}
	if !f.done.Load() || f.err != nil {
		t.Fatalf("fetch: done %v, err %v", f.done.Load(), f.err)
	}
	e.expect([]string{f.image.Path}, []string{old})
	if len(overLimit) != 1 || !strings.Contains(overLimit[0], fmt.Sprintf("over limit, %d bytes in use", e.size(f.image.Path))) {
		t.Errorf("logged %q, want the new image kept over the limit", overLimit)
	}
}
