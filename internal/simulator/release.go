package simulator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/pkg/hostnet"
)

// Release stops the VM and removes its tap, IP address, disk, seed, console and socket.
func (p *Provider) Release(ctx context.Context, server types.NamespacedName) error {
	defer p.lock(server)()
	p.unwatch(server)
	p.mu.Lock()
	delete(p.guestCPUs, server)
	p.mu.Unlock()
	dir := p.VMDir(server)
	qmp, err := p.layout.QMPSocket(dir)
	if err != nil {
		return err
	}
	if err := p.vms.Stop(ctx, dir, qmp, 10*time.Second); err != nil {
		return err
	}
	if err := p.net.DeleteTap(hostnet.TapName(identity(server))); err != nil {
		return err
	}
	if err := p.ipam.Release(identity(server)); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing VM directory: %w", err)
	}
	p.caps.forget(dir)
	_ = os.Remove(filepath.Dir(dir)) // the namespace directory, when empty
	if err := os.Remove(qmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing QMP socket: %w", err)
	}
	p.cfg.Log.Info("server released", "server", identity(server))
	return nil
}

// Teardown removes the bridge and NAT rules (VMs must be released first).
func (p *Provider) Teardown() error { return p.net.Teardown() }

// ReleaseAll releases every VM found in the work directory and stops every bake, then removes the bridge and NAT
// rules: what `simulator --teardown` does to leave a host as it found it.
func (p *Provider) ReleaseAll(ctx context.Context) error {
	namespaces, _ := os.ReadDir(p.layout.VMsDir())
	var errs []error
	for _, n := range namespaces {
		servers, _ := os.ReadDir(filepath.Join(p.layout.VMsDir(), n.Name()))
		for _, s := range servers {
			if err := p.Release(ctx, types.NamespacedName{Namespace: n.Name(), Name: s.Name()}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := p.removeBakes(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := p.Teardown(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
