package simulator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// DefaultImageIdleTimeout is how long a download runs on after the last repave asked about it:
// much longer than a poll interval, so only a download nobody waits for any more is cancelled.
const DefaultImageIdleTimeout = 2 * time.Minute

// ImagePolicy says which image URLs this host fetches, and within which limits. Profiles are
// written by tenants, the simulator runs as root: everything not allowed here is refused.
type ImagePolicy struct {
	// FileDirs are the directories file:// image URLs may name files below (--image-dir).
	// None: file URLs are refused.
	FileDirs []string
	// AllowHosts are addresses http(s) image URLs may reach although they are refused by
	// default: loopback, link-local, multicast, this host's addresses and the VM network
	// (--allow-image-hosts).
	AllowHosts []netip.Prefix
	// MaxBytes is the largest image fetched (--max-image-size); 0 means imagecache.DefaultMaxBytes.
	MaxBytes int64
	// ConnectTimeout, HeaderTimeout and StallTimeout bound a download's connect (and TLS
	// handshake), the wait for response headers, and a pause in the body; 0 means the
	// imagecache defaults.
	ConnectTimeout, HeaderTimeout, StallTimeout time.Duration
	// IdleTimeout cancels a download no repave asked about for this long; 0 means
	// DefaultImageIdleTimeout.
	IdleTimeout time.Duration
}

// newImageCache is the image cache of a host: its policy, the VM network refused (other
// tenants' VMs live there), and only real disk images cached.
func newImageCache(dir string, pol ImagePolicy, vmNet netip.Prefix) *imagecache.Cache {
	return newCache(dir, pol, vmNet, func(ctx context.Context, path string) error {
		_, err := qemu.InspectBaseImage(ctx, path)
		return err
	})
}

// newMediaCache is the virtual media cache of a host: the same policy as OS images (a CD's URL
// comes from a BMC client, as untrusted as a profile's), and only ISOs cached.
func newMediaCache(dir string, pol ImagePolicy, vmNet netip.Prefix) *imagecache.Cache {
	return newCache(dir, pol, vmNet, func(_ context.Context, path string) error { return qemu.InspectMedia(path) })
}

// newCache is a cache in dir under pol, refusing the VM network, with verify as its check.
func newCache(dir string, pol ImagePolicy, vmNet netip.Prefix, verify func(context.Context, string) error) *imagecache.Cache {
	c := &imagecache.Cache{
		Dir: dir, FileDirs: pol.FileDirs, AllowHosts: pol.AllowHosts, MaxBytes: pol.MaxBytes,
		ConnectTimeout: pol.ConnectTimeout, HeaderTimeout: pol.HeaderTimeout, StallTimeout: pol.StallTimeout,
		Verify: verify,
	}
	if vmNet.IsValid() {
		c.DenyHosts = []netip.Prefix{vmNet.Masked()}
	}
	return c
}

// ImageTries is how many times a download is tried while the image server answers 5xx (a mirror
// restarting, a proxy overloaded), waiting imageRetryWait longer after each try.
const ImageTries = 3

var imageRetryWait = 2 * time.Second

// fetchRetrying fetches an image through c, trying again after a server error.
func fetchRetrying(ctx context.Context, c *imagecache.Cache, url, checksum string, progress imagecache.Progress) (imagecache.Image, error) {
	for try := 1; ; try++ {
		img, err := c.Fetch(ctx, url, checksum, progress)
		if err == nil || !errors.Is(err, imagecache.ErrServerError) {
			return img, err
		}
		if try == ImageTries {
			return img, fmt.Errorf("%w (gave up after %d tries)", err, ImageTries)
		}
		select {
		case <-ctx.Done():
			return img, err
		case <-time.After(time.Duration(try) * imageRetryWait):
		}
	}
}

// imageFetch is a download running in the background, shared by every repave of the same image.
type imageFetch struct {
	backgroundJob
	bytes, size atomic.Int64
	image       imagecache.Image
}

// image is a repave's image step. It returns the cached image once it is there, or a zero Image
// with ImageReady in progress (downloading in the background) or failed.
func (p *Provider) image(ctx context.Context, st *status, req controller.RepaveRequest) imagecache.Image {
	if !p.imageFaultsPass(st, req) { // imagefaults.go
		return imagecache.Image{}
	}
	img, ok, err := p.images.Lookup(ctx, req.ImageURL, req.ImageChecksum)
	if err == nil && !ok {
		f := p.fetchImage(req.ImageURL, req.ImageChecksum, req.InstanceID)
		if !f.done.Load() {
			st.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Downloading",
				downloadMessage(req.ImageURL, f.bytes.Load(), f.size.Load(), time.Since(f.started)))
			return imagecache.Image{}
		}
		img, err = f.image, f.err
	}
	if err != nil {
		reason, hint := imageFailureReason(err, req.ImageURL)
		st.failStep(stargatev1.ConditionImageReady, reason, fmt.Sprintf("Fetching the OS image failed: %v%s", err, hint))
		return imagecache.Image{}
	}
	st.set(stargatev1.ConditionImageReady, controller.StepDone, "Cached",
		fmt.Sprintf("Image %s cached (%s, %s)", req.ImageURL, img.Digest, formatBytes(img.Size)))
	return img
}

// fetchImage returns the background download of an image for the repave of instanceID (see
// joinJob: a failure is reported only to the repaves that waited for it).
func (p *Provider) fetchImage(url, checksum, instanceID string) *imageFetch {
	newFetch := func() *imageFetch {
		f := &imageFetch{}
		f.size.Store(-1)
		return f
	}
	return joinJob(p, p.fetches, url+"\x00"+checksum, instanceID, newFetch, func(ctx context.Context, f *imageFetch) error {
		img, err := fetchRetrying(ctx, p.images, url, checksum, func(done, total int64) {
			f.bytes.Store(done)
			f.size.Store(total)
		})
		f.image = img
		if err == nil && !img.CacheHit {
			// A new image counts towards --image-cache-size. It is kept while pruning: the
			// repaves waiting for it have not pinned it yet, and would only fetch it again.
			p.prune(img.Path)
		}
		return err
	})
}

// The messages of sizes and downloads are the image cache's, shared with other providers.
var (
	downloadMessage = imagecache.DownloadMessage
	formatBytes     = imagecache.FormatBytes
)

// imageFailureReason is ImageReady's reason for a failed fetch of url, one a user can act on,
// and a hint for the message when the fix is the host operator's.
func imageFailureReason(err error, url string) (reason, hint string) {
	switch {
	case errors.Is(err, imagecache.ErrChecksumMismatch):
		return "ChecksumMismatch", ""
	case errors.Is(err, imagecache.ErrNotFound):
		return "ImageNotFound", ""
	case errors.Is(err, qemu.ErrUnsupportedImage):
		return "UnsupportedImage", " (only qcow2 images without backing or data files, and raw disks with a partition table, are booted)"
	case errors.Is(err, imagecache.ErrNotAllowed) && strings.HasPrefix(url, "file:"):
		return "ImageSourceNotAllowed", " (the simulator's operator allows directories for file:// images with --image-dir)"
	case errors.Is(err, imagecache.ErrNotAllowed):
		return "ImageSourceNotAllowed", " (the simulator's operator allows otherwise refused addresses with --allow-image-hosts)"
	case errors.Is(err, imagecache.ErrTooLarge):
		return "ImageTooLarge", " (the simulator's operator sets the limit with --max-image-size)"
	case errors.Is(err, imagecache.ErrStalled):
		return "DownloadStalled", " (the next Operation tries again)"
	}
	return "ImageFetchFailed", ""
}
