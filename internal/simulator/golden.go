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

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// Golden images. A profile's installation (spec.installation) is the same on every server, so it
// is run once, in a bake VM on the cached OS image, and the result kept as a golden image; repaves
// then boot the golden image and run only their per-instance user-data. A golden image is named by
// its key: the bake's format, the OS image's digest, the namespace (a tenant never boots what
// another tenant's bake made, even for the same text) and the installation's bytes.

// DefaultGoldenImagesPerNamespace is how many golden images a namespace keeps on a host by default
// (--golden-images-per-namespace): each distinct installation of a tenant is one, as large as the
// OS image plus what the installation wrote.
const DefaultGoldenImagesPerNamespace = 4

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

// goldenPath is where the golden image of key, baked for namespace, is kept: its file name starts
// with the namespace (a DNS label: no '.'), so the namespace's images can be counted.
func (p *Provider) goldenPath(namespace, key string) string {
	return filepath.Join(p.layout.GoldenDir(), namespace+"."+key+".qcow2")
}

// goldenNamespace is the namespace a golden image's file name starts with ("" for none).
func goldenNamespace(path string) string {
	ns, _, ok := strings.Cut(filepath.Base(path), ".")
	if !ok || len(ns) == 64 { // a bare <key>.qcow2 of an older layout
		return ""
	}
	return ns
}

// bakeJob is a bake running in the background. Nobody waits for it: the repave that started it
// installs the stock way, and the repaves after it boot its golden image.
type bakeJob struct {
	started time.Time
	dir     string // the bake's directory (disk, seed, console), gone once it ended
}

// bakeFailure is a bake's failed verdict, kept so that repaves of a broken installation do not
// bake it again and again (they say why instead), until bakeRetryDelay passed.
type bakeFailure struct {
	at  time.Time
	err error
}

// bakeRetryDelay is how long after a failed bake the next repave of its key bakes it again.
const bakeRetryDelay = 10 * time.Minute

// bootPlan is what a new installation boots: the image its disk overlays and the user-data.
type bootPlan struct {
	image    string
	userData []byte
}

// golden is the image step of a repave whose profile has an installation. With its golden image in
// place, the repave boots it and runs only the per-instance user-data. Otherwise it never waits
// for a bake: it boots the OS image with the installation and the per-instance user-data together
// (the stock way), and the golden image is baked in the background, when the host has capacity for
// it, for the repaves after it. ImageReady says which, and why no golden image is used.
func (p *Provider) golden(ctx context.Context, st *status, req controller.RepaveRequest, base imagecache.Image) bootPlan {
	key := goldenKey(base.Digest, req.Server.Namespace, req.Installation)
	path := p.goldenPath(req.Server.Namespace, key)
	p.mu.Lock()
	_, baking := p.bakes[key] // its image may be in place already, its cleanup not done
	p.mu.Unlock()
	var damaged string
	if !baking && p.useGolden(path) {
		_, err := qemu.InspectBaseImage(ctx, path)
		if err == nil {
			st.set(stargatev1.ConditionImageReady, controller.StepDone, "GoldenImage", goldenMessage(key, req, base))
			return bootPlan{image: path, userData: req.UserData}
		}
		// Damaged since it was baked (by hand, a full disk): not kept; baked again below.
		p.cfg.Log.Info("removing a damaged golden image", "key", short(key), "error", err.Error())
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		damaged = fmt.Sprintf("GoldenImageDamaged: golden image %s could not be booted (%v) and was removed; ", short(key), err)
	}
	userData, err := cloudinit.CombineUserData(req.Installation, req.UserData)
	if err != nil {
		st.failStep(stargatev1.ConditionCloudInitReady, "SeedFailed", fmt.Sprintf("Combining spec.installation with the per-instance user-data failed: %v", err))
		return bootPlan{}
	}
	img := st.step(stargatev1.ConditionImageReady)
	st.set(stargatev1.ConditionImageReady, controller.StepDone, img.Reason, img.Message+"; "+damaged+"this repave runs the profile's installation "+
		"itself (no golden image yet): "+p.startBake(key, req, base))
	return bootPlan{image: base.Path, userData: userData}
}

// queuedBake is a bake waiting for room on the host.
type queuedBake struct {
	req   controller.RepaveRequest
	base  imagecache.Image
	since time.Time
}

const (
	// bakeQueueDelay is the least a bake waits in the queue, so that the repave that asked for it
	// has started its own guest (and counts as installing) before the bake may take the CPUs.
	bakeQueueDelay = 10 * time.Second
	// bakeQueuePoll is how often the queued bakes are looked at (Start).
	bakeQueuePoll = 2 * time.Second
)

// startBake queues the bake of key unless it runs already or failed a short while ago, and says
// which, for ImageReady's message. A queued bake starts in the background (startQueuedBakes) once
// the host has room for it.
func (p *Provider) startBake(key string, req controller.RepaveRequest, base imagecache.Image) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b, ok := p.bakes[key]; ok {
		return bakeMessage(b, key)
	}
	if f, ok := p.bakeFailures[key]; ok && time.Since(f.at) < bakeRetryDelay {
		return fmt.Sprintf("the bake of golden image %s failed %s ago, and is tried again by a repave after %s (nothing was cached): %v",
			short(key), time.Since(f.at).Round(time.Second), f.at.Add(bakeRetryDelay).Format(time.TimeOnly), f.err)
	}
	if _, ok := p.queuedBakes[key]; !ok {
		p.queuedBakes[key] = queuedBake{req: req, base: base, since: time.Now()}
	}
	return fmt.Sprintf("golden image %s will be baked in the background as soon as the host has room for it (no guest installing "+
		"on its CPUs, and --max-parallel, --max-memory), for the repaves after this one", short(key))
}

// startQueuedBakes starts the queued bakes the host has room for: a bake never competes for the
// CPUs with the guests installing now (under TCG a repave waits on its CPUs; the first repave of
// an installation must not be slowed by the bake it asked for), and it holds capacity like a
// repave. With no guest installing, a bake starts whatever its CPUs.
func (p *Provider) startQueuedBakes() {
	p.mu.Lock()
	defer p.mu.Unlock()
	busy := 0
	for _, server := range p.watch.servers() {
		busy += max(p.guestCPUs[server], 1)
	}
	for key, q := range p.queuedBakes {
		cpus := max(q.req.CPUs, 1)
		if time.Since(q.since) < bakeQueueDelay || (busy > 0 && busy+cpus > p.hostCPUs) {
			continue
		}
		if p.capacity != nil && !p.capacity.TryHold(bakeOwnerPrefix+short(key), q.req.MemoryMiB<<20) {
			continue
		}
		delete(p.queuedBakes, key)
		p.runBakeLocked(key, q.req, q.base)
		busy += cpus
	}
}

// runBakeLocked runs the bake of key in the background, holding the capacity startQueuedBakes
// took; p.mu is held.
func (p *Provider) runBakeLocked(key string, req controller.RepaveRequest, base imagecache.Image) {
	owner := bakeOwnerPrefix + short(key)
	b := &bakeJob{started: time.Now(), dir: filepath.Join(p.layout.BakesDir(), key)}
	p.bakes[key] = b
	p.bakeWG.Add(1)
	go func() {
		defer p.bakeWG.Done()
		ctx := p.watch.ctx // the provider's: a bake stops with the manager
		err := p.bake(ctx, b, key, req, base)
		if p.capacity != nil {
			p.capacity.Release(owner)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.bakes, key)
		switch {
		case err == nil, errors.Is(err, errRetry), ctx.Err() != nil:
			delete(p.bakeFailures, key)
		default:
			p.bakeFailures[key] = bakeFailure{at: time.Now(), err: err}
			p.cfg.Log.Info("golden image bake failed; nothing was cached", "key", short(key), "for", identity(req.Server), "error", err.Error())
		}
	}()
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

// bakeMessage says how long a bake runs, and its console's last line.
func bakeMessage(b *bakeJob, key string) string {
	console := readConsoleEnd(filepath.Join(b.dir, filenames.ConsoleFile))
	msg := fmt.Sprintf("golden image %s is being baked in the background (bake VM up %s)", short(key), time.Since(b.started).Round(time.Second))
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
