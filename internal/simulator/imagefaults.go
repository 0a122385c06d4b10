package simulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/faults"
	"stargate.io/stargate/pkg/imagecache"
)

// Image faults strike a repave's download of its OS image, at ImageReady. The host's shared cache
// never sees them: the repave downloads its image once more, as a host with a cold cache would,
// through the faults, into a scratch cache of its own (same policy and checks as the shared one:
// size limit, checksum, disk image inspection), removed when the download ends and at startup. A
// download the faults spoil fails the step with the reason any such download gets; one they only
// slow down (or spoil unnoticed) succeeds, and the repave goes on with the cached image. Server
// errors are tried again, as any download's are (fetchRetrying).

var imageFaultTypes = []stargatev1.FaultType{stargatev1.FaultImageServerError, stargatev1.FaultImageSlow,
	stargatev1.FaultImageTruncated, stargatev1.FaultImageCorrupted}

// faultFetch is a repave's download through its image faults.
type faultFetch struct {
	backgroundJob
	bytes, size atomic.Int64
}

// imageFaults are the image faults of req the simulator makes real.
func (p *Provider) imageFaults(req controller.RepaveRequest) []stargatev1.Fault {
	var fs []stargatev1.Fault
	for _, f := range req.Faults {
		if slices.Contains(imageFaultTypes, f.Type) && p.SupportsFault(f.Type, f.At) && faults.Validate(f) == nil {
			fs = append(fs, f)
		}
	}
	return fs
}

// imageFaultsPass runs the repave's image faults: true once they struck and the download through
// them succeeded (or there are none); false with ImageReady in progress or failed otherwise.
func (p *Provider) imageFaultsPass(st *status, req controller.RepaveRequest) bool {
	fs := p.imageFaults(req)
	if len(fs) == 0 {
		return true
	}
	p.mu.Lock()
	struck := p.imageFaultsStruck[req.InstanceID]
	p.mu.Unlock()
	if struck {
		return true
	}
	f := joinJob(p, p.faultFetches, req.InstanceID, req.InstanceID, func() *faultFetch {
		f := &faultFetch{}
		f.size.Store(-1)
		return f
	}, func(ctx context.Context, f *faultFetch) error {
		err := p.fetchThroughFaults(ctx, req, fs, f)
		if err == nil {
			p.mu.Lock()
			p.imageFaultsStruck[req.InstanceID] = true
			p.mu.Unlock()
		}
		return err
	})
	note := "injected image faults: " + imageFaultNotes(fs)
	if !f.done.Load() {
		st.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Downloading",
			downloadMessage(req.ImageURL, f.bytes.Load(), f.size.Load(), time.Since(f.started))+"; "+note)
		return false
	}
	if f.err != nil {
		reason, hint := imageFailureReason(f.err, req.ImageURL)
		st.failStep(stargatev1.ConditionImageReady, reason, fmt.Sprintf("Fetching the OS image failed: %v%s (%s)", f.err, hint, note))
		return false
	}
	return true
}

// fetchThroughFaults downloads req's image through fs into a scratch cache, then removes it.
func (p *Provider) fetchThroughFaults(ctx context.Context, req controller.RepaveRequest, fs []stargatev1.Fault, f *faultFetch) error {
	if err := os.MkdirAll(p.layout.FaultFetchesDir(), 0o700); err != nil {
		return fmt.Errorf("creating the directory of downloads with injected faults: %w", err)
	}
	dir, err := os.MkdirTemp(p.layout.FaultFetchesDir(), "fetch-")
	if err != nil {
		return fmt.Errorf("creating a scratch cache: %w", err)
	}
	defer os.RemoveAll(dir)
	c := newImageCache(dir, p.cfg.Images, p.cfg.Network.Subnet())
	opened := 0 // the tries so far: a server error strikes the first failedTries
	c.Intercept = func(body io.ReadCloser, size int64, err error) (io.ReadCloser, int64, error) {
		opened++
		return interceptImage(req.ImageURL, fs, opened-1, body, size, err)
	}
	_, err = fetchRetrying(ctx, c, req.ImageURL, req.ImageChecksum, func(done, total int64) {
		f.bytes.Store(done)
		f.size.Store(total)
	})
	return err
}

// interceptImage applies the image faults fs to a download's try (tried: the tries before it): a
// server error in place of the body for the first failedTries, or the body slowed, cut or corrupted.
func interceptImage(url string, fs []stargatev1.Fault, tried int, body io.ReadCloser, size int64, err error) (io.ReadCloser, int64, error) {
	if err != nil {
		return body, size, err
	}
	for _, f := range fs {
		switch f.Type {
		case stargatev1.FaultImageServerError:
			if tried < int(*f.FailedTries) {
				body.Close()
				return nil, 0, imagecache.ServerError(url, 503)
			}
		case stargatev1.FaultImageSlow:
			body = newSlowReader(body, *f.BytesPerSecond)
		case stargatev1.FaultImageTruncated:
			cut := int64(1 << 20)
			if size > 0 {
				cut = size / 2
			}
			body = struct {
				io.Reader
				io.Closer
			}{io.LimitReader(body, cut), body}
		case stargatev1.FaultImageCorrupted:
			start := int64(1000)
			if size > 0 {
				start = size / 2
			}
			body = &corruptingReader{ReadCloser: body, next: start}
		}
	}
	return body, size, nil
}

// slowReader reads at most bps bytes a second.
type slowReader struct {
	io.ReadCloser
	limit *rate.Limiter
	burst int
}

func newSlowReader(r io.ReadCloser, bps int64) *slowReader {
	burst := int(min(max(bps/4, 1), 64<<10))
	return &slowReader{ReadCloser: r, limit: rate.NewLimiter(rate.Limit(bps), burst), burst: burst}
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(p) > r.burst {
		p = p[:r.burst]
	}
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		if werr := r.limit.WaitN(context.Background(), n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// corruptingReader flips the bits of one byte in every MiB from offset next on, as a mirror's
// bit rot would: nothing but a checksum notices.
type corruptingReader struct {
	io.ReadCloser
	off, next int64
}

func (r *corruptingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	for r.next < r.off+int64(n) {
		p[r.next-r.off] ^= 0xff
		r.next += 1 << 20
	}
	r.off += int64(n)
	return n, err
}

func imageFaultNotes(fs []stargatev1.Fault) string {
	notes := make([]string, len(fs))
	for i, f := range fs {
		switch f.Type {
		case stargatev1.FaultImageServerError:
			notes[i] = fmt.Sprintf("%s (the image server answers 503 Service Unavailable %d times)", f.Name, *f.FailedTries)
		case stargatev1.FaultImageSlow:
			notes[i] = fmt.Sprintf("%s (the download limited to %d bytes/s)", f.Name, *f.BytesPerSecond)
		case stargatev1.FaultImageTruncated:
			notes[i] = fmt.Sprintf("%s (the download cut at half its size)", f.Name)
		case stargatev1.FaultImageCorrupted:
			notes[i] = fmt.Sprintf("%s (a byte of every MiB from the middle on corrupted)", f.Name)
		}
	}
	return strings.Join(notes, ", ") + "; the host's shared image cache is not touched"
}

// removeFaultFetches removes what downloads with injected faults left (at startup: none runs).
func (p *Provider) removeFaultFetches() error {
	if err := os.RemoveAll(p.layout.FaultFetchesDir()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the downloads with injected faults: %w", err)
	}
	return nil
}
