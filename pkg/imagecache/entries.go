package imagecache

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gofrs/flock"
)

// imageRemovingPrefix starts the name of the directory an entry is moved into to be removed.
// It is never an entry's name, so a crash while removing leaves nothing Entries lists (and
// CollectDebris removes it).
const imageRemovingPrefix = ".removing-"

// crashWindow is called where a crash leaves debris that only CollectDebris removes, naming the
// place; the crash tests make a child process stop there to be killed. It does nothing otherwise.
var crashWindow = func(string) {}

// Entry is a cached image as Entries lists it, for a caller that bounds the cache's size.
type Entry struct {
	// Path is the entry's data file: the Image.Path that Fetch and Lookup hand out for it.
	Path string
	// Size is what the data file takes on disk (its allocated blocks), which is what a
	// bound on the cache's disk use must count: a sparse raw image takes less than its length.
	Size int64
	// LastUse is when the entry was last handed out by Fetch or Lookup (or written): the
	// entry directory's mtime, which every use sets.
	LastUse time.Time
}

// Entries lists the complete entries of the cache (those with data), in no particular order.
// Anything else in the cache directory (entries being downloaded, odd files, symlinks) is not
// listed, so Remove, which takes only listed entries, never touches it.
func (c *Cache) Entries() ([]Entry, error) {
	dir, des, err := c.list()
	if err != nil {
		return nil, err
	}
	var entries []Entry
	for _, de := range des {
		if !de.IsDir() || !isEntryName(de.Name()) {
			continue
		}
		entry := filepath.Join(dir, de.Name())
		dirInfo, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		data, err := os.Lstat(filepath.Join(entry, imageDataFile))
		if err != nil || !data.Mode().IsRegular() {
			continue // being downloaded, or debris the next Fetch cleans
		}
		entries = append(entries, Entry{Path: filepath.Join(entry, imageDataFile), Size: diskUsage(data), LastUse: dirInfo.ModTime()})
	}
	return entries, nil
}

// list reads the cache directory (absolute): nothing, with no error, when it does not exist yet.
func (c *Cache) list() (dir string, des []os.DirEntry, err error) {
	dir, err = filepath.Abs(c.Dir)
	if err != nil {
		return "", nil, fmt.Errorf("listing image cache %s: %w", c.Dir, err)
	}
	des, err = os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return dir, nil, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("listing image cache %s: %w", dir, err)
	}
	return dir, des, nil
}

// Remove removes a listed entry, under the entry's lock, unless it is busy or was used since it
// was listed: removed is false, with no error, when a Fetch holds the entry (downloading or
// checking it), when a Fetch or Lookup handed it out after Entries listed it (its LastUse
// changed), or when it is already gone. A Fetch or Lookup running meanwhile sees the entry
// whole or absent (the data file goes first, and only a complete entry has one), and an absent
// entry is fetched again.
//
// Remove cannot know whether a path it handed out earlier is still being read or used as a
// backing file: that is the caller's to keep track of (the simulator pins such paths and scans
// its VM disks). e.Path must be a data file of this cache; anything else is refused, so a
// forged Entry cannot make Remove delete another file.
func (c *Cache) Remove(e Entry) (removed bool, err error) {
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return false, fmt.Errorf("image cache %s: %w", c.Dir, err)
	}
	entry := filepath.Dir(e.Path)
	if e.Path != filepath.Join(dir, filepath.Base(entry), imageDataFile) || !isEntryName(filepath.Base(entry)) {
		return false, fmt.Errorf("removing %s: not an image of the cache %s", e.Path, dir)
	}
	// Never a symlink: the lock file would be opened (and made) wherever it points.
	if fi, err := os.Lstat(entry); err != nil || !fi.IsDir() {
		return false, nil
	}
	lock, err := tryLockExistingEntry(entry)
	if err != nil || lock == nil {
		return false, err
	}
	defer lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
	fi, err := os.Lstat(entry)
	if err != nil {
		return false, fmt.Errorf("removing cached image %s: %w", e.Path, err)
	}
	// A lock file created just now (by us, for an entry that had none) changes the mtime too:
	// such an entry is kept this time and removed on the next try.
	if !fi.IsDir() || !fi.ModTime().Equal(e.LastUse) {
		return false, nil
	}
	// The data first: from this moment a lock-free Lookup sees the entry as absent.
	if err := os.Remove(e.Path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("removing cached image %s: %w", e.Path, err)
	}
	crashWindow("remove:data-removed")
	// Then the rest, lock file included, while we still hold it: a Fetch waiting for this lock
	// finds its lock file gone and starts over in a fresh entry (see lockEntry).
	if err := discardEntry(dir, entry); err != nil {
		return true, fmt.Errorf("removing image cache entry %s (its image is removed; the next Fetch cleans the rest): %w", entry, err)
	}
	syncImageDir(dir)
	return true, nil
}

// discardEntry removes the directory entry of the cache dir by moving it out of the way first,
// then removing it: a locker that polls the entry's lock file reopens it by name on every try,
// and would otherwise make a new one inside a directory being removed. The caller holds the
// entry's lock.
func discardEntry(dir, entry string) error {
	trash, err := os.MkdirTemp(dir, imageRemovingPrefix+"*")
	if err != nil {
		return err
	}
	if err := os.Rename(entry, filepath.Join(trash, filepath.Base(entry))); err != nil {
		os.Remove(trash)
		return err
	}
	crashWindow("discard:moved")
	return os.RemoveAll(trash)
}

// CollectDebris removes what interrupted work left in the cache directory, and nothing else:
// entry directories without data (a download cut short by a crash, or a lock file alone, made by
// a Fetch that gave up waiting while a failed fetch removed the entry) and the .removing-*
// directories of a Remove or failed fetch that a crash cut short. Nothing whose lock a live
// process holds is touched: that process is still at work there. Complete entries, symlinks and
// anything else stay. It returns the directories it removed. Meant for startup, when nothing
// should be in flight, it is safe at any time.
func (c *Cache) CollectDebris() (removed []string, err error) {
	dir, des, err := c.list()
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, de := range des {
		if !de.IsDir() { // ReadDir does not follow symlinks: a link to a directory is no directory
			continue
		}
		path := filepath.Join(dir, de.Name())
		var gone bool
		var err error
		switch {
		case isEntryName(de.Name()):
			gone, err = collectUnfinishedEntry(dir, path)
		case strings.HasPrefix(de.Name(), imageRemovingPrefix):
			gone, err = collectTrash(path)
		}
		if err != nil {
			errs = append(errs, err)
		}
		if gone {
			removed = append(removed, path)
		}
	}
	if len(removed) > 0 {
		syncImageDir(dir)
	}
	return removed, errors.Join(errs...)
}

// collectUnfinishedEntry removes the entry directory of dir if it has no data and nobody holds
// its lock. It takes the lock and discards the entry as Remove does, so that a Fetch waiting for
// the lock meanwhile starts over in a fresh entry.
func collectUnfinishedEntry(dir, entry string) (bool, error) {
	hasData := func() bool {
		_, err := os.Lstat(filepath.Join(entry, imageDataFile))
		return !errors.Is(err, fs.ErrNotExist) // unreadable or odd: the next Fetch decides
	}
	if hasData() {
		return false, nil
	}
	lock, err := tryLockExistingEntry(entry)
	if err != nil || lock == nil {
		return false, err
	}
	defer lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
	// A download may have finished before we got the lock.
	if hasData() {
		return false, nil
	}
	if err := discardEntry(dir, entry); err != nil {
		return false, fmt.Errorf("removing unfinished image cache entry %s: %w", entry, err)
	}
	return true, nil
}

// collectTrash removes a directory an entry was moved into to be removed, unless the remover
// still holds the entry's lock (it is removing it now). Lock files are opened without O_CREATE:
// nothing is made in a directory being removed.
func collectTrash(trash string) (bool, error) {
	des, err := os.ReadDir(trash)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", trash, err)
	}
	var locks []*flock.Flock
	defer func() {
		for _, l := range locks {
			l.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
		}
	}()
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		l := flock.New(filepath.Join(trash, de.Name(), imageLockFile), flock.SetFlag(os.O_RDONLY))
		ok, err := l.TryLock()
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // no lock file left: nobody can hold it
		case err != nil:
			return false, fmt.Errorf("locking %s: %w", filepath.Join(trash, de.Name()), err)
		case !ok:
			return false, nil // its remover is alive
		}
		locks = append(locks, l)
	}
	if err := os.RemoveAll(trash); err != nil {
		return false, fmt.Errorf("removing %s: %w", trash, err)
	}
	return true, nil
}

// tryLockExistingEntry takes the lock of an existing entry without waiting: nil, with no error,
// when the entry is gone or someone holds its lock. Unlike lockEntry it never creates the entry.
func tryLockExistingEntry(entry string) (*flock.Flock, error) {
	path := filepath.Join(entry, imageLockFile)
	lock := flock.New(path, flock.SetPermissions(0o600))
	ok, err := lock.TryLock()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // the entry directory is gone
	}
	if err != nil {
		return nil, fmt.Errorf("locking image cache entry %s: %w", entry, err)
	}
	if !ok {
		return nil, nil
	}
	held, err := lock.Stat()
	if err != nil {
		lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
		return nil, fmt.Errorf("locking image cache entry %s: %w", entry, err)
	}
	if now, err := os.Stat(path); err != nil || !os.SameFile(held, now) {
		lock.Unlock()   //nolint:errcheck // closing the fd releases the lock anyway
		return nil, nil // removed (and perhaps made again) since we opened it
	}
	return lock, nil
}

// touchEntry records a use of an entry: its directory's mtime, a single syscall, so that a
// cache hit stays cheap. Best effort: an entry removed meanwhile has nothing to record.
func touchEntry(entry string) {
	_ = os.Chtimes(entry, time.Time{}, time.Now())
}

// isEntryName reports whether name is an entry directory's name: sha256 hex of a URL.
func isEntryName(name string) bool {
	b, err := hex.DecodeString(name)
	return err == nil && len(b) == 32 && name == hex.EncodeToString(b)
}

// diskUsage is what a file takes on disk: its allocated blocks, or its length where the
// platform does not say.
func diskUsage(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
