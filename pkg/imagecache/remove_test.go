package imagecache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gofrs/flock"
)

// TestFetchDuringRemoveRefetches plays Remove's steps by hand, holding the entry's lock as
// Remove does, to pin down what a concurrent Fetch sees: after the data is gone, a Lookup
// misses, and a Fetch waits for the lock, then downloads again into a fresh entry.
func TestFetchDuringRemoveRefetches(t *testing.T) {
	t.Parallel()
	f := entTestSetup(t, 64<<10)
	c, rawURL, img := f.c, f.url, f.img
	entry := filepath.Dir(img.Path)

	remover := flock.New(filepath.Join(entry, imageLockFile))
	if err := remover.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(img.Path); err != nil { // Remove's first step
		t.Fatal(err)
	}
	if _, ok, err := c.Lookup(t.Context(), rawURL, ""); ok || err != nil {
		t.Fatalf("Lookup of a half-removed entry = %v, %v; want a miss", ok, err)
	}
	done := make(chan error, 1)
	var got Image
	go func() {
		var err error
		got, err = c.Fetch(t.Context(), rawURL, imgSHA256(f.content), nil)
		done <- err
	}()
	imgWaitForWaiters(t, c, 1)
	time.Sleep(3 * imageLockRetry) // the Fetch polls the lock meanwhile
	select {
	case err := <-done:
		t.Fatalf("Fetch finished while the entry was locked for removal: %v", err)
	default:
	}
	if err := discardEntry(c.Dir, entry); err != nil { // Remove's second step, under the lock
		t.Fatal(err)
	}
	if err := remover.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(got.Path); err != nil || !bytes.Equal(b, f.content) || got.CacheHit || f.gets.Load() != 2 {
		t.Errorf("Fetch during removal: hit %v, %d GETs, content ok %v (%v); want a fresh download", got.CacheHit, f.gets.Load(), bytes.Equal(b, f.content), err)
	}
}

// TestRemoveRacingFetches: Fetches and Lookups of one URL race with a remover; every Fetch
// gets the whole image (a hit or a download) and nothing is left half-removed.
func TestRemoveRacingFetches(t *testing.T) {
	t.Parallel()
	f := entTestSetup(t, 32<<10)
	c, rawURL, content := f.c, f.url, f.content

	stop := make(chan struct{})
	var removals int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			list, err := c.Entries()
			for _, e := range list {
				removed, rerr := c.Remove(e)
				err = errors.Join(err, rerr)
				if removed {
					removals++
				}
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 200 {
		img, err := c.Fetch(t.Context(), rawURL, imgSHA256(content), nil)
		if err != nil || img.Digest != imgSHA256(content) || img.Size != int64(len(content)) {
			t.Fatalf("Fetch while removing = %+v, %v", img, err)
		}
		if _, _, err := c.Lookup(t.Context(), rawURL, imgSHA256(content)); err != nil {
			t.Fatalf("Lookup while removing: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d removals raced with 200 fetches", removals)
	img := entTestFetch(t, c, rawURL)
	if b, err := os.ReadFile(img.Path); err != nil || !bytes.Equal(b, content) {
		t.Errorf("final image: %v", err)
	}
}
