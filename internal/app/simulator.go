// Package app wires the simulator controller together from command-line options: the thin
// cmd/simulator main only parses flags and calls Run.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/hostlease"
	"stargate.io/stargate/internal/mockdc"
	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/pkg/consolelog"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/qemu"
)

// Teardown leaves the host as the simulator found it (but for the image cache).
func Teardown(ctx context.Context, o Options) error {
	unlock, err := simulator.LockWorkDir(o.WorkDir)
	if err != nil {
		return err
	}
	defer unlock()
	p, err := newSimulator(o, "", ctrl.Log.WithName("simulator"))
	if err != nil {
		return err
	}
	return p.ReleaseAll(ctx)
}

// Scheme returns the scheme the controller uses.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = stargatev1.AddToScheme(s)
	return s
}

// Run starts the controller and blocks until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, o Options) error {
	log := ctrl.Log.WithName("simulator")
	if o.HostID == "" {
		name, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--host-id not given and the host name is unknown (%w): pass --host-id", err)
		}
		o.HostID = name
	}
	if o.MachineChecksPerSecond < 0 {
		return fmt.Errorf("--machine-checks-per-second %g: must be 0 (no budget) or more", o.MachineChecksPerSecond)
	}
	copts := controller.Options{HostID: o.HostID, ReferenceWait: o.ReferenceWait, PollInterval: o.PollInterval, MaxParallel: o.MaxParallel,
		MachineChecksPerSecond: o.MachineChecksPerSecond,
		MaxCPUs:                max(o.MaxCPUs, 0), KeepFailedMachines: o.KeepFailedVMs,
		DisableFaultInjection: !o.FaultInjection}
	if o.ServerSelector != "" {
		sel, err := labels.Parse(o.ServerSelector)
		if err != nil {
			return fmt.Errorf("--server-selector %q: %w", o.ServerSelector, err)
		}
		copts.ServerSelector = sel
	}
	if o.LeaseRenewInterval <= 0 || o.HostGracePeriod < 3*o.LeaseRenewInterval {
		return fmt.Errorf("--host-grace-period %s must be at least 3 times --lease-renew-interval %s (a host may miss a renewal or two)",
			o.HostGracePeriod, o.LeaseRenewInterval)
	}
	if o.MaxMemory != "" {
		q, err := parseQuantity(o.MaxMemory)
		if err != nil {
			return fmt.Errorf("--max-memory: %w", err)
		}
		copts.MaxMemoryBytes = q
	}

	var provider controller.Provider
	var sim *simulator.Provider
	switch o.Provider {
	case "mock":
		provider = &mockdc.Provider{BaseURL: strings.TrimRight(o.MockURL, "/")}
	case "qemu":
		unlock, err := simulator.LockWorkDir(o.WorkDir)
		if err != nil {
			return err
		}
		defer unlock()
		p, err := newSimulator(o, cfg.Host, log)
		if err != nil {
			return err
		}
		provider = p
		sim = p
		if o.MaxCPUs < 0 {
			copts.MaxCPUs = runtime.NumCPU()
		}
		if copts.MaxMemoryBytes == 0 {
			copts.MaxMemoryBytes = hostMemory() * 8 / 10
		}
	case "redfish":
	default:
		return fmt.Errorf("--provider %q: use qemu, mock or redfish", o.Provider)
	}

	mopts := ctrl.Options{
		Scheme:                 Scheme(),
		Metrics:                metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress: o.ProbeAddr,
		PprofBindAddress:       o.PprofAddr,
		// Nothing reads managedFields; without them the cache of a fleet takes far less memory.
		Cache: cache.Options{DefaultTransform: cache.TransformStripManagedFields()},
	}
	if o.Namespace != "" {
		mopts.Cache.DefaultNamespaces = map[string]cache.Config{o.Namespace: {}}
	}
	mgr, err := ctrl.NewManager(cfg, mopts)
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	if err := checkCRDs(mgr.GetRESTMapper()); err != nil {
		return err
	}
	if o.Provider == "redfish" {
		// It needs the manager's readers, so it comes after it.
		if provider, err = newRedfishDC(o, mgr, log); err != nil {
			return err
		}
	}
	// The host's Lease comes first: a duplicate of this host must not touch its machines, not
	// even to collect garbage.
	lease, err := holdLease(ctx, cfg, o)
	if err != nil {
		return err
	}
	if err := mgr.Add(lease); err != nil {
		return fmt.Errorf("adding the host lease renewal: %w", err)
	}
	copts.Liveness = &controller.Liveness{Namespace: o.LeaseNamespace, Grace: o.HostGracePeriod, Identity: lease.Holder(), Scope: o.Namespace}
	if sim != nil && !copts.DisableFaultInjection {
		// Node faults wait for the installation's Node (cached: the controllers watch Nodes).
		sim.SetCluster(&clusterView{reader: mgr.GetClient(), recorder: mgr.GetEventRecorder("stargate-simulator"), log: log})
	}
	if sim != nil {
		if err := collectGarbage(ctx, mgr.GetAPIReader(), sim, o.Namespace, o.HostID); err != nil {
			return err
		}
	}
	copts.Locks = &controller.ServerLocks{}
	metrics := controller.NewMetrics(nil)
	var wake chan event.GenericEvent
	if o.RedfishAddress != "" {
		if copts.RedfishURL, err = redfishBase(o); err != nil {
			return err
		}
		wake = make(chan event.GenericEvent, 64)
		copts.Wake = wake
		if err := setupRedfish(mgr, o, provider, &copts, wake, metrics); err != nil {
			return err
		}
	}
	if err := controller.Setup(mgr, provider, copts, metrics); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	log.Info("starting", "host", o.HostID, "provider", o.Provider, "namespace", orAll(o.Namespace), "serverSelector", orAll(o.ServerSelector),
		"maxParallel", copts.MaxParallel, "maxMemoryMiB", copts.MaxMemoryBytes>>20)
	return mgr.Start(ctx)
}

func orAll(s string) string {
	if s == "" {
		return "(all)"
	}
	return s
}

// checkCRDs fails early, with the fix, when the Stargate CRDs are not installed.
func checkCRDs(mapper meta.RESTMapper) error {
	for _, kind := range []string{"Server", "ProvisioningProfile", "Operation"} {
		if _, err := mapper.RESTMapping(stargatev1.GroupVersion.WithKind(kind).GroupKind(), stargatev1.GroupVersion.Version); err != nil {
			return fmt.Errorf("the Stargate CRDs are not installed in this cluster (%s: %w): run `kubectl apply -f config/crd/bases/`", kind, err)
		}
	}
	return nil
}

// newSimulator checks the host and sets up the QEMU provider.
// newSimulator makes the simulator of o; apiServer is the management cluster's API server as this
// process reaches it (the host of its kubeconfig), which a NoRouteToAPIServer fault cuts guests off.
func newSimulator(o Options, apiServer string, log interface{ Info(string, ...any) }) (*simulator.Provider, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the qemu provider must run as root: it creates a bridge, tap devices and NAT rules (run it with sudo)")
	}
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found: install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86 qemu-utils)", bin)
		}
	}
	if !o.NoNAT {
		if _, err := exec.LookPath("iptables"); err != nil {
			return nil, errors.New("iptables not found, and NAT needs it: apt-get install iptables (or run with --no-nat)")
		}
	}
	accel, warning, err := qemu.ResolveAccel(qemu.Accel(o.Accel))
	if err != nil {
		return nil, err
	}
	if warning != "" {
		log.Info("WARNING: " + warning)
	}
	gw, err := netip.ParsePrefix(o.Gateway)
	if err != nil {
		return nil, fmt.Errorf("--gateway %q: want an address with prefix such as %s: %w", o.Gateway, hostnet.DefaultGateway, err)
	}
	cfg := simulator.Config{
		WorkDir: o.WorkDir, Accel: accel, BootTimeout: o.BootTimeout, APIServer: apiServer,
		Network: hostnet.Config{Bridge: o.Bridge, Gateway: gw, NAT: !o.NoNAT},
		Log:     ctrl.Log.WithName("qemu"),
	}
	if o.IPRange != "" {
		if cfg.FirstIP, cfg.LastIP, err = parseRange("--ip-range", o.IPRange, "192.168.100.11-192.168.100.254"); err != nil {
			return nil, err
		}
	}
	for _, s := range strings.Split(o.DNS, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("--dns %q: %w", s, err)
		}
		cfg.DNS = append(cfg.DNS, a)
	}
	if cfg.Images, err = imagePolicy(o); err != nil {
		return nil, err
	}
	cacheSize, cacheWhy, err := imageCacheSize(o, o.WorkDir)
	if err != nil {
		return nil, err
	}
	cfg.ImageCacheSize = cacheSize
	if cfg.GoldenImagesPerNamespace, err = goldenImagesPerNamespace(o); err != nil {
		return nil, err
	}
	if cfg.ConsoleSize, err = consoleSize(o); err != nil {
		return nil, err
	}
	log.Info("image sources", "fileDirs", cfg.Images.FileDirs, "allowedHosts", cfg.Images.AllowHosts, "maxImageSize", o.MaxImageSize)
	log.Info("disk bounds", "imageCacheSize", resource.NewQuantity(cacheSize, resource.BinarySI).String(), "from", cacheWhy,
		"goldenImagesPerNamespace", cfg.GoldenImagesPerNamespace, "consoleSize", o.ConsoleSize)
	log.Info("simulator host", "accel", accel, "bridge", o.Bridge, "gateway", gw, "workDir", o.WorkDir)
	return simulator.New(cfg)
}

// consoleSize checks --console-size: a size of at least consolelog.MinSize.
func consoleSize(o Options) (int64, error) {
	const want = "want a size of at least 1Mi such as 16Mi: the disk space each VM's serial console may take"
	n, err := parseQuantity(o.ConsoleSize)
	if err != nil {
		return 0, fmt.Errorf("--console-size %q: %w (%s)", o.ConsoleSize, err, want)
	}
	if n < consolelog.MinSize {
		return 0, fmt.Errorf("--console-size %q: %s", o.ConsoleSize, want)
	}
	return n, nil
}

// collectGarbage releases, before any reconcile, what this host holds for Servers deleted while
// no simulator ran (or between a deletion and its release, when one was killed), and fences: it
// destroys its machines of Servers it no longer owns (status.host names another host, or was
// cleared by an evacuation), so that a host that returns never runs a second machine with the
// identity of a Server handed over. Machines are local to the host that made them.
func collectGarbage(ctx context.Context, reader client.Reader, sim *simulator.Provider, namespace, hostID string) error {
	inScope := func(ns string) bool { return namespace == "" || ns == namespace }
	return sim.CollectGarbage(ctx, ownedBy(reader, hostID), inScope)
}

// ownedBy reports whether a Server exists and hostID owns it (status.host), logging the fencing
// of one it no longer owns.
func ownedBy(reader client.Reader, hostID string) func(context.Context, types.NamespacedName) (bool, error) {
	log := ctrl.Log.WithName("simulator")
	return func(ctx context.Context, key types.NamespacedName) (bool, error) {
		server := &stargatev1.Server{}
		err := reader.Get(ctx, key, server)
		switch {
		case apierrors.IsNotFound(err):
			return false, nil
		case err != nil:
			return false, fmt.Errorf("reading server %s: %w", key, err)
		case server.Status.Host != hostID:
			log.Info("fencing: this host no longer owns the Server; its local machine is destroyed", "server", key,
				"owner", server.Status.Host, "hostEpoch", server.Status.HostEpoch)
			return false, nil
		}
		return true, nil
	}
}

// holdLease takes this host's Lease, or says why it cannot (another live incarnation renews it).
func holdLease(ctx context.Context, cfg *rest.Config, o Options) (*hostlease.Lease, error) {
	c, err := client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		return nil, fmt.Errorf("creating the host lease client: %w", err)
	}
	lease, err := hostlease.Acquire(ctx, hostlease.Config{Client: c, Namespace: o.LeaseNamespace, HostID: o.HostID,
		RenewInterval: o.LeaseRenewInterval, GracePeriod: o.HostGracePeriod, Self: o.incarnation, Log: ctrl.Log.WithName("hostlease")})
	if err != nil {
		return nil, err
	}
	ctrl.Log.WithName("hostlease").Info("holding host lease", "lease", lease.Key(), "holder", lease.Holder())
	return lease, nil
}
