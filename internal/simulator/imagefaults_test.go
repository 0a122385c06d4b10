package simulator_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/netnstest"
	"stargate.io/stargate/pkg/filenames"
)

// TestImageFaults: each image fault spoils the repave's own download as a real mirror would — a
// 503, corrupted bytes (caught by the profile's checksum), a slow body cut short (the download's
// own size check) — and the repave fails at ImageReady with the reason any such download gets,
// its message naming the injected fault. The host's shared cache never sees a spoiled byte, and
// no scratch download is left. A mirror that fails fewer times than the simulator tries only
// slows the step; with the FaultInjections deleted the image step succeeds, from the shared
// cache, with the image as published. No VM boots: the faults strike before one would.
func TestImageFaults(t *testing.T) {
	netnstest.Require(t)
	r := newFaultRig(t, "sgimgf-br0", "img-1")
	src := filepath.Join(r.h.cfg.Images.FileDirs[0], "tiny.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", src, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	data, err := os.ReadFile(src)
	r.must(err)
	sum := sha256.Sum256(data)
	r.setProfile(func(pp *stargatev1.ProvisioningProfileSpec) {
		pp.Image = stargatev1.ImageSource{URL: "file://" + src, Checksum: "sha256:" + hex.EncodeToString(sum[:])}
	})
	const slow = 16 << 10 // bytes/s: half of the image takes a few seconds

	for _, c := range []struct {
		name   string
		faults []stargatev1.Fault
		reason string
		says   []string
	}{
		{"mirror-down", []stargatev1.Fault{{Name: "down", Type: stargatev1.FaultImageServerError, FailedTries: ptr.To[int32](3)}},
			"ImageFetchFailed", []string{"unexpected HTTP 503 Service Unavailable (gave up after 3 tries)", "down (the image server answers 503"}},
		{"bit-rot", []stargatev1.Fault{{Name: "rot", Type: stargatev1.FaultImageCorrupted}},
			"ChecksumMismatch", []string{"rot (a byte of every MiB"}},
		{"slow-and-cut", []stargatev1.Fault{{Name: "slow", Type: stargatev1.FaultImageSlow, BytesPerSecond: ptr.To[int64](slow)},
			{Name: "cut", Type: stargatev1.FaultImageTruncated}},
			"ImageFetchFailed", []string{"unexpected EOF", "of " + byteCount(len(data)) + " bytes"}},
	} {
		for i := range c.faults {
			c.faults[i].At = stargatev1.ConditionImageReady
		}
		fi := r.inject(c.name, c.faults...)
		start := time.Now()
		op := r.repave(c.name, 5*time.Minute, stargatev1.OperationFailed, nil)
		took := time.Since(start)
		cond := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageReady)
		if cond == nil || cond.Reason != c.reason {
			t.Errorf("%s: ImageReady %+v, want reason %s", c.name, cond, c.reason)
		} else {
			for _, want := range append(c.says, "the host's shared image cache is not touched") {
				if !strings.Contains(cond.Message, want) {
					t.Errorf("%s: ImageReady's message lacks %q: %s", c.name, want, cond.Message)
				}
			}
		}
		if c.name == "slow-and-cut" {
			if least := time.Duration(float64(len(data)/2) / slow * float64(time.Second)); took < least*8/10 {
				t.Errorf("the slowed download ended after %s, want at least about %s", took, least)
			}
		}
		r.must(r.c.Delete(context.Background(), fi))
		if entries, _ := os.ReadDir(filepath.Join(r.h.cfg.WorkDir, filenames.FaultFetchesDir)); len(entries) != 0 {
			t.Errorf("%s: scratch downloads left: %v", c.name, entries)
		}
		if cached := cachedImages(t, r.h.cfg.WorkDir); len(cached) != 0 {
			t.Errorf("%s: the shared cache holds %v after a download with faults", c.name, cached)
		}
	}

	// A mirror failing fewer times than the simulator tries: the repave's download gets through on
	// its third try (2 s, then 4 s later), and the repave goes on.
	fi := r.inject("flaky-mirror", stargatev1.Fault{Name: "flaky", Type: stargatev1.FaultImageServerError,
		At: stargatev1.ConditionImageReady, FailedTries: ptr.To[int32](2)})
	start := time.Now()
	imageReady(t, r, "flaky")
	if took := time.Since(start); took < 6*time.Second {
		t.Errorf("ImageReady after %s through two server errors, want the retries' 6 s at least", took)
	}
	r.must(r.c.Delete(context.Background(), fi))

	// Without the faults: the image step succeeds from the shared cache, with the published bytes.
	waitFor(t, "the FaultInjections to be gone", time.Minute, func() bool {
		var l stargatev1.FaultInjectionList
		r.must(r.c.List(context.Background(), &l, client.InNamespace(ns)))
		return len(l.Items) == 0
	})
	imageReady(t, r, "clean")
	cached := cachedImages(t, r.h.cfg.WorkDir)
	if len(cached) != 1 {
		t.Fatalf("shared cache %v, want the one image", cached)
	}
	got, err := os.ReadFile(cached[0])
	r.must(err)
	if sha256.Sum256(got) != sum {
		t.Error("the shared cache's image differs from the published one")
	}
}

// imageReady runs a repave until its image step is done, then deletes it: the tiny image does not
// boot (SeaBIOS finds no boot device, and the VM may exit before this sees ImageReady).
func imageReady(t *testing.T, r *faultRig, name string) {
	t.Helper()
	op := r.startRepave(name, 5*time.Minute)
	waitFor(t, name+"'s ImageReady", 2*time.Minute, func() bool {
		r.must(r.c.Get(context.Background(), client.ObjectKeyFromObject(op), op))
		return op.Status.Phase.IsFinal() || meta.IsStatusConditionTrue(op.Status.Conditions, stargatev1.ConditionImageReady)
	})
	if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionImageReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("%s: ImageReady %+v (%s: %s)", name, c, op.Status.Phase, op.Status.Message)
	}
	r.must(r.c.Delete(context.Background(), op))
}

// cachedImages are the image files of the host's shared cache.
func cachedImages(t *testing.T, workDir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(workDir, filenames.ImagesDir, "*", "data"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func byteCount(n int) string { return strconv.Itoa(n) }
