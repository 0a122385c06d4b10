package simulator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
)

// An injected Hang stops the VM's vCPUs (QMP stop) and records when it ends in the VM directory;
// the VM is resumed (QMP cont) once that time has passed, by whichever comes first: a poll of its
// repave or the provider's loop, which also runs at startup. Level-triggered, so that a simulator
// killed mid-hang resumes the VM when it comes back rather than leaving it stopped forever.

// hang stops the VM in dir until d from now (longer if it hangs already).
func (p *Provider) hang(dir, qmp string, d time.Duration) error {
	until := time.Now().Add(d)
	if cur, ok := hangUntil(dir); ok && cur.After(time.Now()) {
		until = cur.Add(d)
	}
	// Recorded first: a VM stopped with no record of its end would never be resumed.
	if err := os.WriteFile(filepath.Join(dir, filenames.HangFile), []byte(until.UTC().Format(time.RFC3339Nano)+"\n"), 0o600); err != nil {
		return fmt.Errorf("recording the hang's end: %w", err)
	}
	return p.vms.Pause(qmp)
}

// hangUntil is when the hang of the VM in dir ends, if it hangs.
func hangUntil(dir string) (time.Time, bool) {
	b, err := os.ReadFile(filepath.Join(dir, filenames.HangFile))
	if err != nil {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	if err != nil {
		return time.Time{}, true // unreadable: ended, so that it is resumed
	}
	return t, true
}

// resumeHang resumes the VM in dir if its hang has ended; a VM that is gone needs no resuming.
func (p *Provider) resumeHang(dir, qmp string) error {
	until, ok := hangUntil(dir)
	if !ok || time.Now().Before(until) {
		return nil
	}
	if vm, err := p.vms.Status(dir); err != nil {
		return err
	} else if vm.Running {
		if err := p.vms.Resume(qmp); err != nil {
			return fmt.Errorf("resuming the VM after its injected hang: %w", err)
		}
		p.cfg.Log.Info("fault: hang ended, VM resumed", "dir", dir)
	}
	if err := os.Remove(filepath.Join(dir, filenames.HangFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the ended hang: %w", err)
	}
	return nil
}

// endTimedFaults resumes every VM of the host whose hang has ended, lifts every partition that
// has (netfaults.go), and strikes or flips node faults (nodefaults.go). A Server busy in another
// call is left to the next round.
func (p *Provider) endTimedFaults(ctx context.Context) {
	namespaces, _ := os.ReadDir(p.layout.VMsDir())
	for _, n := range namespaces {
		servers, _ := os.ReadDir(filepath.Join(p.layout.VMsDir(), n.Name()))
		for _, s := range servers {
			server := types.NamespacedName{Namespace: n.Name(), Name: s.Name()}
			dir := p.VMDir(server)
			_, hangs := hangUntil(dir)
			_, statErr := os.Stat(filepath.Join(dir, filenames.NetworkFaultsFile))
			if !hangs && statErr != nil {
				continue
			}
			unlock, ok := p.tryLock(server)
			if !ok {
				continue
			}
			qmp, err := p.layout.QMPSocket(dir)
			if err == nil {
				tap := hostnet.TapName(identity(server))
				err = errors.Join(p.resumeHang(dir, qmp), p.endPartition(dir, tap, qmp), p.updateNodeFault(ctx, server, dir, tap, qmp))
			}
			unlock()
			if err != nil {
				p.cfg.Log.Error(err, "ending an injected hang or network partition, or updating a node fault", "server", identity(server))
			}
		}
	}
}

// hangNote says, for a step's message, until when the VM in dir is stopped by a hang.
func hangNote(dir string) string {
	if until, ok := hangUntil(dir); ok && time.Now().Before(until) {
		return fmt.Sprintf("the VM is stopped by an injected Hang (QMP stop) until %s; ", until.UTC().Format(time.RFC3339))
	}
	return ""
}
