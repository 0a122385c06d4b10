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
	for _, tc := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.InstallerURL = "" }, "--installer-url"},
		{func(o *Options) { o.InstallerISO = "" }, "--installer-iso"},
		{func(o *Options) { o.BMCNetworks = []string{"bmc.example"} }, "--bmc-networks"},
		{func(o *Options) { o.BMCNetworks = []string{"0.0.0.0/0"} }, "every address"},
		{func(o *Options) { o.BMCNetworks = []string{"::/0"} }, "every address"},
	} {
		o := base
		tc.mutate(&o)
		if _, err := redfishDCConfig(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one naming %s", o, err, tc.want)
		}
	}
}
