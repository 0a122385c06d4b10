package consolelog

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The follower hands out each whole line once, keeps an unfinished one for later, and starts over
// when the console is truncated (a new boot).
func TestFollowerReadsOnlyNewWholeLines(t *testing.T) {
	l := testLog(t)
	fl := l.Follow()
	if _, err := fl.Read(); err == nil {
		t.Error("a missing console read without error")
	}
	appendFile(t, l.Path, "boot\nMARK RE")
	if got, _ := fl.Read(); string(got) != "boot\n" {
		t.Errorf("first read %q", got)
	}
	appendFile(t, l.Path, "ADY {}\nmore")
	if got, _ := fl.Read(); string(got) != "MARK READY {}\n" {
		t.Errorf("second read %q", got)
	}
	if got, _ := fl.Read(); len(got) != 0 {
		t.Errorf("nothing new, read %q", got)
	}
	if err := os.WriteFile(l.Path, []byte("new boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := fl.Read(); string(got) != "new boot\n" {
		t.Errorf("after truncation %q", got)
	}
}

// A follower far behind (the console grew while no one read it) reads the head and the newest
// output only; what it skipped reaches it through the markers file once Enforce dropped it.
func TestFollowerFarBehindSkipsAhead(t *testing.T) {
	l := testLog(t)
	fill(t, l.Path, 1, 3*testSize)
	appendFile(t, l.Path, "MARK skipped\n")
	fill(t, l.Path, 1, 20*testSize)
	fl := l.Follow()
	got, err := fl.Read()
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) > l.head()+l.window() {
		t.Errorf("read %d bytes at once, size %d", len(got), testSize)
	}
	if bytes.Contains(got, []byte("MARK skipped")) {
		t.Fatal("test setup: the marker was not skipped")
	}
	enforceAll(t, l)
	if got, _ := fl.Read(); !bytes.Contains(got, []byte("MARK skipped\n")) {
		t.Errorf("after Enforce the follower still lacks the skipped marker; read %d bytes", len(got))
	}
}

// The cap under load, as QEMU and the simulator meet it: a writer appends lines at its own offset
// as fast as it can, a marker line every now and then, while Enforce runs in a loop and a follower
// and a reader read. The console's disk use stays within the size (plus what was written during
// one Enforce), its head is the first lines, its end the newest, and every marker is found by the
// follower and, at the end, by Read.
func TestCapHoldsWhileAWriterAppends(t *testing.T) {
	l := testLog(t)
	w, err := os.OpenFile(l.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600) // as QEMU opens it
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var (
		written   atomic.Int64 // bytes the writer wrote so far
		markers   atomic.Int64 // markers written
		finished  atomic.Bool
		wg        sync.WaitGroup
		lastLine  string
		writerErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer finished.Store(true)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 1; written.Load() < 40*testSize; i++ {
			line := fmt.Sprintf("line %08d %s\n", i, strings.Repeat("x", rng.IntN(150)))
			if rng.IntN(500) == 0 {
				line = fmt.Sprintf("MARK %d\n", markers.Add(1))
			}
			if _, err := w.WriteString(line); err != nil {
				writerErr = err
				return
			}
			if written.Add(int64(len(line)))%(64<<10) < int64(len(line)) {
				time.Sleep(200 * time.Microsecond) // a guest's pace, give or take: many passes, not a few
			}
			lastLine = line
		}
	}()

	seen := map[string]bool{}
	markerRE := regexp.MustCompile(`(?m)^MARK \d+$`)
	fl := l.Follow()
	follow := func() {
		got, err := fl.Read()
		if err != nil && !os.IsNotExist(err) {
			t.Error(err)
		}
		for _, m := range markerRE.FindAll(got, -1) {
			seen[string(m)] = true
		}
	}
	var passes, maxOver int64
	for done := false; !done; {
		done = finished.Load()
		before := written.Load()
		if _, err := l.Enforce(); err != nil {
			t.Fatal(err)
		}
		du := DiskUsage(l.Path)
		during := written.Load() - before
		passes++
		// Disk use: within the size, plus what the writer wrote during this pass, plus the
		// partial blocks at either end of what it wrote.
		if over := du - testSize - during - 2*block; over > maxOver {
			maxOver = over
		}
		follow()
		if b, err := l.Read(); err != nil || len(b) > testSize+MaxMarkers+4*block {
			t.Fatalf("Read: %d bytes, %v", len(b), err)
		}
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
	}
	wg.Wait()
	if writerErr != nil {
		t.Fatal(writerErr)
	}
	enforceAll(t, l)
	follow()
	if maxOver > 0 {
		t.Errorf("the console took up to %d bytes more than its size on disk", maxOver)
	}
	view, _ := l.Read()
	n := markers.Load()
	t.Logf("%d passes, %d bytes written, %d markers, disk use at the end %d, size %d", passes, written.Load(), n, DiskUsage(l.Path), testSize)
	for i := int64(1); i <= n; i++ {
		m := fmt.Sprintf("MARK %d", i)
		if !seen[m] {
			t.Errorf("the follower never saw %s", m)
		}
		if !bytes.Contains(view, []byte(m+"\n")) {
			t.Errorf("Read lacks %s", m)
		}
	}
	if n < 10 {
		t.Errorf("only %d markers written: the test proves little", n)
	}
	if !bytes.HasPrefix(view, []byte("line 00000001 ")) || !bytes.HasSuffix(view, []byte(lastLine)) {
		t.Errorf("Read does not hold the first line and end with the newest (%q)", lastLine)
	}
}
