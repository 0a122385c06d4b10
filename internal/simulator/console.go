package simulator

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/consolelog"
)

// Every VM's serial console is kept within Config.ConsoleSize (--console-size) by
// pkg/consolelog: the enforcer below drops the middle of a console that outgrew it, keeping the
// head of the boot, the newest output and the lines the host waits for. It runs for every VM
// directory, whether this process started the VM or found it after a restart, and for bakes
// (awaitBake caps its own console on every poll); readers read through consoleLog, never the
// whole file.

// consoleCapInterval is how often every console is brought back within its size: a console
// exceeds it by what its guest writes in that time, at most.
const consoleCapInterval = time.Second

// consoleTailBytes is how much of a console's end is read for its last line.
const consoleTailBytes = 256 << 10

// consoleLog is the console of the VM (or bake VM) in dir, capped at --console-size.
func (p *Provider) consoleLog(dir string) consolelog.Log {
	return consolelog.ForVM(dir, p.cfg.ConsoleSize, cloudinit.IsMarkerLine)
}

// consoleCaps remembers, per console, what the enforcer last logged, so that a flooding guest or a
// failing file system is logged once, not every second.
type consoleCaps struct {
	mu      sync.Mutex
	capped  map[string]bool   // consoles already reported as over their size
	lastErr map[string]string // the last error reported per console
}

// capConsoles keeps the console of every VM directory within its size until ctx ends.
func (p *Provider) capConsoles(ctx context.Context) {
	tick := time.NewTicker(consoleCapInterval)
	defer tick.Stop()
	for {
		p.capVMConsoles()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// capVMConsoles is one pass over the VM directories. Each console is capped under its Server's
// lock, so that no new boot (which empties the console and removes its markers) comes between
// reading the bytes to drop and dropping them; a Server busy now is capped on the next pass.
func (p *Provider) capVMConsoles() {
	namespaces, _ := os.ReadDir(p.layout.VMsDir())
	for _, n := range namespaces {
		servers, _ := os.ReadDir(filepath.Join(p.layout.VMsDir(), n.Name()))
		for _, s := range servers {
			server := types.NamespacedName{Namespace: n.Name(), Name: s.Name()}
			unlock, ok := p.tryLock(server)
			if !ok {
				continue
			}
			p.capConsole(identity(server), p.VMDir(server))
			unlock()
		}
	}
}

// capConsole brings the console of the VM in dir within its size; who names the VM in the log.
func (p *Provider) capConsole(who, dir string) {
	dropped, err := p.consoleLog(dir).Enforce()
	c := &p.caps
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.capped == nil {
		c.capped, c.lastErr = map[string]bool{}, map[string]string{}
	}
	switch {
	case err != nil && c.lastErr[dir] != err.Error():
		c.lastErr[dir] = err.Error()
		p.cfg.Log.Error(err, "cannot keep a console within --console-size", "vm", who)
	case err == nil:
		delete(c.lastErr, dir)
	}
	if dropped > 0 && !c.capped[dir] {
		c.capped[dir] = true
		p.cfg.Log.Info("console outgrew --console-size: keeping the head of the boot and the newest output", "vm", who,
			"consoleSize", formatBytes(p.cfg.ConsoleSize), "dropped", formatBytes(dropped))
	}
}

// forget drops what was logged about the console in dir: its VM is gone.
func (c *consoleCaps) forget(dir string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.capped, dir)
	delete(c.lastErr, dir)
}

// readConsoleEnd is the last consoleTailBytes of a console, for its last line.
func readConsoleEnd(path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, max(0, fi.Size()-consoleTailBytes), consoleTailBytes))
	return b
}
