package simulator

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"stargate.io/stargate/pkg/imagecache"
)

// imageFetch is a download running in the background, shared by every repave of the same image.
type imageFetch struct {
	done        atomic.Bool
	bytes, size atomic.Int64
	image       imagecache.Image
	err         error
}

// fetchImage returns the background download of an image, starting it when needed.
func (p *Provider) fetchImage(url, checksum string) *imageFetch {
	key := url + "\x00" + checksum
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.fetches[key]; ok {
		return f
	}
	f := &imageFetch{}
	f.size.Store(-1)
	p.fetches[key] = f
	go func() {
		img, err := p.images.Fetch(context.Background(), url, checksum, func(done, total int64) {
			f.bytes.Store(done)
			f.size.Store(total)
		})
		f.image, f.err = img, err
		f.done.Store(true)
	}()
	return f
}

// forgetFailedFetch drops a failed download once it has been reported, so the next repave tries
// again (the URL may be fixed by then).
func (p *Provider) forgetFailedFetch(url, checksum string, f *imageFetch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fetches[url+"\x00"+checksum] == f {
		delete(p.fetches, url+"\x00"+checksum)
	}
}

// downloadMessage is ImageReady's message while an image downloads.
func downloadMessage(url string, done, total int64) string {
	if total > 0 {
		return fmt.Sprintf("Downloading %s: %d of %d MiB (%d%%)", url, done>>20, total>>20, done*100/total)
	}
	return fmt.Sprintf("Downloading %s: %d MiB", url, done>>20)
}

// imageFailureReason is ImageReady's reason for a failed fetch: one a user can act on.
func imageFailureReason(err error) string {
	switch {
	case errors.Is(err, imagecache.ErrChecksumMismatch):
		return "ChecksumMismatch"
	case errors.Is(err, imagecache.ErrNotFound):
		return "ImageNotFound"
	}
	return "ImageFetchFailed"
}
