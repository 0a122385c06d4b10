// Package installeriso makes the per-Operation installer ISO from the base ISO that
// hack/installer-iso/build.sh builds, without re-running grub-mkrescue and without copying it.
//
// The base ISO reserves a config slot: a file of SlotBytes zeros at SlotPath, which GRUB loads as a
// second initrd after the agent's own (`initrd /boot/initrd.gz /stargate/config.img`). The kernel
// unpacks both into one root file system and skips zero padding between and after cpio archives, so
// a slot of zeros is an empty initrd and a slot that begins with a cpio archive adds its files.
// A Medium is the base ISO with the slot's bytes replaced by a cpio archive holding the Spec at
// installspec.ConfigPath: an io.ReaderAt the controller serves directly (http.ServeContent gives
// Range requests for free), costing one small buffer per Operation. ISO 9660 keeps no checksum of
// file contents, and both GRUB (BIOS and UEFI) read the file through the ISO's directory, so the
// rest of the ISO — its El Torito boot images and hybrid MBR/GPT included — stays valid as built.
package installeriso

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cavaliergopher/cpio"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"stargate.io/stargate/pkg/installspec"
)

// SlotPath is the config slot's path in the base ISO.
const SlotPath = "/stargate/config.img"

// SlotBytes is the config slot's size: a Spec of installspec.MaxDocumentBytes and the cpio
// structure around it fit.
const SlotBytes = 2 << 20

// Base is an opened base installer ISO.
type Base struct {
	f          *os.File
	size       int64
	slotOffset int64
}

// OpenBase opens a base ISO and finds its config slot. It refuses an ISO that is not the
// installer's (volume ID), lacks the slot, or whose slot is not blank.
func OpenBase(path string) (*Base, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	b, err := openBase(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("base installer ISO %s: %w", path, err)
	}
	return b, nil
}

func openBase(f *os.File) (*Base, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	fs, err := iso9660.Read(file.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		return nil, fmt.Errorf("reading ISO 9660: %w", err)
	}
	if label := strings.TrimRight(fs.Label(), " \x00"); label != installspec.ISOVolumeID {
		return nil, fmt.Errorf("volume ID %q is not %q: not an installer ISO", label, installspec.ISOVolumeID)
	}
	entry, err := fs.OpenFile(SlotPath, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("no config slot %s: %w", SlotPath, err)
	}
	slot, ok := entry.(*iso9660.File)
	if !ok {
		return nil, fmt.Errorf("config slot %s: unexpected file type %T", SlotPath, entry)
	}
	info, err := slot.Stat()
	if err != nil {
		return nil, fmt.Errorf("config slot %s: %w", SlotPath, err)
	}
	if info.Size() != SlotBytes {
		return nil, fmt.Errorf("config slot %s has %d bytes, want %d (built by another version of build.sh?)", SlotPath, info.Size(), SlotBytes)
	}
	offset := int64(slot.Location()) * 2048
	if offset <= 0 || offset+SlotBytes > st.Size() {
		return nil, fmt.Errorf("config slot %s lies outside the ISO (byte %d)", SlotPath, offset)
	}
	content := make([]byte, SlotBytes)
	if _, err := f.ReadAt(content, offset); err != nil {
		return nil, fmt.Errorf("reading config slot: %w", err)
	}
	if !bytes.Equal(content, make([]byte, SlotBytes)) {
		return nil, fmt.Errorf("config slot %s is not blank: a per-Operation ISO, not a base ISO", SlotPath)
	}
	return &Base{f: f, size: st.Size(), slotOffset: offset}, nil
}

// Close closes the base ISO; Media made from it stop working.
func (b *Base) Close() error { return b.f.Close() }

// Size is the size of the base ISO and of every Medium made from it.
func (b *Base) Size() int64 { return b.size }

// Medium is a per-Operation installer ISO: the base ISO with the Spec in its config slot. It holds
// the Spec's callback token: serve it only to the BMC of the Operation's machine, only while the
// Operation runs.
type Medium struct {
	base *Base
	slot []byte // SlotBytes long
}

// NewMedium validates spec and returns the base ISO carrying it.
func (b *Base) NewMedium(spec *installspec.Spec) (*Medium, error) {
	doc, err := spec.Encode()
	if err != nil {
		return nil, err
	}
	archive, err := ConfigArchive(doc)
	if err != nil {
		return nil, err
	}
	if len(archive) > SlotBytes {
		return nil, fmt.Errorf("the install spec's archive has %d bytes, more than the %d of the ISO's config slot", len(archive), SlotBytes)
	}
	slot := make([]byte, SlotBytes)
	copy(slot, archive)
	return &Medium{base: b, slot: slot}, nil
}

// ConfigArchive returns the cpio (newc) archive that puts doc at installspec.ConfigPath, readable
// by root only.
func ConfigArchive(doc []byte) ([]byte, error) {
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	dir := strings.TrimPrefix(filepath.Dir(installspec.ConfigPath), "/")
	var entries []*cpio.Header
	// Parents first; the kernel sets the mode of a directory that already exists, so /etc keeps 0755.
	parts := strings.Split(dir, "/")
	for i := range parts {
		mode := cpio.FileMode(0o755)
		if i == len(parts)-1 {
			mode = 0o700
		}
		entries = append(entries, &cpio.Header{Name: strings.Join(parts[:i+1], "/"), Mode: cpio.TypeDir | mode, Links: 2})
	}
	entries = append(entries, &cpio.Header{
		Name: strings.TrimPrefix(installspec.ConfigPath, "/"), Mode: cpio.TypeReg | 0o600, Links: 1, Size: int64(len(doc)),
	})
	for i, h := range entries {
		h.Inode = int64(i + 1)
		if err := w.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("writing the config archive: %w", err)
		}
		if h.Mode.IsRegular() {
			if _, err := w.Write(doc); err != nil {
				return nil, fmt.Errorf("writing the config archive: %w", err)
			}
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("closing the config archive: %w", err)
	}
	return buf.Bytes(), nil
}

// Size is the Medium's size in bytes.
func (m *Medium) Size() int64 { return m.base.size }

// ReadAt reads the Medium: the base ISO's bytes, with the config slot's replaced.
func (m *Medium) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= m.base.size {
		return 0, io.EOF
	}
	want := len(p)
	if rest := m.base.size - off; int64(want) > rest {
		p = p[:rest]
	}
	n, err := m.base.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, err
	}
	// Overlay the slot where [off, off+n) meets it.
	start := max(off, m.base.slotOffset)
	end := min(off+int64(n), m.base.slotOffset+SlotBytes)
	if start < end {
		copy(p[start-off:end-off], m.slot[start-m.base.slotOffset:end-m.base.slotOffset])
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// WriteFile writes the Medium to path (mode 0600: it holds the callback token), through a
// temporary file renamed into place.
func (m *Medium) WriteFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".installer-*.iso")
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := io.Copy(tmp, io.NewSectionReader(m, 0, m.Size())); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("installing %s: %w", path, err)
	}
	return nil
}
