package imagecache

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofrs/flock"
)

// entTestFetch fetches rawURL into c and fails the test on error.
func entTestFetch(t *testing.T, c *Cache, rawURL string) Image {
	t.Helper()
	img, err := c.Fetch(t.Context(), rawURL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// entTestCached is a cache holding one image fetched from a test server: where the entries and
// remove tests start.
type entTestCached struct {
	c       *Cache
	url     string
	content []byte
	gets    *atomic.Int64 // GETs the server answered
	img     Image         // the fetched image
}

// entTestSetup fetches size bytes of test content from a new server into a new cache.
func entTestSetup(t *testing.T, size int) entTestCached {
	t.Helper()
	content := imgTestContent(size)
	srv, gets := imgServer(t, content)
	c := imgCache(t.TempDir())
	rawURL := srv.URL + "/img"
	return entTestCached{c: c, url: rawURL, content: content, gets: gets, img: entTestFetch(t, c, rawURL)}
}

// entTestList returns the cache's entries by path.
func entTestList(t *testing.T, c *Cache) map[string]Entry {
	t.Helper()
	list, err := c.Entries()
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]Entry{}
	for _, e := range list {
		byPath[e.Path] = e
	}
	return byPath
}

// entTestAge sets an entry's last use to long ago, so that a new use is told apart.
func entTestAge(t *testing.T, img Image) time.Time {
	t.Helper()
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(filepath.Dir(img.Path), old, old); err != nil {
		t.Fatal(err)
	}
	return old
}

// TestEntriesListsImagesWithUse: complete entries are listed with their size and last use,
// which a Lookup or a Fetch (hit or download) moves on; nothing else in the directory is listed.
func TestEntriesListsImagesWithUse(t *testing.T) {
	t.Parallel()
	small, big := imgTestContent(1000), imgTestContent(1<<20+3)
	srvSmall, _ := imgServer(t, small)
	srvBig, _ := imgServer(t, big)
	c := imgCache(t.TempDir())
	if list, err := c.Entries(); err != nil || len(list) != 0 {
		t.Fatalf("Entries of a cache never used = %v, %v", list, err)
	}
	before := time.Now()
	a, b := entTestFetch(t, c, srvSmall.URL+"/a"), entTestFetch(t, c, srvBig.URL+"/b")

	// Debris: an entry being downloaded, a non-entry directory, a symlink, a file.
	downloading := filepath.Join(c.Dir, strings.Repeat("ab", 32))
	other := t.TempDir()
	for _, err := range []error{
		os.MkdirAll(downloading, 0o700), os.WriteFile(filepath.Join(downloading, ".tmp-data-1"), small, 0o600),
		os.MkdirAll(filepath.Join(c.Dir, "not-an-entry"), 0o700), os.WriteFile(filepath.Join(c.Dir, "not-an-entry", imageDataFile), small, 0o600),
		os.WriteFile(filepath.Join(other, imageDataFile), small, 0o600), os.Symlink(other, filepath.Join(c.Dir, strings.Repeat("cd", 32))),
		os.WriteFile(filepath.Join(c.Dir, strings.Repeat("ef", 32)), small, 0o600),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	list := entTestList(t, c)
	if len(list) != 2 {
		t.Fatalf("Entries = %v, want the two images only", list)
	}
	for img, length := range map[Image]int{a: len(small), b: len(big)} {
		e, ok := list[img.Path]
		if !ok {
			t.Fatalf("%s not listed: %v", img.Path, list)
		}
		if e.Size < int64(length) || e.Size > int64(length)+1<<20 {
			t.Errorf("%s: size %d, want the blocks of %d bytes", img.Path, e.Size, length)
		}
		if e.LastUse.Before(before.Add(-time.Second)) || e.LastUse.After(time.Now()) {
			t.Errorf("%s: last use %s, want the fetch's time", img.Path, e.LastUse)
		}
	}

	// Each kind of use moves LastUse on; a miss does not create anything.
	for name, use := range map[string]func() error{
		"Lookup": func() error {
			_, ok, err := c.Lookup(t.Context(), srvSmall.URL+"/a", "")
			return errors.Join(err, okErr(ok))
		},
		"Fetch": func() error { _, err := c.Fetch(t.Context(), srvSmall.URL+"/a", imgSHA256(small), nil); return err },
	} {
		old := entTestAge(t, a)
		if err := use(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := entTestList(t, c)[a.Path].LastUse; !got.After(old) {
			t.Errorf("after a %s: last use %s, want later than %s", name, got, old)
		}
	}
	if _, ok, err := c.Lookup(t.Context(), srvSmall.URL+"/never-fetched", ""); ok || err != nil {
		t.Fatalf("Lookup of an image never fetched: %v, %v", ok, err)
	}
	if len(entTestList(t, c)) != 2 {
		t.Error("a Lookup that missed added an entry")
	}
}

func okErr(ok bool) error {
	if !ok {
		return errors.New("not cached")
	}
	return nil
}

// TestRemove: an entry used after it was listed, or held by a Fetch, is kept; otherwise it is
// removed whole, and fetched again by the next Fetch.
func TestRemove(t *testing.T) {
	t.Parallel()
	f := entTestSetup(t, 64<<10)
	c, rawURL, img := f.c, f.url, f.img
	entTestAge(t, img)

	listed := entTestList(t, c)[img.Path]
	if _, ok, err := c.Lookup(t.Context(), rawURL, ""); !ok || err != nil {
		t.Fatalf("Lookup: %v, %v", ok, err)
	}
	if removed, err := c.Remove(listed); removed || err != nil {
		t.Fatalf("Remove of an entry used since it was listed = %v, %v; want kept", removed, err)
	}

	listed = entTestList(t, c)[img.Path]
	other := flock.New(filepath.Join(filepath.Dir(img.Path), imageLockFile)) // a Fetch elsewhere
	if err := other.Lock(); err != nil {
		t.Fatal(err)
	}
	if removed, err := c.Remove(listed); removed || err != nil {
		t.Fatalf("Remove of an entry whose lock is held = %v, %v; want kept", removed, err)
	}
	if err := other.Unlock(); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := c.Lookup(t.Context(), rawURL, ""); !ok {
		t.Fatal("an entry Remove kept is no longer cached")
	}

	listed = entTestList(t, c)[img.Path]
	if removed, err := c.Remove(listed); !removed || err != nil {
		t.Fatalf("Remove = %v, %v; want removed", removed, err)
	}
	if _, err := os.Lstat(filepath.Dir(img.Path)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("entry directory after Remove: %v, want it gone", err)
	}
	if removed, err := c.Remove(listed); removed || err != nil {
		t.Errorf("second Remove = %v, %v; want nothing to do", removed, err)
	}
	if _, ok, err := c.Lookup(t.Context(), rawURL, ""); ok || err != nil {
		t.Errorf("Lookup after Remove = %v, %v; want a miss", ok, err)
	}
	again := entTestFetch(t, c, rawURL)
	if got, err := os.ReadFile(again.Path); err != nil || !bytes.Equal(got, f.content) || again.CacheHit || f.gets.Load() != 2 {
		t.Errorf("Fetch after Remove: hit %v, %d GETs, content ok %v (%v); want a fresh download", again.CacheHit, f.gets.Load(), bytes.Equal(got, f.content), err)
	}
}

// TestRemoveRefusesForeignPaths: Remove deletes only data files of its own cache, whatever
// Entry it is handed.
func TestRemoveRefusesForeignPaths(t *testing.T) {
	t.Parallel()
	f := entTestSetup(t, 4096)
	c, img := f.c, f.img
	entry := filepath.Dir(img.Path)
	outside := t.TempDir()
	victim := filepath.Join(outside, strings.Repeat("01", 32), imageDataFile)
	if err := os.MkdirAll(filepath.Dir(victim), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(c.Dir, strings.Repeat("23", 32)) // an entry that is a symlink out
	if err := os.Symlink(filepath.Dir(victim), link); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Dir(victim))
	for _, path := range []string{
		victim,
		filepath.Join(link, imageDataFile),
		filepath.Join(entry, imageDigestFile),
		entry,
		c.Dir + "/" + filepath.Base(entry) + "/../" + strings.Repeat("01", 32) + "/data",
		filepath.Join(c.Dir, "..", filepath.Base(outside), strings.Repeat("01", 32), imageDataFile),
		"relative/" + filepath.Base(entry) + "/data",
	} {
		removed, err := c.Remove(Entry{Path: path, LastUse: fi.ModTime()})
		if removed {
			t.Errorf("Remove(%s) removed something", path)
		}
		t.Logf("Remove(%s): %v", path, err)
	}
	for _, path := range []string{victim, img.Path, filepath.Join(entry, imageDigestFile), link} {
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("%s: %v, want it kept", path, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(victim), imageLockFile)); err == nil {
		t.Error("Remove made a lock file through a symlink")
	}
}
