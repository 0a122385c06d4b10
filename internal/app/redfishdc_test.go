package app

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestRedfishDCFlags(t *testing.T) {
	base := Options{WorkDir: t.TempDir(), InstallerURL: "http://10.0.0.1:8082", InstallerISO: "/srv/installer.iso"}
	o := base
	o.BMCNetworks = []string{"10.10.0.0/16", "192.168.5.7"}
	cfg, err := redfishDCConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.10.0.0/16"), netip.MustParsePrefix("192.168.5.7/32")}
	if !slices.Equal(cfg.BMCNetworks, want) || cfg.PublicURL != o.InstallerURL || cfg.Images == nil || cfg.Images.Verify == nil {
		t.Errorf("config %+v", cfg)
	}
	if cfg.AddressPool != nil {
		t.Errorf("no --address-pool, yet a pool: %+v", cfg.AddressPool)
	}
	o.AddressPool, o.AddressPoolGateway, o.AddressPoolDNS = "10.20.0.0/24", "10.20.0.1", []string{"10.20.0.2"}
	if cfg, err = redfishDCConfig(o); err != nil {
		t.Fatal(err)
	}
	if p := cfg.AddressPool; p == nil || p.First != netip.MustParseAddr("10.20.0.11") || p.Last != netip.MustParseAddr("10.20.0.254") ||
		p.Gateway != netip.MustParseAddr("10.20.0.1") || len(p.DNS) != 1 {
		t.Errorf("--address-pool 10.20.0.0/24: %+v, want .11-.254 with the gateway and DNS", p)
	}
	for _, tc := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.InstallerURL = "" }, "--installer-url"},
		{func(o *Options) { o.InstallerISO = "" }, "--installer-iso"},
		{func(o *Options) { o.BMCNetworks = []string{"bmc.example"} }, "--bmc-networks"},
		{func(o *Options) { o.BMCNetworks = []string{"0.0.0.0/0"} }, "every address"},
		{func(o *Options) { o.BMCNetworks = []string{"::/0"} }, "every address"},
		{func(o *Options) { o.AddressPool = "10.20.0.300/24" }, "--address-pool"},
		{func(o *Options) { o.AddressPoolGateway = "10.20.0.1" }, "need --address-pool"},
		{func(o *Options) { o.AddressPool, o.AddressPoolRange = "10.20.0.0/24", "10.20.1.5-10.20.1.9" }, "not inside"},
		{func(o *Options) { o.AddressPool, o.AddressPoolGateway = "10.20.0.0/24", "10.20.0.50" }, "outside the range"},
		{func(o *Options) { o.AddressPool, o.AddressPoolDNS = "10.20.0.0/24", []string{"dns.example"} }, "--address-pool-dns"},
	} {
		o := base
		tc.mutate(&o)
		if _, err := redfishDCConfig(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one naming %s", o, err, tc.want)
		}
	}
}
