package imagecache

import (
	"os"
	"testing"
)

// BenchmarkImageCacheHit is the cost every repave pays once the image is
// cached: a stat and a digest read, no lock, no hashing.
func BenchmarkImageCacheHit(b *testing.B) {
	content := imgTestContent(1 << 20)
	srv, gets := imgServer(b, content)
	c := imgCache(b.TempDir())
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

// BenchmarkFetchDownload measures a full download over loopback: streaming,
// hashing, fsync and rename. Each iteration removes the entry again, so
// every Fetch downloads.
func BenchmarkFetchDownload(b *testing.B) {
	content := imgTestContent(8 << 20)
	srv, _ := imgServer(b, content)
	c := imgCache(b.TempDir())
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
