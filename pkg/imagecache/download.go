package imagecache

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
)

// download streams the image into a temp file in the entry, hashing as it
// writes, verifies it and renames it into place. Nothing but the complete
// entry is left behind, whatever fails.
func (c *Cache) download(ctx context.Context, req fetchRequest, report Progress) (img Image, err error) {
	entry, rawURL, want := req.entry, req.src.raw, req.want
	maxBytes := c.settings().maxBytes
	var body io.ReadCloser
	var total int64
	if req.src.url.Scheme == "file" {
		body, total, err = c.openFile(req.src)
		if err == nil && total > maxBytes {
			body.Close()
			err = fmt.Errorf("reading %s: %d bytes, more than the limit of %d: %w", rawURL, total, maxBytes, ErrTooLarge)
		}
	} else {
		body, total, err = c.openHTTP(ctx, req.src)
	}
	if c.Intercept != nil {
		body, total, err = c.Intercept(body, total, err)
	}
	if err != nil {
		return Image{}, err
	}
	defer body.Close()

	// CreateTemp makes the file 0600: cached images may hold what their
	// publisher did not mean for every user of this host.
	tmp, err := os.CreateTemp(entry, imageTempPrefix+imageDataFile+"-*")
	if err != nil {
		return Image{}, imageWriteError(entry, "temp file", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	h256 := sha256.New()
	var h512 hash.Hash
	hashes := io.Writer(h256)
	if want.algo == "sha512" {
		h512 = sha512.New()
		hashes = io.MultiWriter(h256, h512)
	}

	buf := make([]byte, imageCopyBuffer)
	var done, reported int64
	for {
		if err := ctx.Err(); err != nil { // file:// reads do not watch ctx
			return Image{}, fmt.Errorf("downloading %s: %w", rawURL, context.Cause(ctx))
		}
		n, rerr := body.Read(buf)
		if n > 0 {
			if done+int64(n) > maxBytes {
				return Image{}, fmt.Errorf("downloading %s: more than the limit of %d bytes: %w", rawURL, maxBytes, ErrTooLarge)
			}
			if _, werr := tmp.Write(buf[:n]); werr != nil {
				return Image{}, imageWriteError(entry, rawURL, werr)
			}
			_, _ = hashes.Write(buf[:n]) // hash.Hash.Write never fails
			done += int64(n)
			if done-reported >= imageProgressStep {
				reported = done
				report(done, total)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return Image{}, fmt.Errorf("downloading %s: %w", rawURL, rerr)
		}
	}
	if total >= 0 && done != total {
		return Image{}, fmt.Errorf("downloading %s: got %d of %d bytes: %w", rawURL, done, total, io.ErrUnexpectedEOF)
	}

	digest := "sha256:" + hex.EncodeToString(h256.Sum(nil))
	var digest512 string
	if h512 != nil {
		digest512 = "sha512:" + hex.EncodeToString(h512.Sum(nil))
	}
	if want.algo != "" {
		got := digest
		if want.algo == "sha512" {
			got = digest512
		}
		if got != want.String() {
			return Image{}, checksumError(rawURL, want.String(), got, "downloaded")
		}
	}

	// Explicit, in case a default ACL or umask widened it.
	if err := tmp.Chmod(0o600); err != nil {
		return Image{}, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	// Sync before rename, or a power cut can leave a complete-looking but
	// empty "data" behind the rename.
	if err := tmp.Sync(); err != nil {
		return Image{}, imageWriteError(entry, rawURL, err)
	}
	if err := tmp.Close(); err != nil {
		return Image{}, imageWriteError(entry, rawURL, err)
	}
	if c.Verify != nil {
		if err := c.Verify(ctx, tmp.Name()); err != nil {
			return Image{}, fmt.Errorf("image %s: %w", rawURL, err)
		}
	}
	fi, err := os.Stat(tmp.Name())
	if err != nil {
		return Image{}, imageWriteError(entry, rawURL, err)
	}

	meta := []struct{ name, text string }{
		{imageURLFile, rawURL},
		{imageDigestFile, digest},
		{imageSHA512File, digest512},
		{imageStatFile, statRecord(fi)}, // rename keeps size and mtime
	}
	for _, m := range meta {
		if m.text == "" {
			continue
		}
		if err := writeImageFileAtomic(entry, m.name, m.text+"\n"); err != nil {
			return Image{}, err
		}
	}
	data := filepath.Join(entry, imageDataFile)
	if err := os.Rename(tmp.Name(), data); err != nil {
		return Image{}, fmt.Errorf("renaming %s into place: %w", tmp.Name(), err)
	}
	syncImageDir(entry)
	report(done, done)
	return Image{Path: data, Digest: digest, Size: done}, nil
}
