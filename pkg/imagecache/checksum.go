package imagecache

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"strings"
)

// imageChecksum is a parsed "algo:hex" checksum; the zero value means none.
type imageChecksum struct {
	algo string // "sha256" or "sha512"
	hex  string // lowercase
}

func (s imageChecksum) String() string { return s.algo + ":" + s.hex }

func checksumError(rawURL, want, got, where string) error {
	return fmt.Errorf("image %s (%s): expected %s, got %s; update spec.image.checksum or fix the URL: %w",
		rawURL, where, want, got, ErrChecksumMismatch)
}

// parseImageChecksum validates "", "sha256:<64 hex>" or "sha512:<128 hex>".
func parseImageChecksum(s string) (imageChecksum, error) {
	if s == "" {
		return imageChecksum{}, nil
	}
	algo, hexSum, _ := strings.Cut(s, ":")
	algo = strings.ToLower(algo)
	hexSum = strings.ToLower(hexSum)
	size := map[string]int{"sha256": sha256.Size, "sha512": sha512.Size}[algo]
	if b, err := hex.DecodeString(hexSum); size == 0 || err != nil || len(b) != size {
		return imageChecksum{}, fmt.Errorf("invalid image checksum %q: want sha256:<64 hex> or sha512:<128 hex>", s)
	}
	return imageChecksum{algo: algo, hex: hexSum}, nil
}
