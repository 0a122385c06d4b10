package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Enforce brings the console back within its size if it outgrew it, and says how many bytes it
// dropped. It copies the Keep lines among the bytes it drops to the markers file, then punches a
// hole from the end of the head (or of the previous hole) to the newest half of the size. Nothing
// is dropped until the console holds more than its size; after a hole the console holds about
// three quarters of it. Between two calls the console grows by what the guest wrote meanwhile:
// the size holds up to that much and MaxMarkers. One call drops at most scanBudget bytes (a long
// backlog takes several). A console that does not exist is not an error.
func (l Log) Enforce() (dropped int64, err error) {
	f, err := os.OpenFile(l.Path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("opening the console to cap it: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("capping the console: %w", err)
	}
	size := fi.Size()
	if size <= l.size() {
		return 0, nil
	}
	from := alignUp(dataAt(f, l.head(), size))
	to := alignDown(size - l.keep())
	if to-from < l.gap() {
		return 0, nil
	}
	to = min(to, from+scanBudget)
	markers, err := l.scan(f, from, to, size)
	if err != nil {
		return 0, err
	}
	// Copied before they are dropped: a reader that finds a hole in the console finds them here.
	if err := l.appendMarkers(markers); err != nil {
		return 0, err
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, from, to-from); err != nil {
		return 0, fmt.Errorf("dropping bytes %d-%d of the console %s: %w", from, to, l.Path, err)
	}
	return to - from, nil
}

// scan returns the Keep lines that have a byte in [from, to), each ending in a newline: the line
// that began before from (unless its start was dropped before: it was scanned then), every line
// inside, and the line that goes on after to.
func (l Log) scan(f *os.File, from, to, size int64) ([]byte, error) {
	s := lineScanner{keep: l.Keep}
	before, err := readRange(f, max(0, from-MaxLine), from)
	if err != nil {
		return nil, err
	}
	switch i := bytes.LastIndexByte(before, '\n'); {
	case i >= 0:
		s.carry = append(s.carry, before[i+1:]...)
	case int64(len(before)) == from: // the file's first line
		s.carry = append(s.carry, before...)
	default:
		s.skip = true // longer than any marker
	}
	if bytes.IndexByte(s.carry, 0) >= 0 {
		s.carry, s.skip = s.carry[:0], true // it began in an earlier hole
	}
	const chunk = 1 << 20
	for off := from; off < to; off += chunk {
		b, err := readRange(f, off, min(to, off+chunk))
		if err != nil {
			return nil, err
		}
		s.write(b)
	}
	// The line that reaches past to: up to its end, if that comes within a marker's length.
	after, err := readRange(f, to, min(size, to+MaxLine+1))
	if err != nil {
		return nil, err
	}
	if i := bytes.IndexByte(after, '\n'); i >= 0 {
		s.write(after[:i+1])
	}
	return s.out, nil
}

// appendMarkers appends whole lines to the markers file, as many as fit in MaxMarkers.
func (l Log) appendMarkers(lines []byte) error {
	if len(lines) == 0 {
		return nil
	}
	f, err := os.OpenFile(l.Markers, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600) // the console may echo secrets
	if err != nil {
		return fmt.Errorf("opening the console's markers: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("reading the console's markers: %w", err)
	}
	if room := MaxMarkers - fi.Size(); int64(len(lines)) > room {
		lines = lines[:bytes.LastIndexByte(lines[:max(room, 0)], '\n')+1]
	}
	_, err = f.Write(lines)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the console's markers: %w", err)
	}
	return nil
}

// lineScanner collects the lines keep accepts from bytes written to it in pieces.
type lineScanner struct {
	keep  func([]byte) bool
	carry []byte // the current line so far
	skip  bool   // the current line is ignored up to its end: too long to be a marker
	out   []byte
}

func (s *lineScanner) write(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			s.add(b)
			return
		}
		s.add(b[:i])
		if !s.skip && s.keep != nil && s.keep(s.carry) {
			s.out = append(append(s.out, s.carry...), '\n')
		}
		s.carry, s.skip = s.carry[:0], false
		b = b[i+1:]
	}
}

func (s *lineScanner) add(b []byte) {
	if s.skip {
		return
	}
	if len(s.carry)+len(b) > MaxLine {
		s.carry, s.skip = s.carry[:0], true
		return
	}
	s.carry = append(s.carry, b...)
}
