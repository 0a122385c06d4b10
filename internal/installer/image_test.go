package installer

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"stargate.io/stargate/pkg/installspec"
)

// testImage returns size bytes that look like a disk image (an MBR signature, random data) and its installspec.ImageDigest.
func testImage(size int) ([]byte, string) {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	b[510], b[511] = 0x55, 0xaa
	return b, installspec.DigestOf(b)
}

func tempDevice(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

func readAll(t *testing.T, f *os.File, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func serveImage(image []byte) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "image.raw", time.Time{}, bytes.NewReader(image))
	}))
}

func TestImageWriterWritesAndVerifies(t *testing.T) {
	image, sum := testImage(10<<20 + 12345)
	srv := serveImage(image)
	defer srv.Close()
	dev := tempDevice(t, 32<<20)
	var reports []Progress
	w := &ImageWriter{
		Source:   ImageSource{Client: srv.Client(), URL: srv.URL + "/image.raw", ChunkedSHA256: sum, Size: int64(len(image))},
		Capacity: 20 << 20,
		Progress: func(p Progress) { reports = append(reports, p) },
	}
	n, err := w.Write(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(image)) || !bytes.Equal(readAll(t, dev, len(image)), image) {
		t.Fatalf("wrote %d bytes, want the %d of the image, unchanged", n, len(image))
	}
	last := reports[len(reports)-1]
	if last.Written != n || last.Total != n {
		t.Errorf("last progress = %+v, want %d of %d", last, n, n)
	}
}

func TestImageWriterWipesOnDigestMismatch(t *testing.T) {
	image, _ := testImage(3<<20 + 100)
	srv := serveImage(image)
	defer srv.Close()
	dev := tempDevice(t, 8<<20)
	w := &ImageWriter{
		Source:   ImageSource{Client: srv.Client(), URL: srv.URL, ChunkedSHA256: strings.Repeat("0", 64)},
		Capacity: 8 << 20,
	}
	n, err := w.Write(context.Background(), dev)
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "wiped") {
		t.Fatalf("Write = %v, want ErrDigestMismatch saying the disk was wiped", err)
	}
	got := readAll(t, dev, int(n))
	if !bytes.Equal(got[:1<<20], make([]byte, 1<<20)) {
		t.Error("the first MiB was not wiped")
	}
	if !bytes.Equal(got[n-(1<<20):], make([]byte, 1<<20)) {
		t.Error("the last MiB of the image was not wiped")
	}
	if !bytes.Equal(got[1<<20:n-(1<<20)], image[1<<20:n-(1<<20)]) {
		t.Error("bytes between the wiped ranges changed")
	}
}

// TestImageWriterResumes cuts the first response short: the writer continues with a Range request
// and the digest (computed across both responses) still matches.
func TestImageWriterResumes(t *testing.T) {
	image, sum := testImage(9 << 20)
	var requests atomic.Int32
	var sawRange atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			w.Header().Set("Content-Length", "9437184")
			_, _ = w.Write(image[:5<<20+7])
			panic(http.ErrAbortHandler) // the connection breaks mid-image
		}
		sawRange.Store(r.Header.Get("Range"))
		http.ServeContent(w, r, "image.raw", time.Time{}, bytes.NewReader(image))
	}))
	defer srv.Close()
	dev := tempDevice(t, 16<<20)
	w := &ImageWriter{
		Source:   ImageSource{Client: srv.Client(), URL: srv.URL, ChunkedSHA256: sum, Size: int64(len(image))},
		Capacity: 16 << 20,
		Backoff:  func(int) time.Duration { return 0 },
	}
	if _, err := w.Write(context.Background(), dev); err != nil {
		t.Fatal(err)
	}
	if r, _ := sawRange.Load().(string); !strings.HasPrefix(r, "bytes=") || r == "bytes=0-" {
		t.Errorf("second request had Range %q, want one resuming after the bytes already written", r)
	}
	if !bytes.Equal(readAll(t, dev, len(image)), image) {
		t.Error("the resumed image differs from the served one")
	}
}

func TestImageWriterRefuses(t *testing.T) {
	image, sum := testImage(4 << 20)
	srv := serveImage(image)
	defer srv.Close()
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	var unavailableCalls atomic.Int32
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		unavailableCalls.Add(1)
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}))
	defer unavailable.Close()
	for _, tc := range []struct {
		name     string
		src      ImageSource
		capacity int64
		want     string
	}{
		{"declared size too big for the disk", ImageSource{URL: srv.URL, ChunkedSHA256: sum, Size: 4 << 20}, 2 << 20, "does not fit"},
		{"served image too big for the disk", ImageSource{URL: srv.URL, ChunkedSHA256: sum}, 2 << 20, "does not fit"},
		{"size differs from the spec", ImageSource{URL: srv.URL, ChunkedSHA256: sum, Size: 3 << 20}, 8 << 20, "the spec says"},
		{"not found", ImageSource{URL: notFound.URL, ChunkedSHA256: sum}, 8 << 20, "404"},
		{"server keeps failing", ImageSource{URL: unavailable.URL, ChunkedSHA256: sum}, 8 << 20, "failed 6 times in a row"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.src.Client = srv.Client()
			w := &ImageWriter{Source: tc.src, Capacity: tc.capacity, Backoff: func(int) time.Duration { return 0 }}
			_, err := w.Write(context.Background(), tempDevice(t, 8<<20))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Write = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if n := unavailableCalls.Load(); n != 1+resumeAttempts {
		t.Errorf("a failing server was asked %d times, want %d", n, 1+resumeAttempts)
	}
}

func TestParseContentRange(t *testing.T) {
	for v, want := range map[string][2]int64{"bytes 5-9/10": {5, 10}, "bytes 0-0/*": {0, -1}} {
		s, tot, err := parseContentRange(v)
		if err != nil || s != want[0] || tot != want[1] {
			t.Errorf("parseContentRange(%q) = %d, %d, %v", v, s, tot, err)
		}
	}
	for _, bad := range []string{"", "items 1-2/3", "bytes 5-9", "bytes x-9/10", "bytes 9-10/5"} {
		if _, _, err := parseContentRange(bad); err == nil {
			t.Errorf("parseContentRange(%q) accepted it", bad)
		}
	}
}
