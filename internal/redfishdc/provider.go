// Package redfishdc is the Redfish datacenter: a controller.Provider that installs and powers real
// servers through their BMCs. A repave boots a per-Operation installer ISO (pkg/installeriso) from
// the BMC's virtual CD; the installer agent streams the raw image this provider serves to the
// server's disk, writes the cloud-init seed, and reports progress with a per-Operation token; the
// server then boots from its disk and its cloud-init calls back with another token. Nothing but
// the BMC and the two HTTP paths (BMC → ISO, server → image and callbacks) is needed: no PXE, no
// DHCP, no agent preinstalled.
package redfishdc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/installeriso"
	"stargate.io/stargate/pkg/redfishclient"
)

// Defaults of the Config fields left zero.
const (
	DefaultPowerOffGrace = 2 * time.Minute
	DefaultStepRetry     = 5 * time.Second
)

// Config says what a Provider drives and serves.
type Config struct {
	// Reader reads Servers (a cache is fine); SecretReader reads the Secrets Servers name (get
	// only, so no cache of every Secret is kept).
	Reader       client.Reader
	SecretReader client.Reader
	// Images fetches OS images under the operator's image policy.
	Images *imagecache.Cache
	// RawDir holds the images converted to raw.
	RawDir string
	// QemuImg is the qemu-img binary; empty means "qemu-img" on PATH.
	QemuImg string
	// InstallerISO is the base installer ISO (hack/installer-iso/build.sh).
	InstallerISO string
	// PublicURL is where BMCs and installing servers reach ServeHTTP, e.g. http://10.0.0.1:8081. The
	// installer has no trust roots of its own, so it must be http: the URLs carry no credential
	// that outlives the Operation, and the image's sha256 travels in the ISO.
	PublicURL string
	// AddressPool, when set, gives Servers whose spec.network names no address one of its own.
	AddressPool *AddressPool
	// BMCNetworks are the networks BMC addresses may be in; none means no BMC may be reached.
	BMCNetworks []netip.Prefix
	// BMCClient holds the timeouts and retries of BMC requests (Endpoint and credentials are
	// filled in per Server).
	BMCClient redfishclient.Config
	// PowerOffGrace is how long the installer has to power the server off after it reported Done
	// before the BMC forces it off; zero means DefaultPowerOffGrace.
	PowerOffGrace time.Duration
	// StepRetry is the wait before a BMC step that failed is tried again; zero means
	// DefaultStepRetry. The Operation's spec.timeout bounds the retries.
	StepRetry time.Duration
	Log       logr.Logger
}

// Provider is the Redfish datacenter's controller.Provider. Handler serves its HTTP paths.
type Provider struct {
	cfg  Config
	base *installeriso.Base
	raw  *rawImages
	ctx  context.Context
	stop context.CancelFunc

	mu sync.Mutex
	// ops by instance ID; current is each Server's latest; routes by the Operation's path id.
	ops     map[string]*operation
	current map[types.NamespacedName]*operation
	routes  map[string]*operation
	// gone are the path ids of Operations forgotten lately (replaced, released), which answer 410
	// rather than 404; goneOrder bounds them, oldest first.
	gone      map[string]bool
	goneOrder []string
	// claims are the BMC systems Servers drive, by BMC and resolved system path (see claim).
	claims map[string]types.NamespacedName
	// allocated is the pool address this process gave each Server (see allocate).
	allocated map[types.NamespacedName]netip.Addr
}

// maxGone bounds the forgotten Operations whose URLs still answer 410.
const maxGone = 4096

var _ controller.Provider = (*Provider)(nil)

// New checks cfg and opens the installer ISO.
func New(cfg Config) (*Provider, error) {
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("public URL %q: want http://HOST[:PORT] that BMCs and servers reach this controller at", cfg.PublicURL)
	}
	if cfg.Reader == nil || cfg.SecretReader == nil || cfg.Images == nil || cfg.RawDir == "" {
		return nil, errors.New("redfish datacenter: Reader, SecretReader, Images and RawDir must be set")
	}
	if cfg.AddressPool != nil {
		if err := cfg.AddressPool.Validate(); err != nil {
			return nil, err
		}
	}
	if cfg.PowerOffGrace <= 0 {
		cfg.PowerOffGrace = DefaultPowerOffGrace
	}
	if cfg.StepRetry <= 0 {
		cfg.StepRetry = DefaultStepRetry
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	base, err := installeriso.OpenBase(cfg.InstallerISO)
	if err != nil {
		return nil, fmt.Errorf("installer ISO: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Provider{cfg: cfg, base: base, raw: newRawImages(cfg.RawDir, cfg.QemuImg), ctx: ctx, stop: stop,
		ops: map[string]*operation{}, current: map[types.NamespacedName]*operation{}, routes: map[string]*operation{},
		gone: map[string]bool{}, claims: map[string]types.NamespacedName{}, allocated: map[types.NamespacedName]netip.Addr{}}, nil
}

// Close ends every Operation's work and closes the installer ISO.
func (p *Provider) Close() error {
	p.stop()
	return p.base.Close()
}

// Repave starts or continues the repave req describes (see repave.go).
func (p *Provider) Repave(ctx context.Context, req controller.RepaveRequest) (controller.RepaveStatus, error) {
	p.mu.Lock()
	op := p.ops[req.InstanceID]
	p.mu.Unlock()
	if op == nil {
		var err error
		if op, err = p.start(ctx, req); err != nil {
			return controller.RepaveStatus{}, err
		}
	}
	return op.status(), nil
}

// Inspect reads the server's power from its BMC.
func (p *Provider) Inspect(ctx context.Context, key types.NamespacedName) (controller.ServerInfo, error) {
	s, err := p.server(ctx, key)
	if errors.Is(err, errConfig) {
		return controller.ServerInfo{}, nil // not a server this datacenter can see
	}
	if err != nil {
		return controller.ServerInfo{}, err
	}
	sys, err := p.connect(ctx, s)
	if err != nil {
		return controller.ServerInfo{}, err
	}
	st, err := sys.Status(ctx)
	if err != nil {
		return controller.ServerInfo{}, fmt.Errorf("reading the power of %s from its BMC: %w", key.Name, err)
	}
	media, err := sys.VirtualMedia(ctx)
	if err != nil {
		p.cfg.Log.V(1).Info("reading virtual media", "server", key, "error", err)
	}
	info := controller.ServerInfo{Exists: true, Running: st.PowerState == redfishclient.PowerOn || st.PowerState == redfishclient.PowerPoweringOn,
		Boot:  controller.BootOverride{Target: st.Boot.Target, Enabled: st.Boot.Enabled, Mode: st.Boot.Mode},
		Media: controller.Media{Image: media.Image, Inserted: media.Inserted}}
	if s.Spec.Network != nil {
		info.IPAddress, _, _ = strings.Cut(s.Spec.Network.Address, "/")
		info.MACAddress = s.Spec.Network.MACAddress
	}
	p.mu.Lock()
	if op := p.current[key]; op != nil && op.succeeded() {
		info.InstanceID = op.instanceID
	}
	if info.IPAddress == "" && s.Spec.Network != nil {
		// A pool address: this process's allocation, or what the last repave recorded.
		info.IPAddress = s.Status.IPAddress
		if a, ok := p.allocated[key]; ok {
			info.IPAddress = a.String()
		}
	}
	p.mu.Unlock()
	return info, nil
}

// PowerOff ends the server's running repave (its URLs answer 410 from now on, which stops the
// installer) and forces the server off. The first PowerOff of a repave that never powered the
// server on or changed its media — the controller stopping it — returns controller.ErrUntouched
// without a BMC request: the server runs as before, and a BMC that never answered does not keep
// the repave from failing.
func (p *Provider) PowerOff(ctx context.Context, key types.NamespacedName) error {
	p.mu.Lock()
	op := p.current[key]
	p.mu.Unlock()
	if op != nil && op.stopByController() {
		return controller.ErrUntouched
	}
	err := p.reset(ctx, key, redfishclient.ResetForceOff, redfishclient.PowerOff)
	if errors.Is(err, errConfig) {
		return nil // a Server this datacenter cannot drive: nothing of it runs here
	}
	return err
}

// Shutdown presses the server's power button (GracefulShutdown). A power Operation shuts a
// server down before it forces it off, so the PowerOff that follows is that Operation's.
func (p *Provider) Shutdown(ctx context.Context, key types.NamespacedName) error {
	p.mu.Lock()
	if op := p.current[key]; op != nil {
		op.settle()
	}
	p.mu.Unlock()
	return p.reset(ctx, key, redfishclient.ResetGracefulShutdown, redfishclient.PowerOff)
}

// PowerOn powers the server on from whatever it boots (its disk, unless an override says else).
func (p *Provider) PowerOn(ctx context.Context, key types.NamespacedName) error {
	return p.reset(ctx, key, redfishclient.ResetOn, redfishclient.PowerOn)
}

// reset sends a ComputerSystem.Reset unless the server is in the state it leads to already.
func (p *Provider) reset(ctx context.Context, key types.NamespacedName, t redfishclient.ResetType, already redfishclient.PowerState) error {
	s, err := p.server(ctx, key)
	if err != nil {
		return err
	}
	sys, err := p.connect(ctx, s)
	if err != nil {
		return err
	}
	state, err := sys.PowerState(ctx)
	if err != nil {
		return fmt.Errorf("reading the power of %s: %w", key.Name, err)
	}
	if state == already {
		return nil
	}
	if err := sys.Reset(ctx, t); err != nil {
		return fmt.Errorf("%s of %s: %w", t, key.Name, err)
	}
	return nil
}

// SetBoot sets the server's boot source override through its BMC.
func (p *Provider) SetBoot(ctx context.Context, key types.NamespacedName, boot controller.BootOverride) error {
	return p.withSystem(ctx, key, func(sys *redfishclient.System) error {
		return sys.SetBootOverride(ctx, redfishclient.BootOverride{Target: boot.Target, Enabled: boot.Enabled, Mode: boot.Mode})
	})
}

// InsertMedia inserts imageURL as the server's virtual CD through its BMC (ejecting first).
func (p *Provider) InsertMedia(ctx context.Context, key types.NamespacedName, imageURL string) error {
	return p.withSystem(ctx, key, func(sys *redfishclient.System) error {
		if err := sys.EjectMedia(ctx); err != nil {
			return err
		}
		return sys.InsertMedia(ctx, imageURL)
	})
}

// EjectMedia ejects the server's virtual CD through its BMC.
func (p *Provider) EjectMedia(ctx context.Context, key types.NamespacedName) error {
	return p.withSystem(ctx, key, func(sys *redfishclient.System) error { return sys.EjectMedia(ctx) })
}

func (p *Provider) withSystem(ctx context.Context, key types.NamespacedName, f func(*redfishclient.System) error) error {
	s, err := p.server(ctx, key)
	if err != nil {
		return err
	}
	sys, err := p.connect(ctx, s)
	if err != nil {
		return err
	}
	return f(sys)
}

// Release forgets the server: its running repave ends (its URLs answer 410). The machine is left
// as it is: deleting a Server object does not wipe or power off real hardware.
func (p *Provider) Release(_ context.Context, key types.NamespacedName) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if op := p.current[key]; op != nil {
		op.end()
		p.forget(op)
		delete(p.current, key)
	}
	p.releaseAddress(key)
	return nil
}

// forget drops an ended Operation's routes and state; p.mu is held.
func (p *Provider) forget(op *operation) {
	delete(p.ops, op.instanceID)
	delete(p.routes, op.id)
	if len(p.goneOrder) == maxGone {
		delete(p.gone, p.goneOrder[0])
		p.goneOrder = p.goneOrder[1:]
	}
	p.gone[op.id] = true
	p.goneOrder = append(p.goneOrder, op.id)
}

// InstallerURL is the URL of a repave's installer ISO, as the BMC is given it; empty for a repave
// this provider does not know. It is a secret of the Operation: for tests and diagnostics only.
func (p *Provider) InstallerURL(instanceID string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if op := p.ops[instanceID]; op != nil {
		return op.url("installer.iso")
	}
	return ""
}
