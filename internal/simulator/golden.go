package simulator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/imagecache"
)

// Golden images. A profile's installation (spec.installation) is the same on every server, so it
// is run once, in a bake VM on the cached OS image, and the result kept as a golden image; repaves
// then boot the golden image and run only their per-instance user-data. A golden image is named by
// its key: the bake's format, the OS image's digest, the namespace (a tenant never boots what
// another tenant's bake made, even for the same text) and the installation's bytes.

// goldenFormat versions how a golden image is made: a change to the bake (its vendor-data, its
// cleanup) changes every key, so no image made the old way is used.
const goldenFormat = "stargate-golden-v1"

// goldenKey names the golden image of installation on the base image with baseDigest, for namespace.
func goldenKey(baseDigest, namespace string, installation []byte) string {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(goldenFormat), []byte(baseDigest), []byte(namespace), installation} {
		// Length-prefixed, so no two different inputs hash the same bytes.
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// goldenPath is where the golden image of key is kept.
func (p *Provider) goldenPath(key string) string {
	return filepath.Join(p.layout.GoldenDir(), key+".qcow2")
}

// bakeJob is a bake running in the background, shared by every repave that needs its golden image.
type bakeJob struct {
	backgroundJob
	dir string // the bake's directory (disk, seed, console), gone once it ended
	// servers are those whose repaves wait for it, told at once when it ends. Guarded by Provider.mu.
	servers map[types.NamespacedName]bool
	// took is how long it ran, set when it ended. Guarded by Provider.mu.
	took time.Duration
}

// golden is the image step of a repave whose profile has an installation: the golden image's
// path once baked, or "" with ImageReady in progress (baking) or failed.
func (p *Provider) golden(ctx context.Context, st *status, req controller.RepaveRequest, base imagecache.Image) string {
	key := goldenKey(base.Digest, req.Server.Namespace, req.Installation)
	path := p.goldenPath(key)
	p.mu.Lock()
	running, ok := p.bakes[key]
	baking := ok && !running.done.Load() // its image may be in place already, its cleanup not done
	p.mu.Unlock()
	if !baking && p.useGolden(path) {
		msg := goldenMessage(key, req, base)
		p.mu.Lock()
		if took, waited := p.bakedFor[req.InstanceID]; waited {
			msg += fmt.Sprintf(", baked in %s", took.Round(time.Second))
			delete(p.bakedFor, req.InstanceID)
		}
		p.mu.Unlock()
		st.set(stargatev1.ConditionImageReady, controller.StepDone, "GoldenImage", msg)
		return path
	}
	newBake := func() *bakeJob {
		b := &bakeJob{dir: filepath.Join(p.layout.BakesDir(), key), servers: map[types.NamespacedName]bool{}}
		b.ended = func() { // under p.mu, as the verdict is recorded
			b.took = time.Since(b.started)
			if b.err == nil {
				// The repaves that waited say so once they boot the golden image (the job is forgotten).
				for id := range b.askers {
					p.bakedFor[id] = b.took
				}
			}
			for server := range b.servers {
				p.watch.notify(server) // their next step now, not at the next poll
			}
		}
		return b
	}
	b := joinJob(p, p.bakes, key, req.InstanceID, newBake, func(ctx context.Context, b *bakeJob) error {
		return p.bake(ctx, b, key, req, base)
	})
	p.mu.Lock()
	b.servers[req.Server] = true
	took := b.took
	p.mu.Unlock()
	switch {
	case !b.done.Load() || b.abandoned.Load():
		st.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Baking", bakeMessage(b, key))
		return ""
	case errors.Is(b.err, errRetry):
		st.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Baking", fmt.Sprintf("Baking golden image %s again: %v", short(key), b.err))
		return ""
	case b.err != nil:
		st.failStep(stargatev1.ConditionImageReady, "BakeFailed", fmt.Sprintf("Baking the profile's installation (spec.installation) into "+
			"golden image %s failed after %s; nothing was cached, the next repave bakes again: %v", short(key), took.Round(time.Second), b.err))
		return ""
	case !p.useGolden(path):
		// Baked, then removed (by hand, or the cache's size limit) before this repave used it.
		st.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Baking", "The golden image "+short(key)+" is gone: baking it again")
		return ""
	}
	st.set(stargatev1.ConditionImageReady, controller.StepDone, "GoldenImage", goldenMessage(key, req, base)+
		fmt.Sprintf(", baked in %s", took.Round(time.Second)))
	return path
}

// useGolden reports whether the golden image at path is there, and marks it used now (its mtime
// is its last use, for the cache's least-recently-used order).
func (p *Provider) useGolden(path string) bool {
	now := time.Now()
	return os.Chtimes(path, now, now) == nil
}

// goldenMessage is ImageReady's message for a repave that boots a golden image.
func goldenMessage(key string, req controller.RepaveRequest, base imagecache.Image) string {
	return fmt.Sprintf("Golden image %s: the profile's installation baked on %s (%s)", short(key), req.ImageURL, base.Digest)
}

// bakeMessage is ImageReady's message while a bake runs: how long, and the bake VM's console.
func bakeMessage(b *bakeJob, key string) string {
	console := readConsoleEnd(filepath.Join(b.dir, filenames.ConsoleFile))
	msg := fmt.Sprintf("Baking the profile's installation into golden image %s (bake VM up %s)", short(key), time.Since(b.started).Round(time.Second))
	if line := lastLine(console); line != "" {
		msg += "; console: " + line
	}
	return msg
}

// short is a key's prefix, for messages and names.
func short(key string) string { return key[:16] }

// consoleDiagnosis is the tail of a console, for a failure message.
func consoleDiagnosis(console []byte, path string) string {
	return fmt.Sprintf("\n--- last lines of the serial console (%s) ---\n%s", path, cloudinit.ConsoleTail(console, 25, 3000))
}

// removeBakes stops the bake VMs a crash left and removes their directories and addresses; the
// next repave that needs one of their golden images bakes it again. It runs at startup.
func (p *Provider) removeBakes(ctx context.Context) error {
	var errs []error
	dirs, _ := os.ReadDir(p.layout.BakesDir())
	for _, d := range dirs {
		dir := filepath.Join(p.layout.BakesDir(), d.Name())
		p.cfg.Log.Info("garbage: removing a bake that did not finish", "dir", dir)
		errs = append(errs, p.cleanBake(ctx, dir))
	}
	// A golden image being flattened when the crash came (qemu.Flatten's temp files).
	temps, _ := filepath.Glob(filepath.Join(p.layout.GoldenDir(), ".*.tmp-*"))
	for _, tmp := range temps {
		errs = append(errs, os.Remove(tmp))
	}
	allocations, err := p.ipam.Allocations()
	errs = append(errs, err)
	for _, owner := range allocations {
		if strings.HasPrefix(owner, bakeOwnerPrefix) {
			errs = append(errs, p.ipam.Release(owner))
		}
	}
	return errors.Join(errs...)
}
