package imagecache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// imageCall is one in-flight fetch shared by every goroutine that asked for
// the same URL and checksum. The download runs detached from the callers'
// contexts and is cancelled only when the last waiting caller gives up, so one
// impatient caller does not fail the others.
type imageCall struct {
	done   chan struct{} // closed when img and err are set
	img    Image
	err    error
	cancel context.CancelFunc

	// Guarded by Cache.mu. A waiter is registered even with a nil
	// Progress: len(waiters) is the number of callers still waiting.
	waiters map[int]Progress
	nextID  int
}

// join waits for the in-flight fetch of the request, starting one if there is none.
func (c *Cache) join(ctx context.Context, req fetchRequest, progress Progress) (Image, error) {
	key := req.entry + "\x00" + req.want.String()
	if ctx.Err() != nil { // do not start a download nobody will wait for
		return Image{}, fmt.Errorf("fetching %s: %w", req.src.raw, context.Cause(ctx))
	}

	c.mu.Lock()
	if c.calls == nil {
		c.calls = make(map[string]*imageCall)
	}
	call, ok := c.calls[key]
	if !ok {
		// Keep the caller's values (loggers, tracing) but not its deadline.
		dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		call = &imageCall{done: make(chan struct{}), cancel: cancel, waiters: make(map[int]Progress)}
		c.calls[key] = call
		go c.run(dctx, key, call, req)
	}
	id := call.nextID
	call.nextID++
	call.waiters[id] = progress
	c.mu.Unlock()

	select {
	case <-call.done:
		return call.img, call.err
	case <-ctx.Done():
	}

	c.mu.Lock()
	delete(call.waiters, id)
	if len(call.waiters) == 0 {
		call.cancel()
		if c.calls[key] == call {
			delete(c.calls, key)
		}
	}
	c.mu.Unlock()

	select {
	case <-call.done: // finished while we were leaving: the result is good
		return call.img, call.err
	default:
		return Image{}, fmt.Errorf("fetching %s: %w", req.src.raw, context.Cause(ctx))
	}
}

// run performs a shared fetch and publishes its result.
func (c *Cache) run(ctx context.Context, key string, call *imageCall, req fetchRequest) {
	report := func(done, total int64) {
		c.mu.Lock()
		fns := make([]Progress, 0, len(call.waiters))
		for _, fn := range call.waiters {
			if fn != nil {
				fns = append(fns, fn)
			}
		}
		c.mu.Unlock()
		for _, fn := range fns {
			fn(done, total)
		}
	}
	img, err := c.fetchLocked(ctx, req, report)

	c.mu.Lock()
	if c.calls[key] == call {
		delete(c.calls, key)
	}
	c.mu.Unlock()
	call.img, call.err = img, err
	call.cancel()
	close(call.done)
}

// fetchLocked takes the entry's file lock, then returns the entry if it is (or
// another process made it) complete and sound, or downloads it.
func (c *Cache) fetchLocked(ctx context.Context, req fetchRequest, report Progress) (img Image, err error) {
	entry := req.entry
	lock, err := lockEntry(ctx, entry)
	if err != nil {
		return Image{}, err
	}
	defer func() {
		// Nothing but a complete entry stays: a failed fetch leaves no
		// directory behind (removed while we still hold its lock, moved
		// aside first as Remove does: a waiter polling the lock reopens
		// the lock file by name and would make it again in a directory
		// being removed). What a crash here leaves, CollectDebris removes.
		if err != nil && !imageFileExists(filepath.Join(entry, imageDataFile)) {
			if discardEntry(filepath.Dir(entry), entry) != nil {
				os.RemoveAll(entry) // no room for the move (a full disk): in place
			}
		}
		lock.Unlock() //nolint:errcheck // closing the fd releases the lock anyway
	}()
	if err := fixEntryModes(entry); err != nil {
		return Image{}, err
	}

	if imageFileExists(filepath.Join(entry, imageDataFile)) {
		usable, err := c.checkEntry(ctx, entry, req.want)
		if err != nil {
			return Image{}, err
		}
		if usable {
			img, ok, err := lookupImage(entry, req.src.raw, req.want)
			if err == nil && !ok {
				err = fmt.Errorf("image cache entry %s is incomplete after repair", entry)
			}
			if err == nil {
				touchEntry(entry)
				report(img.Size, img.Size)
			}
			return img, err
		}
		// Damaged or rejected: remove the data first, so that the entry is
		// "absent" at every moment from here on, then fetch it again.
		if err := os.Remove(filepath.Join(entry, imageDataFile)); err != nil {
			return Image{}, fmt.Errorf("removing damaged cached image: %w", err)
		}
	}

	// We hold the lock and there is no data: anything else in the entry is
	// debris of an interrupted download. Start from a clean slate so that a
	// stale digest can never be paired with new data.
	if err := cleanImageEntry(entry); err != nil {
		return Image{}, err
	}
	if img, err = c.download(ctx, req, report); err == nil {
		touchEntry(entry)
	}
	return img, err
}
