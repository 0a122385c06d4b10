package app

import (
	"flag"
	"time"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/hostlease"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
)

// Options are the simulator controller's settings; every field is a flag.
type Options struct {
	Provider       string
	MockURL        string
	WorkDir        string
	Bridge         string
	Gateway        string
	IPRange        string
	DNS            string
	NoNAT          bool
	Accel          string
	BootTimeout    time.Duration
	ConsoleSize    string
	Namespace      string
	ServerSelector string
	MaxParallel    int
	MaxMemory      string
	MaxCPUs        int
	HostID         string
	// Host liveness (hostlease): where this host's Lease lives, how often it is renewed, and how
	// long a silent host Lease is waited for (at start, and by the host observer).
	LeaseNamespace     string
	LeaseRenewInterval time.Duration
	HostGracePeriod    time.Duration
	// incarnation overrides this process's (tests run several hosts in one process).
	incarnation hostlease.Incarnation

	RedfishAddress   string
	RedfishURL       string
	RedfishPlainHTTP bool
	KeepFailedVMs    bool
	// FaultInjection lets FaultInjections inject faults into this host's Servers (--fault-injection).
	FaultInjection bool
	ReferenceWait  time.Duration
	PollInterval   time.Duration
	// MachineChecksPerSecond budgets the background checks of machines (--machine-checks-per-second).
	MachineChecksPerSecond float64
	MetricsAddr            string
	ProbeAddr              string
	PprofAddr              string
	Teardown               bool

	// Image policy (images.go): which image URLs profiles may name, and download limits.
	ImageDirs       []string
	AllowImageHosts []string
	MaxImageSize    string
	ImageCacheSize  string
	// GoldenImagesPerNamespace bounds each namespace's golden images (--golden-images-per-namespace).
	GoldenImagesPerNamespace int
	ImageConnectTimeout      time.Duration
	ImageHeaderTimeout       time.Duration
	ImageStallTimeout        time.Duration

	// --provider=redfish (redfishdc.go): the BMC networks it may reach, its HTTP server, the installer.
	BMCNetworks     []string
	InstallerListen string
	InstallerURL    string
	InstallerISO    string
	// The address pool for Servers whose spec.network names no address.
	AddressPool, AddressPoolRange, AddressPoolGateway string
	AddressPoolDNS                                    []string
}

// BindFlags registers the options on fs, with their defaults.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Provider, "provider", "qemu", "datacenter provider: qemu (VMs on this host), mock (a fake datacenter API, see --mock-url) or "+
		"redfish (real servers through their BMCs: see --bmc-networks, --installer-url, --installer-iso)")
	fs.StringVar(&o.MockURL, "mock-url", "http://127.0.0.1:8090", "base URL of the mock datacenter API (with --provider=mock; start one with bin/mockdc)")
	fs.StringVar(&o.WorkDir, "work-dir", filenames.DefaultWorkDir, "directory for images, VM disks, IP allocations and sockets")
	fs.StringVar(&o.Bridge, "bridge", hostnet.DefaultBridge, "Linux bridge the VMs attach to (created if missing)")
	fs.StringVar(&o.Gateway, "gateway", hostnet.DefaultGateway, "bridge address and prefix; VMs get addresses in this subnet")
	fs.StringVar(&o.IPRange, "ip-range", "", "first-last VM addresses, e.g. 192.168.100.11-192.168.100.254 (default .11 to the last usable of the subnet)")
	fs.StringVar(&o.DNS, "dns", "", "comma-separated DNS servers for the VMs (default: none; set this when guests need names)")
	fs.BoolVar(&o.NoNAT, "no-nat", false, "do not masquerade VM traffic out of the host (VMs then reach only the host and each other)")
	fs.StringVar(&o.Accel, "accel", "auto", "QEMU accelerator: auto (KVM when usable, else TCG), kvm or tcg")
	fs.DurationVar(&o.BootTimeout, "boot-timeout", 5*time.Minute, "fail a repave whose guest shows no cloud-init output this long after starting")
	fs.StringVar(&o.ConsoleSize, "console-size", "16Mi", "disk space each VM's serial console may take, e.g. 16Mi (at least 1Mi); beyond it the middle "+
		"is dropped, keeping the head of the boot, the newest output and the readiness line")
	fs.StringVar(&o.Namespace, "namespace", "", "watch only this namespace (default: all)")
	fs.StringVar(&o.HostID, "host-id", "", "this host's identity, recorded in status.host of the Servers it owns and in its finalizers; "+
		"give every host sharing a cluster its own (default: the host name)")
	fs.StringVar(&o.LeaseNamespace, "lease-namespace", hostlease.DefaultNamespace, "namespace of the hosts' Leases (coordination.k8s.io), "+
		"one per --host-id, and of the host observer's election Lease; every host sharing a cluster must use the same")
	fs.DurationVar(&o.LeaseRenewInterval, "lease-renew-interval", hostlease.DefaultRenewInterval, "how often this host renews its Lease")
	fs.DurationVar(&o.HostGracePeriod, "host-grace-period", hostlease.DefaultGracePeriod, "how long a host's Lease may go unrenewed "+
		"(by the observer's own clock) before its Servers show HostReachable=False (HostLost); also how long a start waits "+
		"before taking over the Lease of a silent earlier incarnation on another machine")
	fs.BoolVar(&o.FaultInjection, "fault-injection", true, "let FaultInjections inject faults into the Servers this host owns "+
		"(false: none is injected, and each FaultInjection's status says so)")
	fs.StringVar(&o.ServerSelector, "server-selector", "", "label selector of the Servers this host manages, e.g. stargate.io/datacenter=lab1 (default: all)")
	fs.IntVar(&o.MaxParallel, "max-parallel", 2, "repaves running at once; more wait in Pending (0: no limit)")
	fs.StringVar(&o.MaxMemory, "max-memory", "", "memory the VMs being repaved may use together, e.g. 16Gi (default: 80% of this host's memory with --provider=qemu)")
	fs.IntVar(&o.MaxCPUs, "max-cpus", -1, "most CPUs one Server may have; a Server with more fails at once with ExceedsHostCapacity "+
		"(default: this host's CPU count with --provider=qemu, else no limit; 0: no limit)")
	fs.BoolVar(&o.KeepFailedVMs, "keep-failed-vms", false, "leave the VM of a failed repave running for debugging "+
		"(default: every failure powers it off; disk and console are kept either way)")
	fs.DurationVar(&o.ReferenceWait, "reference-wait", controller.DefaultReferenceWait,
		"how long an Operation waits for a missing Server or ProvisioningProfile before failing")
	fs.DurationVar(&o.PollInterval, "poll-interval", controller.DefaultPollInterval, "how often a running repave is checked")
	fs.Float64Var(&o.MachineChecksPerSecond, "machine-checks-per-second", controller.DefaultMachineChecksPerSecond,
		"budget of background checks that a Server's machine still runs as its status says: each machine is checked every 30 s, "+
			"or less often when the host owns more machines than this budget allows (10,000 at 20/s: each every 500 s; 0: every 30 s)")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", "127.0.0.1:8080", "Prometheus metrics address (0 disables)")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", "127.0.0.1:8081", "health and readiness probe address (0 disables)")
	fs.StringVar(&o.PprofAddr, "pprof-bind-address", "0", "Go profiling (net/http/pprof) address, e.g. 127.0.0.1:6060, to find what bounds a busy host (0 disables)")
	fs.BoolVar(&o.Teardown, "teardown", false, "stop and remove every VM in --work-dir, then the bridge and NAT rules, and exit (no cluster needed)")
	o.bindImageFlags(fs)
	o.bindRedfishFlags(fs)
	o.bindRedfishDCFlags(fs)
}
