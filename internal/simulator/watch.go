package simulator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
)

// A running repave is polled every few seconds; a console watcher tells the controller the moment
// its guest printed the readiness line (or its VM exited), so the Operation says Succeeded then,
// not at the next poll.

// consoleWatchInterval is how often a watcher looks at the console for new bytes.
const consoleWatchInterval = 200 * time.Millisecond

// maxCarry bounds the unfinished line a watcher keeps between reads: a readiness line is a few
// KiB, a longer line without a newline is not one.
const maxCarry = 64 << 10

// watchers are the provider's console watchers, at most one per Server.
type watchers struct {
	ctx      context.Context // the provider's; ends with Start's context
	cancel   context.CancelFunc
	interval time.Duration
	changes  chan types.NamespacedName
	wg       sync.WaitGroup

	mu       sync.Mutex
	byServer map[types.NamespacedName]*consoleWatch
}

// consoleWatch is one watcher: a guest installing one instance-id.
type consoleWatch struct {
	instanceID string
	cancel     context.CancelFunc
	done       chan struct{}
}

func newWatchers(interval time.Duration) *watchers {
	ctx, cancel := context.WithCancel(context.Background())
	return &watchers{ctx: ctx, cancel: cancel, interval: interval,
		changes: make(chan types.NamespacedName, 64), byServer: map[types.NamespacedName]*consoleWatch{}}
}

var _ controller.Notifier = (*Provider)(nil)

// Changes delivers the Servers whose guest finished installing or whose VM exited
// (controller.Notifier).
func (p *Provider) Changes() <-chan types.NamespacedName { return p.watch.changes }

// Start starts the queued golden image bakes the host has room for, until ctx ends; then it stops
// every console watcher and bake and waits for them (manager.Runnable: controller.Setup adds the
// provider to the manager).
func (p *Provider) Start(ctx context.Context) error {
	tick := time.NewTicker(bakeQueuePoll)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			p.startQueuedBakes()
		case <-ctx.Done():
			p.watch.stopAll() // also the bakes' context
			p.bakeWG.Wait()
			return nil
		}
	}
}

// NeedLeaderElection is false: the VMs of this host are watched whoever leads.
func (p *Provider) NeedLeaderElection() bool { return false }

// watchGuest follows the console of server's VM until the guest reports instanceID ready or the
// VM exits. Idempotent: a watcher for the same instance-id is kept, one for another is replaced.
func (p *Provider) watchGuest(server types.NamespacedName, instanceID, dir string) {
	running := func() bool {
		st, err := p.vms.Status(dir)
		return err != nil || st.Running // an unreadable pidfile is no proof of an exit
	}
	p.watch.start(server, instanceID, filepath.Join(dir, filenames.ConsoleFile), running)
}

// unwatch stops server's watcher, if any, and waits for it: its VM is being stopped or released.
func (p *Provider) unwatch(server types.NamespacedName) { p.watch.stop(server) }

func (w *watchers) start(server types.NamespacedName, instanceID, console string, running func() bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if cur, ok := w.byServer[server]; ok {
		if cur.instanceID == instanceID {
			return
		}
		cur.cancel() // a new installation replaced the one it watched
		delete(w.byServer, server)
	}
	if w.ctx.Err() != nil {
		return // the provider stopped
	}
	ctx, cancel := context.WithCancel(w.ctx)
	cw := &consoleWatch{instanceID: instanceID, cancel: cancel, done: make(chan struct{})}
	w.byServer[server] = cw
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer close(cw.done)
		defer cancel()
		if followConsole(ctx, console, instanceID, w.interval, running) {
			w.notify(server)
		}
		w.mu.Lock()
		if w.byServer[server] == cw {
			delete(w.byServer, server)
		}
		w.mu.Unlock()
	}()
}

// notify tells the controller that something changed for servers, without ever blocking the
// provider: when the buffer is full, the poll catches up.
func (w *watchers) notify(servers ...types.NamespacedName) {
	for _, server := range servers {
		select {
		case w.changes <- server:
		default:
		}
	}
}

func (w *watchers) stop(server types.NamespacedName) {
	w.mu.Lock()
	cw, ok := w.byServer[server]
	delete(w.byServer, server)
	w.mu.Unlock()
	if ok {
		cw.cancel()
		<-cw.done
	}
}

// servers are the Servers whose guest is being watched installing.
func (w *watchers) servers() []types.NamespacedName {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]types.NamespacedName, 0, len(w.byServer))
	for server := range w.byServer {
		out = append(out, server)
	}
	return out
}

func (w *watchers) stopAll() {
	w.cancel()
	w.wg.Wait()
}

// followConsole reads what is appended to the console file every interval until a line reports
// instanceID ready, or the VM no longer runs (true: worth telling), or ctx ends (false).
func followConsole(ctx context.Context, path, instanceID string, interval time.Duration, running func() bool) bool {
	t := &tail{path: path}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		// Whether it runs is asked before reading, so the last bytes of a VM that exited are
		// read before its exit is reported.
		alive := running()
		if lines, err := t.read(); err == nil && cloudinit.ParseGuestResult(lines, instanceID).Done {
			return true
		}
		if !alive {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ticker.C:
		}
	}
}

// tail reads a growing file from where it stopped, in whole lines.
type tail struct {
	path   string
	offset int64
	carry  []byte // the last, unfinished line
}

// read returns the complete lines appended since the last read. A file that shrank was started
// anew (QEMU truncates the console when it starts): it is read from its beginning.
func (t *tail) read() ([]byte, error) {
	f, err := os.Open(t.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < t.offset {
		t.offset, t.carry = 0, nil
	}
	if fi.Size() == t.offset {
		return nil, nil
	}
	data, err := io.ReadAll(io.NewSectionReader(f, t.offset, fi.Size()-t.offset))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	t.offset += int64(len(data))
	data = append(t.carry, data...)
	end := bytes.LastIndexByte(data, '\n') + 1
	t.carry = append([]byte(nil), data[end:]...)
	if len(t.carry) > maxCarry {
		t.carry = t.carry[len(t.carry)-maxCarry:]
	}
	return data[:end], nil
}

// watched has an installation still in progress watched, so that the controller hears of its end
// at once, and returns its status unchanged.
func (p *Provider) watched(req controller.RepaveRequest, dir string, st controller.RepaveStatus) controller.RepaveStatus {
	if !st.Done && !st.Failed {
		p.mu.Lock()
		p.guestCPUs[req.Server] = req.CPUs
		p.mu.Unlock()
		p.watchGuest(req.Server, req.InstanceID, dir)
	}
	return st
}
