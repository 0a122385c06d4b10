package qemu

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkImageCacheHit is the cost every repave pays once the image is
// cached: a stat and a digest read, no lock, no hashing.
func BenchmarkImageCacheHit(b *testing.B) {
	content := imgTestContent(1 << 20)
	srv, gets := imgServer(b, content)
	c := &ImageCache{Dir: b.TempDir()}
	rawURL := srv.URL + "/img"
	checksum := imgSHA256(content)
	if _, err := c.Fetch(b.Context(), rawURL, checksum, nil); err != nil {
		b.Fatal(err)
	}

	for b.Loop() {
		img, err := c.Fetch(b.Context(), rawURL, checksum, nil)
		if err != nil || !img.CacheHit {
			b.Fatalf("fetch = %+v, %v; want a cache hit", img, err)
		}
	}
	if n := gets.Load(); n != 1 {
		b.Fatalf("%d GET requests, want 1", n)
	}
}

// BenchmarkCreateOverlay shows that a repave's disk costs the same whatever
// the base image's size: only qcow2 metadata is written.
func BenchmarkCreateOverlay(b *testing.B) {
	diskTestNeedQemuImg(b)
	for _, bc := range []struct {
		name string
		size int64
	}{
		{"base=64MiB", 64 << 20},
		{"base=1GiB", 1 << 30},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dir := b.TempDir()
			base := diskTestBase(b, dir, "raw", bc.size) // sparse: no disk used
			overlay := filepath.Join(dir, "disk.qcow2")
			for b.Loop() {
				if err := CreateOverlay(b.Context(), base, overlay, 20<<30); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFetchDownload measures a full download over loopback: streaming,
// hashing, fsync and rename. Each iteration removes the entry again, so
// every Fetch downloads.
func BenchmarkFetchDownload(b *testing.B) {
	content := imgTestContent(8 << 20)
	srv, _ := imgServer(b, content)
	c := &ImageCache{Dir: b.TempDir()}
	rawURL := srv.URL + "/img"
	entry := imgEntryDir(c.Dir, rawURL)
	checksum := imgSHA256(content)

	b.SetBytes(int64(len(content)))
	for b.Loop() {
		img, err := c.Fetch(b.Context(), rawURL, checksum, nil)
		if err != nil || img.CacheHit {
			b.Fatalf("fetch = %+v, %v; want a download", img, err)
		}
		if err := os.RemoveAll(entry); err != nil {
			b.Fatal(err)
		}
	}
}
