package consolelog

import (
	"bytes"
	"fmt"
	"os"
)

// Follower reads what a console gains, in whole lines, for a watcher waiting for a marker line.
// Every Keep line reaches it: from the console, or — when the bytes holding it were dropped before
// it got there — from the markers file. It never reads much more than the size at once, however
// far behind it is: a follower behind by more than a reader reads skips ahead, because Enforce
// copies the markers of what it skips before dropping it.
type Follower struct {
	log              Log
	console, markers stream
}

// stream is a position in a file and the unfinished line there.
type stream struct {
	offset int64
	carry  []byte
}

// Follow starts following the console from its beginning.
func (l Log) Follow() *Follower { return &Follower{log: l} }

// Read returns the whole lines the console gained since the last Read, then the markers file's.
// A console that shrank was started anew (QEMU truncates it when it starts): it is read from its
// beginning. A console that does not exist yet is an error.
func (fl *Follower) Read() ([]byte, error) {
	lines, err := fl.readConsole()
	if err != nil {
		return nil, err
	}
	// After the console: whatever was dropped from it meanwhile was copied here first.
	marks, err := fl.readMarkers()
	if err != nil {
		return nil, err
	}
	return append(lines, marks...), nil
}

func (fl *Follower) readConsole() ([]byte, error) {
	f, size, err := openSized(fl.log.Path, "the console")
	if err != nil {
		return nil, err
	}
	if f == nil {
		return nil, fmt.Errorf("opening the console: %w", os.ErrNotExist)
	}
	defer f.Close()
	c := &fl.console
	if size < c.offset { // a new boot: its markers are new too
		fl.console, fl.markers = stream{}, stream{}
	}
	var out []byte
	if head := fl.log.head(); c.offset < head {
		lines, err := c.read(f, c.offset, min(size, head))
		if err != nil {
			return nil, err
		}
		out = lines
	}
	if skipTo := size - fl.log.window(); c.offset >= fl.log.head() && c.offset < skipTo {
		c.offset, c.carry = skipTo, c.carry[:0]
	}
	if next := dataAt(f, c.offset, size); next > c.offset { // a hole: the line it ends was dropped
		c.offset, c.carry = next, c.carry[:0]
	}
	lines, err := c.read(f, c.offset, size)
	if err != nil {
		return nil, err
	}
	return append(out, lines...), nil
}

func (fl *Follower) readMarkers() ([]byte, error) {
	f, size, err := openSized(fl.log.Markers, "the console's markers")
	if f == nil || err != nil {
		return nil, err
	}
	defer f.Close()
	m := &fl.markers
	if size < m.offset {
		*m = stream{}
	}
	return m.read(f, m.offset, min(size, m.offset+MaxMarkers))
}

// read reads [from, to) of f and returns the lines it completes; the rest is carried, up to
// MaxLine (a longer line is no marker).
func (s *stream) read(f *os.File, from, to int64) ([]byte, error) {
	data, err := readRange(f, from, to)
	if err != nil {
		return nil, err
	}
	s.offset = from + int64(len(data))
	data = append(s.carry, stripNUL(data)...)
	end := bytes.LastIndexByte(data, '\n') + 1
	s.carry = append([]byte(nil), data[end:]...)
	if len(s.carry) > MaxLine {
		s.carry = s.carry[len(s.carry)-MaxLine:]
	}
	return data[:end], nil
}
