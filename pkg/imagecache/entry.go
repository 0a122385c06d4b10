package imagecache

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/gofrs/flock"
)

// lockEntry creates the entry directory and takes its lock. A locker that got
// the lock of an entry removed meanwhile (it opened the lock file before the
// remover unlinked it) sees that the lock file in place is another and tries
// again, so an entry is never written by two processes.
func lockEntry(ctx context.Context, entry string) (*flock.Flock, error) {
	for {
		if err := os.MkdirAll(entry, 0o700); err != nil {
			return nil, imageWriteError(entry, "entry directory", err)
		}
		path := filepath.Join(entry, imageLockFile)
		lock := flock.New(path, flock.SetPermissions(0o600))
		if _, err := lock.TryLockContext(ctx, imageLockRetry); err != nil {
			if errors.Is(err, fs.ErrNotExist) && ctx.Err() == nil {
				continue // removed between MkdirAll and open by a failed fetch
			}
			return nil, fmt.Errorf("locking image cache entry %s: %w", entry, err)
		}
		held, err := lock.Stat()
		if err != nil {
			lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
			return nil, fmt.Errorf("locking image cache entry %s: %w", entry, err)
		}
		if now, err := os.Stat(path); err == nil && os.SameFile(held, now) {
			return lock, nil
		}
		lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
	}
}

// checkEntry decides, under the entry's lock, whether its data may be used:
// re-hashed when it no longer matches its stat record (or has none, cached by
// an older version) and compared with the recorded digest, and run through
// Verify. Missing digests are computed (sha512 when first asked for). Errors
// are those that keep it from deciding; false means "remove and refetch".
func (c *Cache) checkEntry(ctx context.Context, entry string, want imageChecksum) (bool, error) {
	data := filepath.Join(entry, imageDataFile)
	fi, err := os.Stat(data)
	if err != nil {
		return false, fmt.Errorf("reading cached image: %w", err)
	}
	recorded := readStatRecord(entry)
	need256 := recorded != statRecord(fi) || !imageFileExists(filepath.Join(entry, imageDigestFile))
	need512 := want.algo == "sha512" && (need256 || !imageFileExists(filepath.Join(entry, imageSHA512File)))
	if need256 || need512 {
		d256, d512, err := hashFile(ctx, data, need512)
		if err != nil {
			return false, err
		}
		// A digest on record that the data no longer matches: the data was
		// damaged (or replaced) after caching.
		if old, err := readImageDigest(entry, imageDigestFile); err == nil && old != d256 {
			return false, nil
		}
		if old, err := readImageDigest(entry, imageSHA512File); err == nil && need512 && old != d512 {
			return false, nil
		}
		if err := writeImageFileAtomic(entry, imageDigestFile, d256+"\n"); err != nil {
			return false, err
		}
		if need512 {
			if err := writeImageFileAtomic(entry, imageSHA512File, d512+"\n"); err != nil {
				return false, err
			}
		}
		if err := writeImageFileAtomic(entry, imageStatFile, statRecord(fi)+"\n"); err != nil {
			return false, err
		}
	}
	if c.Verify != nil {
		if err := c.Verify(ctx, data); err != nil {
			if ctx.Err() != nil {
				return false, fmt.Errorf("checking cached image: %w", context.Cause(ctx))
			}
			return false, nil
		}
	}
	return true, nil
}

// hashFile returns the sha256 digest of path, and its sha512 digest with want512.
func hashFile(ctx context.Context, path string, want512 bool) (string, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("reading cached image: %w", err)
	}
	defer f.Close()
	h256, h512 := sha256.New(), sha512.New()
	w := io.Writer(h256)
	if want512 {
		w = io.MultiWriter(h256, h512)
	}
	buf := make([]byte, imageCopyBuffer)
	for {
		if err := ctx.Err(); err != nil {
			return "", "", fmt.Errorf("hashing cached image: %w", context.Cause(ctx))
		}
		n, err := f.Read(buf)
		_, _ = w.Write(buf[:n]) // hash.Hash.Write never fails
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", "", fmt.Errorf("hashing cached image %s: %w", path, err)
		}
	}
	d512 := ""
	if want512 {
		d512 = "sha512:" + hex.EncodeToString(h512.Sum(nil))
	}
	return "sha256:" + hex.EncodeToString(h256.Sum(nil)), d512, nil
}

// lookupImage returns the complete entry, ok=false when the entry is absent,
// lacks a digest or stat file, or its data no longer matches its stat record
// (all of which the slow path repairs or refetches), or an error when the
// cached content does not match want.
func lookupImage(entry, rawURL string, want imageChecksum) (Image, bool, error) {
	data := filepath.Join(entry, imageDataFile)
	fi, err := os.Stat(data)
	if err != nil || !fi.Mode().IsRegular() {
		return Image{}, false, nil
	}
	if readStatRecord(entry) != statRecord(fi) {
		return Image{}, false, nil
	}
	digest, err := readImageDigest(entry, imageDigestFile)
	if err != nil {
		return Image{}, false, nil
	}
	if want.algo != "" {
		got := digest
		if want.algo == "sha512" {
			if got, err = readImageDigest(entry, imageSHA512File); err != nil {
				return Image{}, false, nil
			}
		}
		if got != want.String() {
			return Image{}, false, checksumError(rawURL, want.String(), got, "cached at "+data)
		}
	}
	return Image{Path: data, Digest: digest, Size: fi.Size(), CacheHit: true}, true, nil
}

// statRecord is what imageStatFile holds for a data file.
func statRecord(fi os.FileInfo) string {
	return fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
}

func readStatRecord(entry string) string {
	s, _ := readImageDigest(entry, imageStatFile)
	return s
}

// ensureDir creates the cache directory, and makes it (and an existing one) 0700.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return imageWriteError(filepath.Join(dir, "x"), "cache directory", err)
	}
	return chmodIf(dir, 0o700)
}

// fixEntryModes makes an entry 0700 and its files 0600, for entries cached by
// versions that made them world-readable.
func fixEntryModes(entry string) error {
	if err := chmodIf(entry, 0o700); err != nil {
		return err
	}
	des, err := os.ReadDir(entry)
	if err != nil {
		return fmt.Errorf("reading image cache entry %s: %w", entry, err)
	}
	for _, de := range des {
		if de.Type().IsRegular() {
			if err := chmodIf(filepath.Join(entry, de.Name()), 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// chmodIf sets path's permissions to mode unless they are already.
func chmodIf(path string, mode fs.FileMode) error {
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile: nothing to protect
		}
		return fmt.Errorf("securing %s: %w", path, err)
	}
	if fi.Mode().Perm() == mode || fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	if err := os.Chmod(path, mode); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("securing %s: %w", path, err)
	}
	return nil
}

// cleanImageEntry removes temp files and metadata of an entry without data.
// The caller holds the entry lock, so no other process is writing there.
func cleanImageEntry(entry string) error {
	des, err := os.ReadDir(entry)
	if err != nil {
		return fmt.Errorf("reading image cache entry %s: %w", entry, err)
	}
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, imageTempPrefix) || name == imageDigestFile || name == imageSHA512File || name == imageStatFile {
			if err := os.RemoveAll(filepath.Join(entry, name)); err != nil {
				return fmt.Errorf("removing stale %s: %w", filepath.Join(entry, name), err)
			}
		}
	}
	return nil
}

// writeImageFileAtomic writes a small metadata file by temp file and rename,
// so readers see the old content or the new, never a torn one.
func writeImageFileAtomic(entry, name, text string) error {
	tmp, err := os.CreateTemp(entry, imageTempPrefix+name+"-*")
	if err != nil {
		return imageWriteError(entry, name, err)
	}
	_, err = tmp.WriteString(text)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(entry, name))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return imageWriteError(entry, name, err)
	}
	return nil
}

func readImageDigest(entry, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(entry, name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func imageFileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// syncImageDir makes a rename in dir durable. Best effort: the entry is
// consistent without it, only possibly absent after a power cut.
func syncImageDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// imageWriteError names a full disk plainly: "out of space" is what an
// operator must act on, buried ENOSPC text is easy to miss.
func imageWriteError(entry, what string, err error) error {
	dir := filepath.Dir(entry)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("image cache %s is out of space writing %s: %w", dir, what, err)
	}
	return fmt.Errorf("writing %s in image cache %s: %w", what, dir, err)
}
