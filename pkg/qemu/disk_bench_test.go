package qemu

import (
	"path/filepath"
	"testing"
)

// BenchmarkCreateOverlay shows that a repave's disk costs the same whatever
// the base image's size: only qcow2 metadata is written.
func BenchmarkCreateOverlay(b *testing.B) {
	diskTestNeedQemuImg(b)
	for _, bc := range []struct {
		name string
		size int64
	}{
		{"base=64MiB", 64 << 20},
		{"base=1GiB", 1 << 30},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dir := b.TempDir()
			base := diskTestBase(b, dir, "raw", bc.size) // sparse: no disk used
			overlay := filepath.Join(dir, "disk.qcow2")
			for b.Loop() {
				if err := CreateOverlay(b.Context(), base, overlay, 20<<30); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
