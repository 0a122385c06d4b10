// Package consolelog keeps a VM's serial console log on the host within a size, however much the
// guest prints, and reads it back within that size.
//
// QEMU writes the console to a file at its own offset and never waits for anyone; the host
// cannot redirect it without QEMU's help. So the file is capped in place: Enforce, run
// periodically by the host, punches a hole (FALLOC_FL_PUNCH_HOLE) over the middle of a file that
// outgrew its size, keeping the head of the boot (the first quarter) and the newest output (the
// last half). The blocks are freed; QEMU goes on writing at the end and never notices; offsets
// stay valid, so a reader following the file keeps its place. The file becomes sparse: its
// apparent size is everything the guest wrote, its disk use stays within the size.
//
// Lines the host waits for (Keep: the guest's readiness report) must never be lost with the
// middle: Enforce copies those among the bytes it is about to drop to a small markers file first.
// A reader reads the console first and the markers file second, so a line dropped in between is
// in the second. Read and Follower read the head, the markers and the newest output only: never
// more than the size, whatever the file's apparent size.
package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"stargate.io/stargate/pkg/filenames"
)

const (
	// DefaultSize is the size of a console when none is given (--console-size): ample for a boot
	// and an installation's output, small next to a VM's disk.
	DefaultSize = 16 << 20
	// MinSize is the smallest size accepted: its head (a quarter) still holds a kernel's boot
	// messages, and its tail the last lines any reader shows.
	MinSize = 1 << 20
	// MaxLine is the longest line kept as a marker, and the longest unfinished line a Follower
	// carries between reads: a readiness line is a few KiB.
	MaxLine = 64 << 10
	// MaxMarkers bounds the markers file: a guest printing marker-like lines in a loop has only the
	// first ones kept.
	MaxMarkers = 256 << 10
	// block is the unit holes are punched in (the page and file system block size): a hole ends
	// on a block boundary, so no kept byte shares a block with dropped ones.
	block = 4096
	// scanBudget bounds what one Enforce reads and drops: a console that grew for a long time
	// while nothing enforced its size (the simulator was down) is brought back over a few passes,
	// without holding up the other consoles.
	scanBudget = 64 << 20
)

// Log is one VM's console file and its markers file, capped at Size bytes on disk.
type Log struct {
	// Path is the console file QEMU writes.
	Path string
	// Markers is the file that receives the Keep lines of dropped bytes.
	Markers string
	// Size is the most disk the console may use (DefaultSize when 0); see Enforce for the slack.
	Size int64
	// Keep says which lines must survive when the bytes holding them are dropped.
	Keep func(line []byte) bool
}

// ForVM is the console Log of the VM directory dir (QEMU's serial console file there).
func ForVM(dir string, size int64, keep func([]byte) bool) Log {
	return Log{Path: filepath.Join(dir, filenames.ConsoleFile), Markers: filepath.Join(dir, filenames.ConsoleMarkersFile), Size: size, Keep: keep}
}

func (l Log) size() int64 {
	if l.Size <= 0 {
		return DefaultSize
	}
	return l.Size
}

// head is how many bytes at the start are never dropped: the boot.
func (l Log) head() int64 { return alignDown(l.size() / 4) }

// keep is how many of the newest bytes a hole leaves before the end.
func (l Log) keep() int64 { return l.size() / 2 }

// gap is the least a hole drops, so that a console over its size is not punched for every line.
func (l Log) gap() int64 { return l.size() / 4 }

// window is how many of the newest bytes a reader reads. Enforce leaves undropped only what is
// less than keep+gap+block from the end; the window reaches at least that far, so every byte is
// read by a reader or copied, when it is a marker, before it is dropped.
func (l Log) window() int64 { return l.size() - l.head() + 2*block }

// Read returns what the console keeps: its head, then — when a middle part is left out — a line
// saying so and the markers, then its newest bytes (holes left out). It never returns much more
// than the size (at most MaxMarkers more). A console that does not exist reads as empty.
func (l Log) Read() ([]byte, error) {
	f, size, err := openSized(l.Path, "the console")
	if f == nil || err != nil {
		return nil, err
	}
	defer f.Close()
	// The head ends where the first hole starts (a file punched under another size) or at head().
	headEnd := min(size, l.head(), holeAt(f, 0, size))
	head, err := readRange(f, 0, headEnd)
	if err != nil {
		return nil, err
	}
	start := max(headEnd, size-l.window())
	start = max(start, dataAt(f, start, size))
	tail, err := readRange(f, start, size)
	if err != nil {
		return nil, err
	}
	// The markers after the console: a line dropped while the console was read is copied there
	// before it was dropped.
	markers, err := readMarkers(l.Markers)
	if err != nil {
		return nil, err
	}
	if start == headEnd && len(markers) == 0 {
		return append(head, stripNUL(tail)...), nil
	}
	out := head
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	out = fmt.Appendf(out, "[console: %d bytes between the head and the newest output left out; the lines the host waits for among them follow]\n", start-headEnd)
	out = append(out, markers...)
	return append(out, stripNUL(tail)...), nil
}

// DiskUsage is how many bytes the file at path takes on disk (0 if it does not exist).
func DiskUsage(path string) int64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// readMarkers reads the markers file, at most MaxMarkers (a missing file has none).
func readMarkers(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening the console's markers: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxMarkers))
	if err != nil {
		return nil, fmt.Errorf("reading the console's markers: %w", err)
	}
	return b, nil
}

// readRange reads bytes [from, to) of f; a file that shrank meanwhile (a new boot) gives fewer.
func readRange(f *os.File, from, to int64) ([]byte, error) {
	if to <= from {
		return nil, nil
	}
	b := make([]byte, to-from)
	n, err := f.ReadAt(b, from)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading the console: %w", err)
	}
	return b[:n], nil
}

// dataAt is where the first data at or after off starts: size when only a hole follows, off
// when the file system cannot tell.
func dataAt(f *os.File, off, size int64) int64 {
	n, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size
	case err != nil:
		return off
	}
	return n
}

// holeAt is where the first hole at or after off starts (size when none, or when the file system
// cannot tell).
func holeAt(f *os.File, off, size int64) int64 {
	n, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
	if err != nil {
		return size
	}
	return n
}

// stripNUL removes NUL bytes, in place: a hole reads as NULs, and a console line never has one.
func stripNUL(b []byte) []byte {
	if bytes.IndexByte(b, 0) < 0 {
		return b
	}
	out := b[:0]
	for _, c := range b {
		if c != 0 {
			out = append(out, c)
		}
	}
	return out
}

func alignDown(n int64) int64 { return n &^ (block - 1) }

func alignUp(n int64) int64 { return alignDown(n + block - 1) }

// openSized opens the file at path and tells its size; a file that does not exist is a nil file
// and no error. what names the file in errors.
func openSized(path, what string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("opening %s: %w", what, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("reading %s: %w", what, err)
	}
	return f, fi.Size(), nil
}
