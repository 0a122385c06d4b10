package installspec

import (
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

// referenceDigest is the definition of ChunkedSHA256, written the slow and obvious way.
func referenceDigest(image []byte) string {
	outer := sha256.New()
	for off := 0; off < len(image); off += DigestChunkBytes {
		sum := sha256.Sum256(image[off:min(off+DigestChunkBytes, len(image))])
		outer.Write(sum[:])
	}
	return hex.EncodeToString(outer.Sum(nil))
}

func TestImageDigestIsTheChunkedSHA256(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	const c = DigestChunkBytes
	oneByte := make([]byte, c)
	oneByte[c-1] = 1 // a chunk that is zero but for its last byte must not pass for zeros
	cases := map[string][]byte{
		"empty":                      nil,
		"one byte":                   {7},
		"zeros, whole chunks":        make([]byte, 3*c),
		"zeros, a partial last":      make([]byte, 2*c+5),
		"data":                       random(2*c + 12345),
		"zero chunk but a byte":      append(make([]byte, c), oneByte...),
		"data, zeros, data, zeros":   append(append(append(random(c), make([]byte, 2*c)...), random(100)...), make([]byte, c)...),
		"unaligned zeros after data": append(random(c/2), make([]byte, 2*c)...),
	}
	for name, image := range cases {
		want := referenceDigest(image)
		// Written at once, in the installer's chunks, and in odd pieces (a resumed download).
		for _, split := range []int{len(image) + 1, c, 1 << 20, 65537} {
			d := NewImageDigest()
			for off := 0; off < len(image); off += split {
				d.Add(image[off:min(off+split, len(image))])
			}
			if got := d.Finish(); got != want {
				t.Errorf("%s written in pieces of %d: %s, want %s", name, split, got, want)
			}
		}
	}
	d := NewImageDigest()
	d.Add(random(100))
	d.Reset()
	d.Add(make([]byte, c))
	if got, want := d.Finish(), referenceDigest(make([]byte, c)); got != want {
		t.Errorf("after Reset: %s, want %s", got, want)
	}
}

func TestIsZero(t *testing.T) {
	b := make([]byte, 2*DigestChunkBytes+3)
	if !IsZero(b) || !IsZero(nil) {
		t.Error("zeros are not zero")
	}
	for _, i := range []int{0, 7, DigestChunkBytes, len(b) - 1} {
		b[i] = 0x80
		if IsZero(b) {
			t.Errorf("a byte set at %d passed for zeros", i)
		}
		b[i] = 0
	}
}

// BenchmarkImageDigest measures a raw disk image's typical content: mostly zeros.
func BenchmarkImageDigest(b *testing.B) {
	data := make([]byte, DigestChunkBytes)
	for i := range data {
		data[i] = byte(i * 7)
	}
	zeros := make([]byte, DigestChunkBytes)
	for _, bc := range []struct {
		name string
		buf  []byte
	}{{"data", data}, {"zeros", zeros}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(DigestChunkBytes)
			d := NewImageDigest()
			for b.Loop() {
				d.Add(bc.buf)
			}
		})
	}
}
