package installer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"stargate.io/stargate/pkg/installspec"
)

// Device is the disk an image is written to (*os.File of a block device, or a file in tests).
type Device interface {
	io.WriterAt
	Sync() error
}

// Progress is a snapshot of an image write.
type Progress struct {
	Written        int64
	Total          int64 // 0 when unknown
	BytesPerSecond int64
}

// ImageSource says where an image comes from and what it must be.
type ImageSource struct {
	Client *http.Client
	URL    string
	// ChunkedSHA256 is the image's installspec.ImageDigest, lowercase hex.
	ChunkedSHA256 string
	// Size in bytes when known; the server's Content-Length must then agree.
	Size int64
}

// ErrDigestMismatch is returned when the written image's sha256 is not the expected one.
var ErrDigestMismatch = errors.New("image sha256 mismatch")

// writeChunk is the size of each write: large enough that per-call overhead vanishes next to the
// disk's own cost, small enough to keep the agent's memory small; the digest's chunk, so that a
// chunk of zeros is neither hashed nor written.
const writeChunk = installspec.DigestChunkBytes

// wipeBytes is what a failed write clears at the start (and end) of the written range.
const wipeBytes = 1 << 20

// resumeAttempts bounds how often a broken download is resumed (with a Range request).
const resumeAttempts = 5

// ImageWriter streams an image to a Device while hashing it.
type ImageWriter struct {
	Source ImageSource
	// Capacity is how many bytes of the device the image may use; a longer image is refused.
	Capacity int64
	// ProgressEvery is the minimum interval between Progress calls (the final one always comes).
	ProgressEvery time.Duration
	Progress      func(Progress)
	Log           func(format string, args ...any)
	// Backoff before resume attempt n (1-based); defaults to n seconds.
	Backoff func(n int) time.Duration
}

// Write streams the image to dev, resuming a broken download where the server allows it, and
// verifies its sha256. On a digest mismatch it wipes the first and last MiB it wrote, so the disk
// cannot boot a corrupted image, and returns an error wrapping ErrDigestMismatch; after other
// failures the caller decides (Wipe). It returns the number of bytes written.
func (w *ImageWriter) Write(ctx context.Context, dev Device) (int64, error) {
	if w.Source.Size > 0 && w.Source.Size > w.Capacity {
		return 0, fmt.Errorf("the image (%d bytes) does not fit the %d bytes available on the disk", w.Source.Size, w.Capacity)
	}
	st := &writeState{w: w, dev: dev, sum: installspec.NewImageDigest(), start: time.Now()}
	var lastErr error
	failures := 0 // in a row: a resume that made progress starts the count again
	for {
		if failures > 0 {
			if failures > resumeAttempts {
				return st.written, fmt.Errorf("downloading the image failed %d times in a row, last: %w", failures, lastErr)
			}
			wait := time.Duration(failures) * time.Second
			if w.Backoff != nil {
				wait = w.Backoff(failures)
			}
			w.logf("download broke after %d bytes (%v); resuming in %s", st.written, lastErr, wait)
			select {
			case <-ctx.Done():
				return st.written, ctx.Err()
			case <-time.After(wait):
			}
		}
		before := st.written
		done, err := st.fetch(ctx)
		if done {
			break
		}
		var perm *permanentError
		if errors.As(err, &perm) || ctx.Err() != nil {
			return st.written, err
		}
		lastErr = err
		if st.written > before {
			failures = 0
		}
		failures++
	}
	if err := dev.Sync(); err != nil {
		return st.written, fmt.Errorf("syncing the disk: %w", err)
	}
	st.report(true)
	got := st.sum.Finish()
	if got != w.Source.ChunkedSHA256 {
		wipeErr := Wipe(dev, st.written)
		return st.written, errors.Join(fmt.Errorf("%w: the %d bytes from %s have chunked sha256 %s, the spec says %s (the disk was wiped)",
			ErrDigestMismatch, st.written, w.Source.URL, got, w.Source.ChunkedSHA256), wipeErr)
	}
	return st.written, nil
}

// Wipe clears the first and last MiB of the first written bytes of dev (where partition tables,
// a GPT backup header and boot loaders live) and syncs.
func Wipe(dev Device, written int64) error {
	zeros := make([]byte, wipeBytes)
	if _, err := dev.WriteAt(zeros[:min(written, wipeBytes)], 0); err != nil {
		return fmt.Errorf("wiping the start of the disk: %w", err)
	}
	if written > wipeBytes {
		tail := max(written-wipeBytes, wipeBytes)
		if _, err := dev.WriteAt(zeros[:written-tail], tail); err != nil {
			return fmt.Errorf("wiping the end of the image on the disk: %w", err)
		}
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("syncing the wiped disk: %w", err)
	}
	return nil
}

// permanentError ends the write without a retry: the server or the image is wrong, not the network.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(format string, args ...any) error {
	return &permanentError{fmt.Errorf(format, args...)}
}

type writeState struct {
	w   *ImageWriter
	dev Device
	sum *installspec.ImageDigest
	// noZeroRange is set once the device refused fallocate's zero range: zeros are written then.
	noZeroRange bool
	written     int64
	total       int64
	start       time.Time
	lastReport  time.Time
}

// fetch issues one request (a Range request when resuming) and writes what it receives. done
// reports that the whole image was received.
func (s *writeState) fetch(ctx context.Context) (done bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.w.Source.URL, nil)
	if err != nil {
		return false, permanent("image request: %w", err)
	}
	if s.written > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", s.written))
	}
	resp, err := s.w.Source.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("requesting the image: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
		if s.written > 0 {
			s.w.logf("the image server ignored the Range request: writing again from the start")
			s.written = 0
			s.sum.Reset()
		}
		s.total = resp.ContentLength
	case resp.StatusCode == http.StatusPartialContent && s.written > 0:
		start, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != s.written {
			return false, permanent("the image server answered the Range request for bytes %d- with Content-Range %q",
				s.written, resp.Header.Get("Content-Range"))
		}
		s.total = total
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return false, fmt.Errorf("the image server answered %s", resp.Status)
	default:
		return false, permanent("the image server answered %s for %s", resp.Status, s.w.Source.URL)
	}
	if want := s.w.Source.Size; want > 0 && s.total >= 0 && s.total != want {
		return false, permanent("the image server sends %d bytes, the spec says the image has %d", s.total, want)
	}
	if s.total > s.w.Capacity {
		return false, permanent("the image (%d bytes) does not fit the %d bytes available on the disk", s.total, s.w.Capacity)
	}
	stop := make(chan struct{})
	defer close(stop) // runs before the body is closed: the reader goroutine ends with both
	chunks, free := readAhead(resp.Body, readAheadChunks, writeChunk, stop)
	for c := range chunks {
		if n := len(c.data); n > 0 {
			if s.written+int64(n) > s.w.Capacity {
				return false, permanent("the image is larger than the %d bytes available on the disk", s.w.Capacity)
			}
			if err := s.writeAt(c.data, s.written); err != nil {
				return false, permanent("writing the disk at byte %d: %w", s.written, err)
			}
			s.sum.Add(c.data)
			s.written += int64(n)
			s.report(false)
		}
		free <- c.data[:cap(c.data)]
		switch {
		case c.err == nil:
			continue
		case errors.Is(c.err, io.EOF) || errors.Is(c.err, io.ErrUnexpectedEOF):
			if s.total >= 0 && s.written < s.total {
				return false, fmt.Errorf("the connection ended after %d of %d bytes", s.written, s.total)
			}
			if want := s.w.Source.Size; want > 0 && s.written != want {
				return false, permanent("received %d bytes, the spec says the image has %d", s.written, want)
			}
			return true, nil
		default:
			return false, fmt.Errorf("reading the image: %w", c.err)
		}
	}
	return false, errors.New("the image reader stopped early") // not reached: the last chunk carries an error
}

// writeAt writes data at off. A chunk of zeros — most of a raw disk image — is zeroed instead
// (fallocate's zero range: on a block device the disk's own write-zeroes or discard, no data sent).
func (s *writeState) writeAt(data []byte, off int64) error {
	if f, ok := s.dev.(*os.File); ok && !s.noZeroRange && len(data) == writeChunk && off%writeChunk == 0 && installspec.IsZero(data) {
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, int64(len(data)))
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
			return fmt.Errorf("zeroing %d bytes: %w", len(data), err)
		}
		s.noZeroRange = true // not supported here: zeros are written like any data
		s.w.logf("the disk does not zero ranges (%v): writing zeros", err)
	}
	_, err := s.dev.WriteAt(data, off)
	return err
}

// readAheadChunks is how many chunks the network may run ahead of the disk.
const readAheadChunks = 3

type chunk struct {
	data []byte
	err  error // set on the last chunk
}

// readAhead reads r in chunks of size from its own goroutine, so the next chunk arrives while the
// current one is hashed and written. The caller hands each chunk's buffer back on free; there are
// only n buffers, so neither channel ever fills. The goroutine ends after the chunk that carries
// an error, or when done is closed.
func readAhead(r io.Reader, n, size int, done <-chan struct{}) (<-chan chunk, chan<- []byte) {
	out := make(chan chunk, n)
	free := make(chan []byte, n)
	for range n {
		free <- make([]byte, size)
	}
	go func() {
		defer close(out)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-done:
				return
			}
			got, err := io.ReadFull(r, buf)
			out <- chunk{data: buf[:got], err: err}
			if err != nil {
				return
			}
		}
	}()
	return out, free
}

func (s *writeState) report(final bool) {
	if s.w.Progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(s.lastReport) < s.w.ProgressEvery {
		return
	}
	s.lastReport = now
	p := Progress{Written: s.written, Total: max(s.total, s.w.Source.Size, 0)}
	if secs := now.Sub(s.start).Seconds(); secs > 0 {
		p.BytesPerSecond = int64(float64(s.written) / secs)
	}
	s.w.Progress(p)
}

func (w *ImageWriter) logf(format string, args ...any) {
	if w.Log != nil {
		w.Log(format, args...)
	}
}

// parseContentRange parses "bytes START-END/TOTAL"; TOTAL "*" (unknown) gives -1.
func parseContentRange(v string) (start, total int64, err error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, fmt.Errorf("not a byte range: %q", v)
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, fmt.Errorf("no total: %q", v)
	}
	first, _, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, fmt.Errorf("no range: %q", v)
	}
	if start, err = strconv.ParseInt(first, 10, 64); err != nil || start < 0 {
		return 0, 0, fmt.Errorf("bad start in %q", v)
	}
	if tot == "*" {
		return start, -1, nil
	}
	if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total < start {
		return 0, 0, fmt.Errorf("bad total in %q", v)
	}
	return start, total, nil
}
