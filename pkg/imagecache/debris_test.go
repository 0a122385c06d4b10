package imagecache

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofrs/flock"
)

// The crash tests re-execute this test binary as a child that works on a cache until it reaches
// a window, where the parent kills it with SIGKILL. These variables tell the child what to do.
const (
	crashChildEnv = "IMAGECACHE_CRASH_CHILD" // "<work>:<window>"
	crashDirEnv   = "IMAGECACHE_CRASH_DIR"   // the cache directory
	crashCtlEnv   = "IMAGECACHE_CRASH_CTL"   // where the child writes "reached"
)

// TestCrashChild is the child's side: it runs only when re-executed by TestCollectDebrisAfterSIGKILL.
func TestCrashChild(t *testing.T) {
	spec := os.Getenv(crashChildEnv)
	if spec == "" {
		t.Skip("only run as the child of TestCollectDebrisAfterSIGKILL")
	}
	work, window, _ := strings.Cut(spec, ":")
	reached := func() {
		if err := os.WriteFile(filepath.Join(os.Getenv(crashCtlEnv), "reached"), nil, 0o600); err != nil {
			t.Error(err)
		}
		time.Sleep(time.Hour) // until killed; a sleep, so the runtime sees no deadlock
	}
	crashWindow = func(where string) {
		if where == window {
			reached()
		}
	}
	content := imgTestContent(256 << 10)
	srv, _ := imgServer(t, content)
	c := imgCache(os.Getenv(crashDirEnv))
	switch work {
	case "download": // half the image arrives, then nothing: killed while downloading
		stalled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			_, _ = w.Write(content[:len(content)/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}))
		defer stalled.Close()
		_, err := c.Fetch(t.Context(), stalled.URL+"/img", "", nil)
		t.Errorf("the stalled download ended: %v", err)
	case "remove":
		entTestFetch(t, c, srv.URL+"/img")
		list, err := c.Entries()
		if err != nil || len(list) < 1 {
			t.Fatalf("Entries = %v, %v", list, err)
		}
		for _, e := range list {
			if strings.HasPrefix(e.Path, imgEntryDir(c.Dir, srv.URL+"/img")) {
				removed, err := c.Remove(e)
				t.Errorf("Remove ended without reaching the window: %v, %v", removed, err)
			}
		}
	case "failed-fetch": // the whole image arrives, but does not match its checksum
		_, err := c.Fetch(t.Context(), srv.URL+"/img", imgSHA256([]byte("another image")), nil)
		t.Errorf("the failed fetch ended without reaching the window: %v", err)
	default:
		t.Fatalf("unknown work %q", work)
	}
}

// TestCollectDebrisAfterSIGKILL kills a process using the cache with SIGKILL inside each window
// where it leaves debris, checks that CollectDebris leaves it alone while the process lives (it
// holds the lock), and that after the kill CollectDebris removes it all and keeps a complete
// entry that was there before.
func TestCollectDebrisAfterSIGKILL(t *testing.T) {
	t.Parallel()
	for _, w := range []struct {
		name, work, window string
		left               string // what the kill leaves, as a glob in the cache directory
	}{
		{"during a download", "download", "", "*/" + imageTempPrefix + imageDataFile + "-*"},
		{"in Remove, data removed", "remove", "remove:data-removed", "*/" + imageLockFile},
		{"in Remove, entry moved aside", "remove", "discard:moved", imageRemovingPrefix + "*/*/" + imageLockFile},
		{"in a failed fetch's cleanup", "failed-fetch", "discard:moved", imageRemovingPrefix + "*/*/" + imageLockFile},
	} {
		t.Run(w.name, func(t *testing.T) {
			t.Parallel()
			kept := entTestSetup(t, 4096)
			c, ctl := kept.c, t.TempDir()
			child := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			child.Env = append(os.Environ(), crashChildEnv+"="+w.work+":"+w.window, crashDirEnv+"="+c.Dir, crashCtlEnv+"="+ctl)
			var out bytes.Buffer
			child.Stdout, child.Stderr = &out, &out
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- child.Wait() }()
			t.Cleanup(func() { _ = child.Process.Kill() })

			// In the window: the child wrote "reached", or (a download) half the image is on disk.
			inWindow := func() bool {
				if w.window != "" {
					_, err := os.Stat(filepath.Join(ctl, "reached"))
					return err == nil
				}
				temps, _ := filepath.Glob(filepath.Join(c.Dir, w.left))
				for _, tmp := range temps {
					if fi, err := os.Stat(tmp); err == nil && fi.Size() > 0 {
						return true
					}
				}
				return false
			}
			for deadline := time.Now().Add(time.Minute); !inWindow(); time.Sleep(10 * time.Millisecond) {
				select {
				case err := <-exited:
					t.Fatalf("the child exited (%v) before the window:\n%s", err, out.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("the child did not reach the window in a minute:\n%s", out.String())
				}
			}

			if removed, err := c.CollectDebris(); len(removed) != 0 || err != nil {
				t.Fatalf("CollectDebris while the child holds the lock = %v, %v; want nothing removed", removed, err)
			}
			if left, _ := filepath.Glob(filepath.Join(c.Dir, w.left)); len(left) == 0 {
				t.Fatalf("nothing matches %s in the window: the test does not test the window", w.left)
			}
			if err := child.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := <-exited; err == nil {
				t.Fatal("the killed child exited cleanly")
			}

			removed, err := c.CollectDebris()
			if len(removed) != 1 || err != nil {
				t.Errorf("CollectDebris after the kill = %v, %v; want what the child left removed", removed, err)
			}
			names := cacheDirNames(t, c.Dir)
			if want := []string{filepath.Base(filepath.Dir(kept.img.Path))}; !slices.Equal(names, want) {
				t.Errorf("cache directory holds %v after the collection, want only the complete entry %v", names, want)
			}
			if img, ok, err := c.Lookup(t.Context(), kept.url, imgSHA256(kept.content)); !ok || err != nil || img.Path != kept.img.Path {
				t.Errorf("the complete entry after the collection: %v, %v, %v", img, ok, err)
			}
		})
	}
}

// TestCollectDebrisLeavesTheRest: what no crash test above makes by itself is built here by hand.
// An entry holding nothing but its lock file (a waiter that gave up after a failed fetch removed
// the entry it waited for, and made the directory again) and an empty one are removed; an entry
// without data whose lock is held (by another Cache: a download in this process) is not, nor
// anything that is no entry.
func TestCollectDebrisLeavesTheRest(t *testing.T) {
	t.Parallel()
	kept := entTestSetup(t, 4096)
	c := kept.c
	entry := func(hex2 string) string { return filepath.Join(c.Dir, strings.Repeat(hex2, 32)) }
	lockOnly, empty, busy := entry("a1"), entry("b2"), entry("c3")
	outside := t.TempDir()
	for _, err := range []error{
		os.MkdirAll(lockOnly, 0o700), os.WriteFile(filepath.Join(lockOnly, imageLockFile), nil, 0o600),
		os.MkdirAll(empty, 0o700),
		os.MkdirAll(busy, 0o700), os.WriteFile(filepath.Join(busy, imageTempPrefix+imageDataFile+"-1"), []byte("half"), 0o600),
		os.MkdirAll(filepath.Join(c.Dir, "not-an-entry"), 0o700),
		os.WriteFile(filepath.Join(c.Dir, imageRemovingPrefix+"a-file"), nil, 0o600),
		os.Symlink(outside, filepath.Join(c.Dir, strings.Repeat("d4", 32))),
		os.Symlink(outside, filepath.Join(c.Dir, imageRemovingPrefix+"link")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	holder := flock.New(filepath.Join(busy, imageLockFile))
	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	defer holder.Unlock() //nolint:errcheck // closing the fd releases the lock anyway

	removed, err := c.CollectDebris()
	slices.Sort(removed)
	if want := []string{lockOnly, empty}; err != nil || !slices.Equal(removed, want) {
		t.Errorf("CollectDebris = %v, %v; want %v", removed, err, want)
	}
	want := []string{imageRemovingPrefix + "a-file", imageRemovingPrefix + "link", filepath.Base(filepath.Dir(kept.img.Path)), filepath.Base(busy),
		strings.Repeat("d4", 32), "not-an-entry"}
	slices.Sort(want)
	if names := cacheDirNames(t, c.Dir); !slices.Equal(names, want) {
		t.Errorf("cache directory after the collection: %v, want %v", names, want)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the directory a symlink names: %v", err)
	}
}

// cacheDirNames lists the cache directory, sorted.
func cacheDirNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	names := make([]string, 0, len(des))
	for _, de := range des {
		names = append(names, de.Name())
	}
	slices.Sort(names)
	return names
}
