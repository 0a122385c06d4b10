// Package simulator is the simulator datacenter: a controller.Provider that turns each Server into
// a QEMU VM on this host, on a bridge with NAT, installed from a cloud image with cloud-init.
//
// Files by job: provider.go (Provider, New, Inspect, PowerOff), repave.go (the repave flow),
// blank.go (the machine of a Server never repaved),
// images.go (background image downloads), power.go (PowerOn, Shutdown), media.go (boot override
// and virtual CD), release.go (Release, ReleaseAll, Teardown), layout.go (where things live on the
// host), status.go (step-by-step status), watch.go (console watchers that tell the controller
// when a guest finished), console.go (every console kept within --console-size).
package simulator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/consolelog"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

// Config configures the simulator host.
type Config struct {
	// WorkDir holds images, VMs, IP allocations and sockets; default filenames.DefaultWorkDir.
	WorkDir string
	// Network is the bridge VMs attach to.
	Network hostnet.Config
	// FirstIP and LastIP bound the addresses handed to VMs (default .11 to .254 of the subnet).
	FirstIP, LastIP netip.Addr
	// DNS servers given to guests.
	DNS []netip.Addr
	// Accel must be resolved (kvm or tcg); see qemu.ResolveAccel.
	Accel qemu.Accel
	// QEMU binary; default qemu-system-x86_64.
	QEMU string
	// BootTimeout: a guest that shows no sign of cloud-init on its console this long after QEMU
	// started is declared hung (default 5m).
	BootTimeout time.Duration
	// BakeTimeout bounds a golden image bake; 0 means DefaultBakeTimeout.
	BakeTimeout time.Duration
	// Images says which image URLs this host fetches and within which limits; the zero value
	// fetches http(s) from public addresses only, with the imagecache defaults.
	Images ImagePolicy
	// ImageCacheSize bounds the disk space of the cached OS images and golden images together
	// (--image-cache-size): over it, the least recently used are removed, but never one in use
	// (see prune). 0, the default, means no limit.
	ImageCacheSize int64
	// GoldenImagesPerNamespace bounds the golden images each namespace keeps on this host
	// (--golden-images-per-namespace): after a bake, the namespace's least recently used ones
	// that no VM uses are removed (pruneNamespace). 0 means no limit.
	GoldenImagesPerNamespace int
	// ConsoleSize bounds the disk space of each VM's serial console, bake VMs' too
	// (--console-size): beyond it, the middle is dropped, keeping the head of the boot, the newest
	// output and the lines the host waits for (see console.go). 0 means
	// consolelog.DefaultSize; less than consolelog.MinSize is refused.
	ConsoleSize int64
	// APIServer is the management cluster's API server as this host reaches it (a URL or
	// host:port): where a NoRouteToAPIServer fault cuts a guest off (netfaults.go). Empty: the
	// fault cuts nothing and says so.
	APIServer string
	// Log receives what an operator of the host wants to know: VMs started, servers released.
	Log logr.Logger
}

// Provider is the simulator datacenter.
type Provider struct {
	cfg    Config
	images *imagecache.Cache
	media  *imagecache.Cache // virtual CDs (media.go)
	ipam   *ipam.Pool
	net    *hostnet.Network
	vms    qemu.VMs
	layout Layout
	watch  *watchers // console watchers (watch.go)

	mu      sync.Mutex
	locks   map[types.NamespacedName]*sync.Mutex
	fetches map[string]*imageFetch
	// faultFetches are the downloads through injected image faults, by instance-id, and
	// imageFaultsStruck the installations whose download through them is done (imagefaults.go).
	faultFetches      map[string]*faultFetch
	imageFaultsStruck map[string]bool
	// cluster sees Nodes and tells Servers, for node faults (nodefaults.go); nil: they are not
	// supported.
	cluster Cluster
	// nft: this host has nft, which the network faults at a tap need (netfaults.go).
	nft bool
	// bakes are the golden image bakes running, bakeFailures the failed ones not to retry yet
	// (golden.go); bakeWG waits for the bakes' goroutines as the provider stops.
	bakes        map[string]*bakeJob
	bakeFailures map[string]bakeFailure
	queuedBakes  map[string]queuedBake
	bakeWG       sync.WaitGroup
	// guestCPUs are the CPUs of each Server's guest, recorded when it is watched installing (a
	// queued bake waits for room among them); hostCPUs are this host's.
	guestCPUs map[types.NamespacedName]int
	hostCPUs  int
	// bakesStarted counts bakes, for tests (concurrent repaves must share one).
	bakesStarted atomic.Int64
	// capacity is the host's budget, shared with the controller's Operations (ShareCapacity);
	// nil, without a controller, means no bound.
	capacity controller.HostCapacity

	pins imagePins   // images prune must keep (prune.go)
	caps consoleCaps // what the console enforcer logged (console.go)
}

var (
	_ controller.Provider       = (*Provider)(nil)
	_ controller.CapacitySharer = (*Provider)(nil)
)

// ShareCapacity makes the host's own VMs (golden image bakes) count in the controller's capacity
// (controller.CapacitySharer). Call it before the first repave.
func (p *Provider) ShareCapacity(c controller.HostCapacity) { p.capacity = c }

// New prepares the simulator host: it sets up the bridge, NAT and directories.
func New(cfg Config) (*Provider, error) {
	if cfg.WorkDir == "" {
		cfg.WorkDir = filenames.DefaultWorkDir
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 5 * time.Minute
	}
	if cfg.ConsoleSize == 0 {
		cfg.ConsoleSize = consolelog.DefaultSize
	}
	if cfg.ConsoleSize < consolelog.MinSize {
		return nil, fmt.Errorf("console size %d bytes is below the least, %s", cfg.ConsoleSize, formatBytes(consolelog.MinSize))
	}
	if cfg.Accel != qemu.AccelKVM && cfg.Accel != qemu.AccelTCG {
		return nil, fmt.Errorf("accelerator must be resolved to kvm or tcg, not %q", cfg.Accel)
	}
	subnet := cfg.Network.Subnet()
	if !cfg.FirstIP.IsValid() {
		cfg.FirstIP = ipam.NthAddr(subnet, 11)
	}
	if !cfg.LastIP.IsValid() {
		cfg.LastIP = ipam.LastUsable(subnet)
	}
	if !subnet.Contains(cfg.FirstIP) || !subnet.Contains(cfg.LastIP) || cfg.LastIP.Less(cfg.FirstIP) {
		return nil, fmt.Errorf("IP range %s-%s is not inside the subnet %s", cfg.FirstIP, cfg.LastIP, subnet)
	}
	if cfg.Network.Gateway.Addr().Compare(cfg.FirstIP) >= 0 && cfg.Network.Gateway.Addr().Compare(cfg.LastIP) <= 0 {
		return nil, fmt.Errorf("IP range %s-%s contains the bridge address %s", cfg.FirstIP, cfg.LastIP, cfg.Network.Gateway.Addr())
	}
	network, err := hostnet.New(cfg.Network)
	if err != nil {
		return nil, err
	}
	layout := Layout{WorkDir: cfg.WorkDir}
	for _, d := range []string{layout.ImagesDir(), layout.MediaDir(), layout.GoldenDir(), layout.BakesDir(), layout.VMsDir(), layout.RunDir(), layout.IPAMDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating work directory: %w", err)
		}
	}
	// VM directories hold seeds with user-data and consoles, the image and media caches whatever
	// tenants' URLs served: keep them root-only (the cache makes its entries 0700/0600 on use).
	for _, d := range []string{layout.VMsDir(), layout.ImagesDir(), layout.MediaDir(), layout.GoldenDir(), layout.BakesDir()} {
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("securing %s: %w", d, err)
		}
	}
	if err := network.Ensure(); err != nil {
		return nil, fmt.Errorf("setting up the simulator network: %w", err)
	}
	watch := newWatchers(consoleWatchInterval)
	watch.consoleSize = cfg.ConsoleSize
	return &Provider{
		cfg:               cfg,
		images:            newImageCache(layout.ImagesDir(), cfg.Images, subnet),
		media:             newMediaCache(layout.MediaDir(), cfg.Images, subnet),
		ipam:              &ipam.Pool{Dir: layout.poolDir(cfg.Network.Bridge), First: cfg.FirstIP, Last: cfg.LastIP},
		net:               network,
		vms:               qemu.VMs{QEMU: cfg.QEMU},
		layout:            layout,
		watch:             watch,
		locks:             map[types.NamespacedName]*sync.Mutex{},
		fetches:           map[string]*imageFetch{},
		faultFetches:      map[string]*faultFetch{},
		imageFaultsStruck: map[string]bool{},
		nft:               hasNFT(),
		bakes:             map[string]*bakeJob{},
		bakeFailures:      map[string]bakeFailure{},
		queuedBakes:       map[string]queuedBake{},
		guestCPUs:         map[types.NamespacedName]int{},
		hostCPUs:          runtime.NumCPU(),
	}, nil
}

// lock serialises work on one server.
func (p *Provider) lock(server types.NamespacedName) func() {
	p.mu.Lock()
	l, ok := p.locks[server]
	if !ok {
		l = &sync.Mutex{}
		p.locks[server] = l
	}
	p.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// tryLock takes server's lock if no one holds it, for background work that can wait its turn.
func (p *Provider) tryLock(server types.NamespacedName) (unlock func(), ok bool) {
	p.mu.Lock()
	l, found := p.locks[server]
	if !found {
		l = &sync.Mutex{}
		p.locks[server] = l
	}
	p.mu.Unlock()
	if !l.TryLock() {
		return nil, false
	}
	return l.Unlock, true
}

// VMDir is where a server's VM lives (see Layout.VMDir).
func (p *Provider) VMDir(server types.NamespacedName) string { return p.layout.VMDir(server) }

// Inspect reports the VM of a server.
func (p *Provider) Inspect(_ context.Context, server types.NamespacedName) (controller.ServerInfo, error) {
	dir := p.VMDir(server)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return controller.ServerInfo{}, nil
	}
	vm, err := p.vms.Status(dir)
	if err != nil {
		return controller.ServerInfo{}, err
	}
	id, _ := os.ReadFile(filepath.Join(dir, filenames.InstanceIDFile))
	info := controller.ServerInfo{Exists: true, Running: vm.Running, InstanceID: strings.TrimSpace(string(id)), MACAddress: recordedMAC(dir),
		Blank: p.isBlank(server)}
	if info.MACAddress == "" {
		info.MACAddress = hostnet.MACAddress(identity(server))
	}
	if ip, ok, err := p.ipam.Lookup(identity(server)); err == nil && ok {
		info.IPAddress = ip.String()
	}
	if info.Boot, err = readBoot(dir); err != nil {
		return controller.ServerInfo{}, err
	}
	if info.Media, err = mediaInfo(dir); err != nil {
		return controller.ServerInfo{}, err
	}
	return info, nil
}

// PowerOff kills the server's VM, keeping its disk and console for inspection.
func (p *Provider) PowerOff(ctx context.Context, server types.NamespacedName) error {
	defer p.lock(server)()
	p.unwatch(server)
	dir := p.VMDir(server)
	qmp, err := p.layout.QMPSocket(dir)
	if err != nil {
		return err
	}
	return p.vms.Stop(ctx, dir, qmp, 0)
}
