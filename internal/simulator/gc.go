package simulator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gofrs/flock"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/imagecache"
)

// LockWorkDir makes this process the one simulator using workDir: two simulators on one work
// directory would fight over the same VMs, taps and addresses. It fails at once, naming the
// process that holds the directory; release unlocks it (the kernel does too if the process dies).
func LockWorkDir(workDir string) (release func(), err error) {
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating work directory: %w", err)
	}
	path := filepath.Join(workDir, filenames.LockFile)
	l := flock.New(path, flock.SetFlag(os.O_CREATE|os.O_RDWR), flock.SetPermissions(0o644))
	ok, err := l.TryLock()
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if !ok {
		holder, _ := os.ReadFile(path)
		return nil, fmt.Errorf("another simulator (pid %s) already uses the work directory %s: stop it first, "+
			"or give this one its own --work-dir (and --bridge)", strings.TrimSpace(string(holder)), workDir)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		_ = l.Unlock()
		return nil, fmt.Errorf("recording this simulator in %s: %w", path, err)
	}
	return func() { _ = l.Unlock() }, nil
}

// CollectGarbage removes what this host holds for Servers it no longer holds (mine reports false:
// deleted, owned by another host, or evacuated from this one, which fences a host that returns
// after its Servers were handed over) — VM directories
// (with their QEMU processes, found by pidfile), QMP sockets, IP allocations and taps on this
// host's bridge — and logs each removal. It runs at startup, before any reconcile: a crash or
// SIGKILL may have come between a Server's deletion and its release. inScope limits it to the
// namespaces this host watches (a Server outside them cannot be looked up). It removes what
// interrupted downloads and removals left in the image and media caches
// (imagecache.Cache.CollectDebris). Last, it prunes the image cache (prune).
func (p *Provider) CollectGarbage(ctx context.Context, mine func(context.Context, types.NamespacedName) (bool, error),
	inScope func(namespace string) bool) error {
	gone := func(server types.NamespacedName) (bool, error) {
		if !inScope(server.Namespace) {
			return false, nil
		}
		ok, err := mine(ctx, server)
		return !ok, err
	}
	var errs []error
	if err := p.removeBakes(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, c := range []*imagecache.Cache{p.images, p.media} {
		removed, err := c.CollectDebris()
		for _, dir := range removed {
			p.cfg.Log.Info("garbage: removing what an interrupted download or removal left in a cache", "dir", dir)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	kept := map[string]string{} // taps of the VM directories that stay, to their Servers
	namespaces, _ := os.ReadDir(p.layout.VMsDir())
	for _, n := range namespaces {
		servers, _ := os.ReadDir(filepath.Join(p.layout.VMsDir(), n.Name()))
		for _, s := range servers {
			server := types.NamespacedName{Namespace: n.Name(), Name: s.Name()}
			isGone, err := gone(server)
			switch {
			case err != nil:
				errs = append(errs, err)
				kept[hostnet.TapName(identity(server))] = identity(server)
			case isGone:
				p.cfg.Log.Info("garbage: releasing the VM of a Server this host no longer holds", "server", identity(server))
				if err := p.Release(ctx, server); err != nil {
					errs = append(errs, err)
				}
			default:
				kept[hostnet.TapName(identity(server))] = identity(server)
			}
		}
	}
	allocations, err := p.ipam.Allocations()
	if err != nil {
		errs = append(errs, err)
	}
	for addr, owner := range allocations {
		ns, name, ok := strings.Cut(owner, "/")
		if !ok {
			continue
		}
		server := types.NamespacedName{Namespace: ns, Name: name}
		if isGone, err := gone(server); err != nil {
			errs = append(errs, err)
		} else if isGone {
			p.cfg.Log.Info("garbage: releasing the address of a Server this host no longer holds", "server", owner, "ip", addr)
			if err := p.ipam.Release(owner); err != nil {
				errs = append(errs, err)
			}
		} else {
			kept[hostnet.TapName(owner)] = owner
		}
	}
	taps, err := p.net.BridgeTaps()
	if err != nil {
		errs = append(errs, err)
	}
	for _, tap := range taps {
		if _, ok := kept[tap]; !ok {
			p.cfg.Log.Info("garbage: deleting a tap no Server uses", "tap", tap, "bridge", p.cfg.Network.Bridge)
			if err := p.net.DeleteTap(tap); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := p.removeFaultFetches(); err != nil {
		errs = append(errs, err)
	}
	// Injected network faults: those of the VMs kept are set again, the others' removed.
	if err := p.restoreNetworkFaults(kept, taps); err != nil {
		errs = append(errs, err)
	}
	// The images of the VMs released above may be unused now: bring the image cache under
	// --image-cache-size (prune keeps whatever the remaining disks use).
	p.prune()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("collecting garbage: %w", err)
	}
	return nil
}
