package simulator

import (
	"context"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/consolelog"
	"stargate.io/stargate/pkg/filenames"
)

// A running repave is polled every few seconds; a console watcher tells the controller the moment
// its guest printed the readiness line (or its VM exited), so the Operation says Succeeded then,
// not at the next poll.

// consoleWatchInterval is how often a watcher looks at the console for new bytes.
const consoleWatchInterval = 200 * time.Millisecond

// watchers are the provider's console watchers, at most one per Server.
type watchers struct {
	ctx      context.Context // the provider's; ends with Start's context
	cancel   context.CancelFunc
	interval time.Duration
	// consoleSize is the consoles' --console-size (consolelog.DefaultSize when 0): how far behind a
	// watcher may read.
	consoleSize int64
	changes     chan types.NamespacedName
	wg          sync.WaitGroup

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

// Start keeps every console within its size and starts the queued golden image bakes the host has
// room for, until ctx ends; then it stops every console watcher and bake and waits for them
// (manager.Runnable: controller.Setup adds the provider to the manager).
func (p *Provider) Start(ctx context.Context) error {
	capped := make(chan struct{})
	go func() {
		defer close(capped)
		p.capConsoles(ctx) // console.go
	}()
	p.endTimedFaults(ctx) // hang.go: a hang or partition that ended while the simulator was down
	tick := time.NewTicker(bakeQueuePoll)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			p.startQueuedBakes()
			p.endTimedFaults(ctx)
		case <-ctx.Done():
			p.watch.stopAll() // also the bakes' context
			p.bakeWG.Wait()
			<-capped
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
		log := consolelog.Log{Path: console, Markers: filepath.Join(filepath.Dir(console), filenames.ConsoleMarkersFile),
			Size: w.consoleSize, Keep: cloudinit.IsMarkerLine}
		if followConsole(ctx, log, instanceID, w.interval, running) {
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

// followConsole reads what is appended to the console every interval until a line reports
// instanceID ready, or the VM no longer runs (true: worth telling), or ctx ends (false). A line
// dropped from a console over its size before the watcher read it comes from the markers file.
func followConsole(ctx context.Context, console consolelog.Log, instanceID string, interval time.Duration, running func() bool) bool {
	follower := console.Follow()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		// Whether it runs is asked before reading, so the last bytes of a VM that exited are
		// read before its exit is reported.
		alive := running()
		if lines, err := follower.Read(); err == nil && cloudinit.ParseGuestResult(lines, instanceID).Done {
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
