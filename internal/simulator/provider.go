// Package simulator is the simulator datacenter: a controller.Provider that turns each Server into
// a QEMU VM on this host, on a bridge with NAT, installed from a cloud image with cloud-init.
package simulator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

// Config configures the simulator host.
type Config struct {
	// WorkDir holds images, VMs, IP allocations and sockets; default /var/lib/stargate.
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
	Log         logr.Logger
}

// Provider is the simulator datacenter.
type Provider struct {
	cfg    Config
	images *imagecache.Cache
	ipam   *ipam.Pool
	net    *hostnet.Network
	vms    qemu.VMs

	mu      sync.Mutex
	locks   map[types.NamespacedName]*sync.Mutex
	fetches map[string]*imageFetch
}

var _ controller.Provider = (*Provider)(nil)

// imageFetch is a download running in the background, shared by every repave of the same image.
type imageFetch struct {
	done        atomic.Bool
	bytes, size atomic.Int64
	image       imagecache.Image
	err         error
}

// New prepares the simulator host: it sets up the bridge, NAT and directories.
func New(cfg Config) (*Provider, error) {
	if cfg.WorkDir == "" {
		cfg.WorkDir = filenames.DefaultWorkDir
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 5 * time.Minute
	}
	if cfg.Accel != qemu.AccelKVM && cfg.Accel != qemu.AccelTCG {
		return nil, fmt.Errorf("accelerator must be resolved to kvm or tcg, not %q", cfg.Accel)
	}
	subnet := cfg.Network.Subnet()
	if !cfg.FirstIP.IsValid() {
		cfg.FirstIP = nthAddr(subnet, 11)
	}
	if !cfg.LastIP.IsValid() {
		cfg.LastIP = lastUsable(subnet)
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
	for _, d := range []string{filenames.ImagesDir, filenames.VMsDir, filenames.RunDir, filenames.IPAMDir} {
		if err := os.MkdirAll(filepath.Join(cfg.WorkDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("creating work directory: %w", err)
		}
	}
	// VM directories hold seeds with user-data and consoles: keep them root-only.
	if err := os.Chmod(filepath.Join(cfg.WorkDir, filenames.VMsDir), 0o700); err != nil {
		return nil, err
	}
	if err := network.Ensure(); err != nil {
		return nil, fmt.Errorf("setting up the simulator network: %w", err)
	}
	return &Provider{
		cfg:     cfg,
		images:  &imagecache.Cache{Dir: filepath.Join(cfg.WorkDir, filenames.ImagesDir)},
		ipam:    &ipam.Pool{Dir: filepath.Join(cfg.WorkDir, filenames.IPAMDir, cfg.Network.Bridge), First: cfg.FirstIP, Last: cfg.LastIP},
		net:     network,
		vms:     qemu.VMs{QEMU: cfg.QEMU},
		locks:   map[types.NamespacedName]*sync.Mutex{},
		fetches: map[string]*imageFetch{},
	}, nil
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

func lastUsable(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	last := a
	for next := a.Next(); next.IsValid() && p.Contains(next); next = next.Next() {
		last = next
	}
	return last.Prev() // the broadcast address is not usable
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

// VMDir is where a server's VM lives. Namespaces and Server names cannot contain '/', so
// <namespace>/<name> never collides.
func (p *Provider) VMDir(server types.NamespacedName) string {
	return filepath.Join(p.cfg.WorkDir, filenames.VMsDir, server.Namespace, server.Name)
}

func identity(server types.NamespacedName) string { return server.Namespace + "/" + server.Name }

func (p *Provider) qmpSocket(dir string) (string, error) {
	return qemu.QMPSocketPath(filepath.Join(p.cfg.WorkDir, filenames.RunDir), dir)
}

// fetchImage returns the background download of an image, starting it when needed.
func (p *Provider) fetchImage(url, checksum string) *imageFetch {
	key := url + "\x00" + checksum
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.fetches[key]; ok {
		return f
	}
	f := &imageFetch{}
	f.size.Store(-1)
	p.fetches[key] = f
	go func() {
		img, err := p.images.Fetch(context.Background(), url, checksum, func(done, total int64) {
			f.bytes.Store(done)
			f.size.Store(total)
		})
		f.image, f.err = img, err
		f.done.Store(true)
	}()
	return f
}

// forgetFailedFetch drops a failed download once it has been reported, so the next repave tries
// again (the URL may be fixed by then).
func (p *Provider) forgetFailedFetch(url, checksum string, f *imageFetch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fetches[url+"\x00"+checksum] == f {
		delete(p.fetches, url+"\x00"+checksum)
	}
}

// Repave drives one installation: image, seed, network, VM, guest readiness.
func (p *Provider) Repave(ctx context.Context, req controller.RepaveRequest) (controller.RepaveStatus, error) {
	defer p.lock(req.Server)()
	st := newStatus()
	id := identity(req.Server)
	mac := req.MAC
	if mac == "" {
		mac = hostnet.MACAddress(id)
	}
	st.MACAddress = mac

	dir := p.VMDir(req.Server)
	current, _ := os.ReadFile(filepath.Join(dir, filenames.InstanceIDFile))
	installed := strings.TrimSpace(string(current)) == req.InstanceID

	// 1. Image, downloaded in the background; only needed until this installation has started
	// (after a controller restart the running installation needs no image check).
	var base string
	if installed {
		st.set(stargatev1.ConditionImageReady, controller.StepDone, "Cached", fmt.Sprintf("Image %s in use by this installation", req.ImageURL))
	} else {
		f := p.fetchImage(req.ImageURL, req.ImageChecksum)
		if !f.done.Load() {
			st.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Downloading", downloadMessage(req.ImageURL, f.bytes.Load(), f.size.Load()))
			return st.finish(), nil
		}
		if f.err != nil {
			p.forgetFailedFetch(req.ImageURL, req.ImageChecksum, f)
			return st.fail(stargatev1.ConditionImageReady, imageFailureReason(f.err), fmt.Sprintf("Fetching the OS image failed: %v", f.err)), nil
		}
		st.set(stargatev1.ConditionImageReady, controller.StepDone, "Cached", fmt.Sprintf("Image %s cached (%s, %d MiB)", req.ImageURL, f.image.Digest, f.image.Size>>20))
		base = f.image.Path
	}

	qmp, err := p.qmpSocket(dir)
	if err != nil {
		return st.fail(stargatev1.ConditionVMRunning, "InvalidWorkDir", err.Error()), nil
	}
	tap := hostnet.TapName(id)
	ip, err := p.ipam.Allocate(id)
	if err != nil {
		reason := "IPAllocationFailed"
		if errors.Is(err, ipam.ErrPoolExhausted) {
			reason = "IPPoolExhausted"
		}
		return st.fail(stargatev1.ConditionNetworkReady, reason, err.Error()), nil
	}
	st.IPAddress = ip.String()

	if !installed {
		// A new installation: replace whatever runs now.
		if err := p.install(ctx, req, st, dir, qmp, tap, mac, ip, base); err != nil {
			return controller.RepaveStatus{}, err
		}
		if st.Failed {
			return st.finish(), nil
		}
	}
	st.set(stargatev1.ConditionCloudInitReady, controller.StepDone, "Written", "NoCloud seed written for instance "+req.InstanceID)
	st.set(stargatev1.ConditionNetworkReady, controller.StepDone, "Attached", fmt.Sprintf("Tap %s on bridge %s, address %s, MAC %s", tap, p.cfg.Network.Bridge, ip, mac))
	return p.observeGuest(st, req, dir), nil
}

// install stops the old VM, writes the seed, attaches the network, creates a fresh disk and starts
// QEMU. The instance-id file is written last: it marks the installation as started, so a crash
// before it simply redoes the installation.
func (p *Provider) install(ctx context.Context, req controller.RepaveRequest, st *status, dir, qmp, tap, mac string, ip netip.Addr, base string) error {
	if err := p.vms.Stop(ctx, dir, qmp, 0); err != nil {
		return fmt.Errorf("stopping the previous VM: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating VM directory: %w", err)
	}
	_ = os.Remove(filepath.Join(dir, filenames.InstanceIDFile))

	subnet := p.cfg.Network.Subnet()
	err := cloudinit.WriteNoCloudISO(filepath.Join(dir, filenames.SeedFile), cloudinit.Config{
		InstanceID: req.InstanceID,
		Hostname:   req.Server.Name,
		UserData:   req.UserData,
		VendorData: cloudinit.ReadinessVendorData(req.InstanceID),
		Network: &cloudinit.GuestNetwork{MAC: mac, Address: netip.PrefixFrom(ip, subnet.Bits()),
			Gateway: p.cfg.Network.Gateway.Addr(), DNS: p.cfg.DNS},
	})
	if err != nil {
		st.failStep(stargatev1.ConditionCloudInitReady, "SeedFailed", fmt.Sprintf("Writing the cloud-init seed failed: %v", err))
		return nil
	}
	st.set(stargatev1.ConditionCloudInitReady, controller.StepDone, "Written", "NoCloud seed written")

	if err := p.net.Ensure(); err != nil {
		st.failStep(stargatev1.ConditionNetworkReady, "NetworkFailed", err.Error())
		return nil
	}
	if err := p.net.EnsureTap(tap); err != nil {
		st.failStep(stargatev1.ConditionNetworkReady, "TapFailed", err.Error())
		return nil
	}
	if err := qemu.CreateOverlay(ctx, base, filepath.Join(dir, filenames.DiskFile), req.DiskBytes); err != nil {
		st.failStep(stargatev1.ConditionVMRunning, "DiskFailed", fmt.Sprintf("Creating the VM disk failed: %v", err))
		return nil
	}
	spec := qemu.VMSpec{Name: req.Server.Namespace + "." + req.Server.Name, Dir: dir, QMPSocket: qmp,
		CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, MAC: mac, Tap: tap, Accel: p.cfg.Accel}
	if err := p.vms.Start(ctx, spec); err != nil {
		st.failStep(stargatev1.ConditionVMRunning, "QEMUFailed", err.Error())
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, filenames.InstanceIDFile), []byte(req.InstanceID+"\n"), 0o600); err != nil {
		return fmt.Errorf("recording instance-id: %w", err)
	}
	p.cfg.Log.Info("VM started", "server", identity(req.Server), "instanceID", req.InstanceID, "ip", ip, "accel", p.cfg.Accel)
	return nil
}

// observeGuest reports the VM and what its console says about cloud-init.
func (p *Provider) observeGuest(st *status, req controller.RepaveRequest, dir string) controller.RepaveStatus {
	console, _ := os.ReadFile(filepath.Join(dir, filenames.ConsoleFile))
	result := cloudinit.ParseGuestResult(console, req.InstanceID)
	vm, err := p.vms.Status(dir)
	startedAt := time.Now()
	if fi, err := os.Stat(filepath.Join(dir, filenames.InstanceIDFile)); err == nil {
		startedAt = fi.ModTime()
	}
	up := time.Since(startedAt).Round(time.Second)
	switch {
	case result.Done && len(result.Errors) > 0:
		st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", "VM running")
		return st.fail(stargatev1.ConditionGuestReady, "CloudInitFailed", fmt.Sprintf("cloud-init finished with errors: %s\n--- last lines of the serial console (%s) ---\n%s",
			strings.Join(result.Errors, "; "), filepath.Join(dir, filenames.ConsoleFile), cloudinit.ConsoleTail(console, 25, 3000)))
	case result.Done:
		st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", "VM running")
		st.set(stargatev1.ConditionGuestReady, controller.StepDone, "CloudInitDone", fmt.Sprintf("cloud-init finished without errors %s after QEMU started", up))
		st.Done = true
		return st.finish()
	case err != nil || !vm.Running:
		return st.fail(stargatev1.ConditionVMRunning, "VMExited", fmt.Sprintf("The VM exited %s after starting, before cloud-init finished\n--- last lines of the serial console (%s) ---\n%s",
			up, filepath.Join(dir, filenames.ConsoleFile), cloudinit.ConsoleTail(console, 25, 3000)))
	}
	st.set(stargatev1.ConditionVMRunning, controller.StepDone, "Running", fmt.Sprintf("QEMU pid %d, accel %s", vm.PID, p.cfg.Accel))
	if up > p.cfg.BootTimeout && !strings.Contains(string(console), "cloud-init") {
		hint := ""
		if p.cfg.Accel == qemu.AccelKVM {
			hint = " With KVM this usually means /dev/kvm exists but does not work on this host (nested virtualisation): run the simulator with --accel=tcg."
		}
		return st.fail(stargatev1.ConditionGuestReady, "BootHung", fmt.Sprintf("The guest showed no sign of cloud-init within %s of starting (boot watchdog).%s\n--- last lines of the serial console ---\n%s",
			p.cfg.BootTimeout, hint, cloudinit.ConsoleTail(console, 25, 3000)))
	}
	st.set(stargatev1.ConditionGuestReady, controller.StepInProgress, "Booting", fmt.Sprintf("Waiting for cloud-init to finish (VM up %s); console: %s",
		up, lastLine(console)))
	return st.finish()
}

func lastLine(console []byte) string {
	return strings.TrimSpace(cloudinit.ConsoleTail(console, 1, 200))
}

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
	info := controller.ServerInfo{Exists: true, Running: vm.Running, InstanceID: strings.TrimSpace(string(id)), MACAddress: hostnet.MACAddress(identity(server))}
	if ip, ok, err := p.ipam.Lookup(identity(server)); err == nil && ok {
		info.IPAddress = ip.String()
	}
	return info, nil
}

// PowerOff kills the server's VM, keeping its disk and console for inspection.
func (p *Provider) PowerOff(ctx context.Context, server types.NamespacedName) error {
	defer p.lock(server)()
	dir := p.VMDir(server)
	qmp, err := p.qmpSocket(dir)
	if err != nil {
		return err
	}
	return p.vms.Stop(ctx, dir, qmp, 0)
}

// Release stops the VM and removes its tap, IP address, disk, seed, console and socket.
func (p *Provider) Release(ctx context.Context, server types.NamespacedName) error {
	defer p.lock(server)()
	dir := p.VMDir(server)
	qmp, err := p.qmpSocket(dir)
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
	_ = os.Remove(filepath.Dir(dir)) // the namespace directory, when empty
	if err := os.Remove(qmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing QMP socket: %w", err)
	}
	p.cfg.Log.Info("server released", "server", identity(server))
	return nil
}

// Teardown removes the bridge and NAT rules (VMs must be released first).
func (p *Provider) Teardown() error { return p.net.Teardown() }

func downloadMessage(url string, done, total int64) string {
	if total > 0 {
		return fmt.Sprintf("Downloading %s: %d of %d MiB (%d%%)", url, done>>20, total>>20, done*100/total)
	}
	return fmt.Sprintf("Downloading %s: %d MiB", url, done>>20)
}

func imageFailureReason(err error) string {
	switch {
	case errors.Is(err, imagecache.ErrChecksumMismatch):
		return "ChecksumMismatch"
	case errors.Is(err, imagecache.ErrNotFound):
		return "ImageNotFound"
	}
	return "ImageFetchFailed"
}

// ReleaseAll releases every VM found in the work directory, then removes the bridge and NAT
// rules: what `simulator --teardown` does to leave a host as it found it.
func (p *Provider) ReleaseAll(ctx context.Context) error {
	namespaces, _ := os.ReadDir(filepath.Join(p.cfg.WorkDir, filenames.VMsDir))
	var errs []error
	for _, n := range namespaces {
		servers, _ := os.ReadDir(filepath.Join(p.cfg.WorkDir, filenames.VMsDir, n.Name()))
		for _, s := range servers {
			if err := p.Release(ctx, types.NamespacedName{Namespace: n.Name(), Name: s.Name()}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := p.Teardown(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
