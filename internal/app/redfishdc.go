package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"stargate.io/stargate/internal/redfishdc"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/ipam"
	"stargate.io/stargate/pkg/qemu"
)

// bindRedfishDCFlags registers the flags of --provider redfish: the BMCs it may reach and the HTTP
// server the BMCs and the installing servers fetch from.
func (o *Options) bindRedfishDCFlags(fs *flag.FlagSet) {
	fs.Var(listFlag{&o.BMCNetworks}, "bmc-networks", "with --provider=redfish: CIDRs (or addresses) of the BMC networks spec.bmc.address may "+
		"reach, checked on every connection, redirects included (repeat or comma-separate; default: none, so no BMC is reached)")
	fs.StringVar(&o.InstallerListen, "installer-listen", ":8082", "with --provider=redfish: address of the HTTP server that serves each "+
		"repave's installer ISO (to the BMC), raw image and callbacks (to the server)")
	fs.StringVar(&o.InstallerURL, "installer-url", "", "with --provider=redfish: the http:// URL BMCs and installing servers reach "+
		"--installer-listen at, e.g. http://10.0.0.1:8082 (required)")
	fs.StringVar(&o.AddressPool, "address-pool", "", "with --provider=redfish: the subnet whose addresses Servers get when their "+
		"spec.network names a MAC and no address, e.g. 10.20.0.0/24 (default: none; such Servers are refused)")
	fs.StringVar(&o.AddressPoolRange, "address-pool-range", "", "with --address-pool: FIRST-LAST addresses given out "+
		"(default: .11 to the last usable address of the subnet)")
	fs.StringVar(&o.AddressPoolGateway, "address-pool-gateway", "", "with --address-pool: the default route of servers given a pool address")
	fs.Var(listFlag{&o.AddressPoolDNS}, "address-pool-dns", "with --address-pool: DNS servers of servers given a pool address (repeat or comma-separate)")
	fs.StringVar(&o.InstallerISO, "installer-iso", "", "with --provider=redfish: the base installer ISO, as `make installer-iso` prints (required)")
}

// newRedfishDC sets up --provider=redfish; its HTTP server runs with the manager.
func newRedfishDC(o Options, mgr ctrl.Manager, log logr.Logger) (*redfishdc.Provider, error) {
	cfg, err := redfishDCConfig(o)
	if err != nil {
		return nil, err
	}
	if len(cfg.BMCNetworks) == 0 {
		log.Info("no --bmc-networks: no BMC can be reached, every repave will be refused")
	}
	cfg.Reader, cfg.SecretReader, cfg.Log = mgr.GetClient(), mgr.GetAPIReader(), log.WithName("redfish-dc")
	p, err := redfishdc.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := mgr.Add(&installerServer{addr: o.InstallerListen, provider: p}); err != nil {
		return nil, fmt.Errorf("adding the installer HTTP server: %w", err)
	}
	return p, nil
}

// redfishDCConfig checks the --provider=redfish flags. OS images follow the same policy flags as
// the simulator's (--image-dir, --allow-image-hosts, --max-image-size, timeouts).
func redfishDCConfig(o Options) (redfishdc.Config, error) {
	if o.InstallerURL == "" || o.InstallerISO == "" {
		return redfishdc.Config{}, errors.New("--provider=redfish needs --installer-url (where BMCs and servers reach this controller) and --installer-iso")
	}
	var networks []netip.Prefix
	for _, n := range o.BMCNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			a, aerr := netip.ParseAddr(n)
			if aerr != nil {
				return redfishdc.Config{}, fmt.Errorf("--bmc-networks %q: want a CIDR or an address, e.g. 10.10.0.0/16", n)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Bits() == 0 {
			return redfishdc.Config{}, fmt.Errorf("--bmc-networks %q: that is every address, the cluster's own services included; list the BMC networks", n)
		}
		networks = append(networks, p.Masked())
	}
	pool, err := addressPool(o)
	if err != nil {
		return redfishdc.Config{}, err
	}
	pol, err := imagePolicy(o)
	if err != nil {
		return redfishdc.Config{}, err
	}
	dir := filepath.Join(o.WorkDir, "redfish-dc")
	images := &imagecache.Cache{Dir: filepath.Join(dir, "images"), FileDirs: pol.FileDirs, AllowHosts: pol.AllowHosts, MaxBytes: pol.MaxBytes,
		ConnectTimeout: pol.ConnectTimeout, HeaderTimeout: pol.HeaderTimeout, StallTimeout: pol.StallTimeout,
		Verify: func(ctx context.Context, path string) error { _, err := qemu.InspectBaseImage(ctx, path); return err }}
	return redfishdc.Config{Images: images, RawDir: filepath.Join(dir, "raw"), InstallerISO: o.InstallerISO,
		PublicURL: o.InstallerURL, BMCNetworks: networks, AddressPool: pool}, nil
}

// addressPool reads the --address-pool flags; nil without --address-pool.
func addressPool(o Options) (*redfishdc.AddressPool, error) {
	if o.AddressPool == "" {
		if o.AddressPoolRange != "" || o.AddressPoolGateway != "" || len(o.AddressPoolDNS) > 0 {
			return nil, errors.New("--address-pool-range, --address-pool-gateway and --address-pool-dns need --address-pool")
		}
		return nil, nil
	}
	subnet, err := netip.ParsePrefix(o.AddressPool)
	if err != nil {
		return nil, fmt.Errorf("--address-pool %q: want a subnet such as 10.20.0.0/24", o.AddressPool)
	}
	pool := &redfishdc.AddressPool{Subnet: subnet.Masked()}
	// The simulator's default range: .11 up, leaving the first ten for routers and services.
	pool.First, pool.Last = ipam.NthAddr(subnet, 11), ipam.LastUsable(subnet)
	if o.AddressPoolRange != "" {
		if pool.First, pool.Last, err = parseRange("--address-pool-range", o.AddressPoolRange, "10.20.0.50-10.20.0.250"); err != nil {
			return nil, err
		}
	}
	if o.AddressPoolGateway != "" {
		if pool.Gateway, err = netip.ParseAddr(o.AddressPoolGateway); err != nil {
			return nil, fmt.Errorf("--address-pool-gateway %q: want an address", o.AddressPoolGateway)
		}
	}
	for _, d := range o.AddressPoolDNS {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return nil, fmt.Errorf("--address-pool-dns %q: want an address", d)
		}
		pool.DNS = append(pool.DNS, a)
	}
	if err := pool.Validate(); err != nil {
		return nil, fmt.Errorf("--address-pool: %w", err)
	}
	return pool, nil
}

// parseRange reads a flag's FIRST-LAST addresses; example is shown when it cannot.
func parseRange(flag, value, example string) (first, last netip.Addr, err error) {
	f, l, ok := strings.Cut(value, "-")
	a, err1 := netip.ParseAddr(strings.TrimSpace(f))
	b, err2 := netip.ParseAddr(strings.TrimSpace(l))
	if !ok || err1 != nil || err2 != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("%s %q: want FIRST-LAST, e.g. %s", flag, value, example)
	}
	return a, b, nil
}

// installerServer serves the Redfish datacenter's HTTP paths while the manager runs.
type installerServer struct {
	addr     string
	provider *redfishdc.Provider
}

func (s *installerServer) Start(ctx context.Context) error {
	defer s.provider.Close()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("--installer-listen %s: %w", s.addr, err)
	}
	srv := &http.Server{Handler: s.provider, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("installer HTTP server: %w", err)
	}
	return nil
}
