package consolelog

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testSize = MinSize

// isMarker stands for cloudinit.IsMarkerLine: the tests' marker lines start with MARK.
func isMarker(line []byte) bool { return bytes.HasPrefix(line, []byte("MARK ")) }

func testLog(t *testing.T) Log {
	t.Helper()
	dir := t.TempDir()
	return Log{Path: filepath.Join(dir, "console.log"), Markers: filepath.Join(dir, "console.markers"), Size: testSize, Keep: isMarker}
}

// fill appends numbered lines of about 100 bytes to the console until it holds n bytes more, and
// returns the number of the last line written.
func fill(t *testing.T, path string, first, n int) int {
	t.Helper()
	var b bytes.Buffer
	i := first
	for ; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %08d %s\n", i, strings.Repeat("x", 80))
	}
	appendFile(t, path, b.String())
	return i - 1
}

// pad appends exactly n bytes of lines.
func pad(t *testing.T, path string, n int) {
	t.Helper()
	var b strings.Builder
	for b.Len() < n {
		line := min(100, n-b.Len())
		b.WriteString(strings.Repeat("p", line-1) + "\n")
	}
	appendFile(t, path, b.String())
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
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

func enforce(t *testing.T, l Log) int64 {
	t.Helper()
	n, err := l.Enforce()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// enforceAll runs Enforce until it has nothing more to drop (a backlog takes several passes).
func enforceAll(t *testing.T, l Log) {
	t.Helper()
	for enforce(t, l) > 0 {
		continue
	}
}

func read(t *testing.T, l Log) string {
	t.Helper()
	b, err := l.Read()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A console within its size is left alone and read whole; a missing one is empty, not an error.
func TestWithinItsSizeNothingChanges(t *testing.T) {
	l := testLog(t)
	if got := read(t, l); got != "" {
		t.Errorf("a missing console read %q", got)
	}
	if n := enforce(t, l); n != 0 {
		t.Errorf("a missing console: dropped %d", n)
	}
	fill(t, l.Path, 1, testSize-200)
	want, _ := os.ReadFile(l.Path)
	if n := enforce(t, l); n != 0 {
		t.Errorf("dropped %d bytes of a console within its size", n)
	}
	if got := read(t, l); got != string(want) {
		t.Errorf("read %d bytes, want the whole console (%d)", len(got), len(want))
	}
	if _, err := os.Stat(l.Markers); !os.IsNotExist(err) {
		t.Errorf("markers file made for nothing: %v", err)
	}
}

// Over its size, the console keeps the head of the boot and the newest output; the disk space of
// the middle is freed, the apparent size stays, and a reader sees where something was left out.
func TestOverItsSizeHeadAndNewestTailAreKept(t *testing.T) {
	l := testLog(t)
	last := fill(t, l.Path, 1, 5*testSize)
	before, _ := os.ReadFile(l.Path)
	dropped := enforce(t, l)
	if dropped == 0 {
		t.Fatal("nothing dropped from a console five times its size")
	}
	if du := DiskUsage(l.Path); du > testSize {
		t.Errorf("console takes %d bytes on disk, size %d", du, testSize)
	}
	if fi, _ := os.Stat(l.Path); fi.Size() != int64(len(before)) {
		t.Errorf("apparent size %d, want %d (QEMU's offset)", fi.Size(), len(before))
	}
	after, _ := os.ReadFile(l.Path)
	head := l.head()
	if !bytes.Equal(after[:head], before[:head]) {
		t.Error("the head changed")
	}
	if !bytes.Equal(after[len(after)-int(l.keep()):], before[len(before)-int(l.keep()):]) {
		t.Error("the newest half of the size changed")
	}
	got := read(t, l)
	if !strings.HasPrefix(got, "line 00000001 ") || !strings.HasSuffix(got, fmt.Sprintf("line %08d %s\n", last, strings.Repeat("x", 80))) {
		t.Errorf("read does not start with the boot or end with the newest line: %q ... %q", got[:40], got[len(got)-40:])
	}
	if !strings.Contains(got, "bytes between the head and the newest output left out") {
		t.Error("read does not say that something was left out")
	}
	if strings.ContainsRune(got, 0) {
		t.Error("read returned the hole's NULs")
	}
	if len(got) > testSize+block*4 {
		t.Errorf("read %d bytes, size %d", len(got), testSize)
	}
	// Again at once: nothing more to drop until the guest writes a quarter of the size.
	if n := enforce(t, l); n != 0 {
		t.Errorf("second pass dropped %d", n)
	}
	fill(t, l.Path, last+1, testSize/4+block)
	if n := enforce(t, l); n == 0 {
		t.Error("a quarter of the size more: nothing dropped")
	}
	if du := DiskUsage(l.Path); du > testSize {
		t.Errorf("console takes %d bytes on disk after two holes", du)
	}
}

// A marker line among the dropped bytes is copied to the markers file first — also one that
// straddles the hole's start or end — and every reader still finds it.
func TestMarkersInTheDroppedPartAreKept(t *testing.T) {
	l := testLog(t)
	fill(t, l.Path, 1, int(l.head())-30)
	appendFile(t, l.Path, "MARK across-the-head-end "+strings.Repeat("h", 100)+"\n")
	fill(t, l.Path, 1, testSize)
	appendFile(t, l.Path, "MARK in-the-middle\n")
	fill(t, l.Path, 1, 2*testSize)
	// The hole will end at B = alignDown(size - keep): a marker line across B.
	fi, _ := os.Stat(l.Path)
	b := alignDown(fi.Size()) + 2*block
	pad(t, l.Path, int(b-100-fi.Size()))
	marker := "MARK across-the-hole-end " + strings.Repeat("e", 200) + "\n" // from B-100 to B+126
	appendFile(t, l.Path, marker)
	pad(t, l.Path, int(l.keep())+1000-126-len("not a MARK line\n"))
	appendFile(t, l.Path, "not a MARK line\n")
	if fi, _ := os.Stat(l.Path); alignDown(fi.Size()-l.keep()) != b {
		t.Fatalf("test setup: the hole would end at %d, not %d", alignDown(fi.Size()-l.keep()), b)
	}

	follower := l.Follow()
	enforce(t, l)
	markers, _ := os.ReadFile(l.Markers)
	for _, want := range []string{"MARK across-the-head-end", "MARK in-the-middle", "MARK across-the-hole-end"} {
		if !strings.Contains(string(markers), want) {
			t.Errorf("markers file lacks %q:\n%s", want, markers)
		}
		if got := read(t, l); !strings.Contains(got, want) {
			t.Errorf("Read lacks %q", want)
		}
	}
	seen, err := follower.Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MARK across-the-head-end " + strings.Repeat("h", 100) + "\n", "MARK in-the-middle\n",
		"MARK across-the-hole-end " + strings.Repeat("e", 200) + "\n"} {
		if !strings.Contains(string(seen), want) {
			t.Errorf("a follower that started before the hole lacks %q", want)
		}
	}
	if strings.Count(string(markers), "\n") != 3 {
		t.Errorf("markers file holds other lines:\n%s", markers)
	}
}

// A guest printing marker-like lines in a loop cannot grow the markers file beyond MaxMarkers.
func TestMarkersFileIsBounded(t *testing.T) {
	l := testLog(t)
	var b strings.Builder
	for i := 0; b.Len() < 6*testSize; i++ {
		fmt.Fprintf(&b, "MARK %d %s\n", i, strings.Repeat("m", 1000))
	}
	appendFile(t, l.Path, b.String())
	enforceAll(t, l)
	fi, err := os.Stat(l.Markers)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > MaxMarkers || fi.Size() < MaxMarkers-2000 {
		t.Errorf("markers file %d bytes, want just under %d", fi.Size(), MaxMarkers)
	}
	if got := read(t, l); len(got) > testSize+MaxMarkers+block*4 {
		t.Errorf("read %d bytes", len(got))
	}
}
