package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// backingTestHeader is a qcow2 v3 header of 104 bytes naming name at offset (length length),
// followed by name itself when it fits, padded to size bytes.
func backingTestHeader(version uint32, offset uint64, length uint32, name string, size int) []byte {
	b := make([]byte, max(size, 104))
	copy(b, qcow2Magic)
	binary.BigEndian.PutUint32(b[qcow2OffVersion:], version)
	binary.BigEndian.PutUint64(b[qcow2OffBackingFileOffset:], offset)
	binary.BigEndian.PutUint32(b[qcow2OffBackingFileSize:], length)
	if offset != 0 && offset < uint64(len(b)) {
		copy(b[offset:], name)
	}
	return b[:size]
}

// TestBackingFile reads the backing file of images made by qemu-img, and refuses hostile
// headers with an error: no panic, no large allocation, no read past what QEMU would read.
func TestBackingFile(t *testing.T) {
	diskTestNeedQemuImg(t)
	dir := t.TempDir()
	base := diskTestBase(t, dir, "qcow2", 4*diskTestMiB)
	rawBase := diskTestBase(t, dir, "raw", 4*diskTestMiB)
	odd := filepath.Join(dir, "a base with spaces, ünïcode.qcow2")
	diskTestRun(t, "qemu-img", "create", "-q", "-f", "qcow2", odd, "1M")
	overlay := func(name, backing, backingFormat string, extra ...string) string {
		path := filepath.Join(dir, name)
		args := append([]string{"create", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat}, extra...)
		diskTestRun(t, "qemu-img", append(args, path)...)
		return path
	}
	file := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	link := filepath.Join(dir, "link.qcow2")
	if err := os.Symlink(overlay("target.qcow2", base, "qcow2"), link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.qcow2")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, path string
		want       string // the backing file, when no error is expected
		err        string // in the error
		notQCOW2   bool   // the error wraps ErrNotQCOW2
	}{
		{name: "no backing file", path: base, want: ""},
		{name: "absolute backing file", path: overlay("abs.qcow2", base, "qcow2"), want: base},
		{name: "raw backing file", path: overlay("raw.qcow2", rawBase, "raw"), want: rawBase},
		{name: "relative backing file", path: overlay("rel.qcow2", "base.qcow2", "qcow2"), want: "base.qcow2"},
		{name: "qcow2 v2", path: overlay("v2.qcow2", base, "qcow2", "-o", "compat=0.10"), want: base},
		{name: "odd characters", path: overlay("odd.qcow2", odd, "qcow2"), want: odd},
		{name: "offset 0 with a size", path: file("zero-offset", backingTestHeader(3, 0, 100, "", 512)), want: ""},
		{name: "name of 1023 bytes", path: file("long-ok", backingTestHeader(3, 512, 1023, strings.Repeat("a", 1023), 2048)),
			want: strings.Repeat("a", 1023)},

		{name: "huge name", path: file("huge", backingTestHeader(3, 512, 0xffffffff, "/x", 1024)), err: "4294967295 bytes"},
		{name: "name of 1024 bytes", path: file("long", backingTestHeader(3, 512, 1024, strings.Repeat("a", 1024), 4096)), err: "at most 1023"},
		{name: "offset past EOF", path: file("past", backingTestHeader(3, 1<<62, 10, "", 1024)), err: "outside"},
		{name: "name across EOF", path: file("across", backingTestHeader(3, 1000, 100, "/etc/passwd", 1024)), err: "outside"},
		{name: "offset overflowing", path: file("overflow", backingTestHeader(3, ^uint64(0)-4, 10, "", 1024)), err: "outside"},
		{name: "name inside the header", path: file("inside", backingTestHeader(3, 8, 12, "", 512)), err: "outside"},
		{name: "empty name", path: file("empty-name", backingTestHeader(3, 512, 0, "", 1024)), err: "empty name"},
		{name: "NUL in the name", path: file("nul", backingTestHeader(3, 512, 12, "/etc\x00passwd", 1024)), err: "NUL"},
		{name: "qcow version 1", path: file("v1", backingTestHeader(1, 512, 5, "/base", 1024)), err: "qcow version 1"},
		{name: "truncated header", path: file("truncated", []byte(qcow2Magic+"\x00\x00\x00\x03")), err: "truncated"},
		{name: "raw disk", path: rawBase, notQCOW2: true, err: "not a qcow2"},
		{name: "text file", path: file("text", []byte("hello, I am not an image\n")), notQCOW2: true, err: "not a qcow2"},
		{name: "empty file", path: file("empty", nil), notQCOW2: true, err: "not a qcow2"},
		{name: "symlink", path: link, err: "too many levels of symbolic links"},
		{name: "FIFO", path: fifo, err: "not a regular file"},
		{name: "directory", path: dir, err: "not a regular file"},
		{name: "missing", path: filepath.Join(dir, "missing"), err: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := BackingFile(tc.path)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Errorf("BackingFile = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("BackingFile = %q, %v; want an error naming the file and mentioning %q", got, err, tc.err)
			}
			if errors.Is(err, ErrNotQCOW2) != tc.notQCOW2 {
				t.Errorf("errors.Is(%v, ErrNotQCOW2) = %v, want %v", err, !tc.notQCOW2, tc.notQCOW2)
			}
		})
	}
}

// FuzzBackingFile: whatever the header says, reading it returns or errs, without panicking.
func FuzzBackingFile(f *testing.F) {
	f.Add(backingTestHeader(3, 512, 8, "/a/b/c/d", 1024))
	f.Add(backingTestHeader(2, 1<<40, 0xffffffff, "", 200))
	f.Add([]byte(qcow2Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := readBackingFile(bytes.NewReader(b), int64(len(b)))
		if err == nil && len(name) > qcow2MaxBackingName {
			t.Fatalf("name of %d bytes accepted", len(name))
		}
	})
}
