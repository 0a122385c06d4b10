package simulator

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// imagePins are the image files in use that no VM disk shows yet: looked up for a repave whose
// overlay is not created yet, or the base of a bake. prune never removes them.
type imagePins struct {
	// mu is held by prune from listing the images until it is done removing, so that a path
	// cannot be pinned between prune's check and its removal.
	mu    sync.Mutex
	count map[string]int // by absolute, cleaned path
}

// pinImage keeps prune from removing the image file at path (a cached image's data or a golden
// image) until unpin is called; pins of one path add up. Pin before the use that makes the
// image needed, then look it up again, since a prune may have removed it just before the pin:
// pin → Lookup → create the overlay → unpin; or pin for a bake's whole duration (its base, and
// the golden image it writes). Once a VM disk overlays the image, prune sees that by itself.
// pinImage waits while a prune is removing images; unpin is idempotent.
func (p *Provider) pinImage(path string) (unpin func()) {
	key := pinKey(path)
	p.pins.mu.Lock()
	if p.pins.count == nil {
		p.pins.count = map[string]int{}
	}
	p.pins.count[key]++
	p.pins.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			p.pins.mu.Lock()
			defer p.pins.mu.Unlock()
			if p.pins.count[key]--; p.pins.count[key] <= 0 {
				delete(p.pins.count, key)
			}
		})
	}
}

func pinKey(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return filepath.Clean(path)
}

// cachedImage is an image prune may remove: a cached OS image or a golden image.
type cachedImage struct {
	path    string
	size    int64 // bytes on disk
	lastUse time.Time
	info    fs.FileInfo       // as listed, to recognise it again
	entry   *imagecache.Entry // a cached OS image; nil for a golden image
}

// prune keeps the cached OS images and golden images together under Config.ImageCacheSize:
// while they are over it, it removes the least recently used first, but never one that a VM or
// bake disk overlays or that is pinned (pinImage); when what is left in use is still over the
// limit, it says so once. It removes only paths it listed itself from the image cache and the
// golden directory, whatever VM disks name as their backing files, and nothing at all when it
// cannot read a disk's backing file. keep are further paths to keep, as if pinned. It runs at
// startup and after an image enters the cache; errors are logged, never returned, because no
// caller could do anything but log them.
func (p *Provider) prune(keep ...string) {
	limit := p.cfg.ImageCacheSize
	if limit <= 0 {
		return
	}
	kept := map[string]bool{}
	for _, path := range keep {
		kept[pinKey(path)] = true
	}
	log := p.cfg.Log.WithValues("limit", formatBytes(limit))
	p.pins.mu.Lock() // no pin while deciding and removing; prune takes no other Provider lock
	defer p.pins.mu.Unlock()
	images, err := p.cachedImages()
	if err != nil {
		log.Error(err, "image cache: not pruning")
		return
	}
	// Bakes in progress (their disks, a golden image being flattened) count, and cannot be removed.
	baking := p.bakesInProgress()
	total := baking
	for _, im := range images {
		total += im.size
	}
	if total <= limit {
		return
	}
	used, err := p.imagesInUse()
	if err != nil {
		log.Error(err, "image cache over limit, not pruning: cannot tell which images the VM disks use", "total", formatBytes(total))
		return
	}
	slices.SortFunc(images, func(a, b cachedImage) int {
		return cmp.Or(a.lastUse.Compare(b.lastUse), strings.Compare(a.path, b.path))
	})
	inUse := baking
	for _, im := range images {
		if p.pins.count[im.path] > 0 || kept[im.path] || used.has(im) {
			inUse += im.size
			continue
		}
		if total <= limit {
			continue
		}
		removed, err := p.removeImage(im)
		switch {
		case err != nil:
			log.Error(err, "image cache: removing an image failed", "path", im.path)
		case !removed: // a Fetch holds it, or it was used since listed: in use after all
			inUse += im.size
		}
		if removed {
			total -= im.size
			log.Info("image cache: removed the least recently used image", "path", im.path, "size", formatBytes(im.size),
				"lastUse", im.lastUse.Format(time.RFC3339))
		}
	}
	if total > limit {
		log.Info(fmt.Sprintf("image cache over limit, %d bytes in use", inUse), "inUse", formatBytes(inUse), "total", formatBytes(total))
	}
}

// bakesInProgress is the disk space of the bakes running: their disks and the golden images being
// flattened (qemu.Flatten's hidden temp files).
func (p *Provider) bakesInProgress() int64 {
	disks, _ := filepath.Glob(filepath.Join(p.layout.BakesDir(), "*", filenames.DiskFile))
	temps, _ := filepath.Glob(filepath.Join(p.layout.GoldenDir(), ".*.tmp-*"))
	var n int64
	for _, f := range append(disks, temps...) {
		if fi, err := os.Lstat(f); err == nil && fi.Mode().IsRegular() {
			n += allocated(fi)
		}
	}
	return n
}

// pruneNamespace keeps namespace's golden images under Config.GoldenImagesPerNamespace: over it,
// the least recently used that no VM or bake disk overlays and nothing pins are removed. A repave
// that needs one of them later installs the stock way and bakes it again. It runs after a bake;
// errors are logged.
func (p *Provider) pruneNamespace(namespace string) {
	limit := p.cfg.GoldenImagesPerNamespace
	if limit <= 0 {
		return
	}
	log := p.cfg.Log.WithValues("namespace", namespace, "limit", limit)
	p.pins.mu.Lock()
	defer p.pins.mu.Unlock()
	all, err := p.cachedImages()
	if err != nil {
		log.Error(err, "golden images: not pruning")
		return
	}
	var images []cachedImage
	for _, im := range all {
		if im.entry == nil && goldenNamespace(im.path) == namespace {
			images = append(images, im)
		}
	}
	if len(images) <= limit {
		return
	}
	used, err := p.imagesInUse()
	if err != nil {
		log.Error(err, "golden images over the namespace's limit, not pruning: cannot tell which images the VM disks use")
		return
	}
	slices.SortFunc(images, func(a, b cachedImage) int {
		return cmp.Or(a.lastUse.Compare(b.lastUse), strings.Compare(a.path, b.path))
	})
	count := len(images)
	for _, im := range images {
		if count <= limit {
			return
		}
		if p.pins.count[im.path] > 0 || used.has(im) {
			continue
		}
		removed, err := p.removeImage(im)
		if err != nil {
			log.Error(err, "golden images: removing an image failed", "path", im.path)
		}
		if removed {
			count--
			log.Info("golden images: removed the namespace's least recently used golden image", "path", im.path,
				"lastUse", im.lastUse.Format(time.RFC3339))
		}
	}
	if count > limit {
		log.Info(fmt.Sprintf("golden images over the namespace's limit: %d in use", count))
	}
}

// cachedImages lists the cached OS images and the golden images (regular *.qcow2 files directly
// in the golden directory; symlinks, directories and hidden temp files are not images).
func (p *Provider) cachedImages() ([]cachedImage, error) {
	entries, err := p.images.Entries()
	if err != nil {
		return nil, err
	}
	var images []cachedImage
	for _, e := range entries {
		fi, err := os.Lstat(e.Path)
		if err != nil {
			continue // removed meanwhile
		}
		images = append(images, cachedImage{path: e.Path, size: e.Size, lastUse: e.LastUse, info: fi, entry: &e})
	}
	golden, err := filepath.Abs(p.layout.GoldenDir())
	if err != nil {
		return nil, fmt.Errorf("golden images: %w", err)
	}
	des, err := os.ReadDir(golden)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listing golden images: %w", err)
	}
	for _, de := range des {
		name := de.Name()
		// Hidden files are images being written (temp+rename: ".tmp-*", qemu.Flatten's ".<name>.tmp-*").
		if !de.Type().IsRegular() || !strings.HasSuffix(name, ".qcow2") || strings.HasPrefix(name, ".") {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		images = append(images, cachedImage{path: filepath.Join(golden, name), size: allocated(fi), lastUse: fi.ModTime(), info: fi})
	}
	return images, nil
}

// removeImage removes a listed image unless it changed since it was listed (used again, or
// replaced): removed is false then.
func (p *Provider) removeImage(im cachedImage) (removed bool, err error) {
	if im.entry != nil {
		return p.images.Remove(*im.entry)
	}
	fi, err := os.Lstat(im.path)
	if err != nil || !fi.Mode().IsRegular() || !os.SameFile(fi, im.info) || !fi.ModTime().Equal(im.lastUse) {
		return false, nil
	}
	if err := os.Remove(im.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("removing golden image: %w", err)
	}
	return true, nil
}

// usedImages are the backing files of the VM and bake disks, by path and by file identity (a
// disk may name its base through a symlinked work directory).
type usedImages struct {
	paths map[string]bool
	files map[fileID]bool
}

type fileID struct{ dev, ino uint64 }

func idOf(fi fs.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, true
}

func (u usedImages) has(im cachedImage) bool {
	id, ok := idOf(im.info)
	return u.paths[im.path] || (ok && u.files[id])
}

// imagesInUse reads the backing file of every VM disk (<vms>/<ns>/<server>/disk.qcow2) and bake
// disk (<bakes>/<key>/disk.qcow2). A disk it cannot read is an error: prune then removes nothing
// rather than guess. Backing names only ever decide what to keep, never what to remove.
func (p *Provider) imagesInUse() (usedImages, error) {
	var disks []string
	namespaces, err := readDirs(p.layout.VMsDir())
	if err != nil {
		return usedImages{}, err
	}
	for _, ns := range namespaces {
		servers, err := readDirs(ns)
		if err != nil {
			return usedImages{}, err
		}
		for _, s := range servers {
			disks = append(disks, filepath.Join(s, filenames.DiskFile))
		}
	}
	bakes, err := readDirs(p.layout.BakesDir())
	if err != nil {
		return usedImages{}, err
	}
	for _, b := range bakes {
		disks = append(disks, filepath.Join(b, filenames.DiskFile))
	}
	used := usedImages{paths: map[string]bool{}, files: map[fileID]bool{}}
	for _, disk := range disks {
		backing, err := qemu.BackingFile(disk)
		switch {
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, qemu.ErrNotQCOW2):
			continue // no disk (yet), or one that names no other file
		case err != nil:
			return usedImages{}, err
		case backing == "":
			continue
		}
		if !filepath.IsAbs(backing) { // as QEMU reads it: relative to the overlay
			backing = filepath.Join(filepath.Dir(disk), backing)
		}
		used.paths[pinKey(backing)] = true
		if fi, err := os.Stat(backing); err == nil {
			if id, ok := idOf(fi); ok {
				used.files[id] = true
			}
		}
	}
	return used, nil
}

// readDirs returns the subdirectories of dir, symlinks to directories included (none when dir
// does not exist).
func readDirs(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing disks: %w", err)
	}
	var dirs []string
	for _, de := range des {
		path := filepath.Join(dir, de.Name())
		// A symlink to a directory is followed: a disk missed would be an image removed under a VM.
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			dirs = append(dirs, path)
		}
	}
	return dirs, nil
}

// allocated is what a file takes on disk: its allocated blocks.
func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
