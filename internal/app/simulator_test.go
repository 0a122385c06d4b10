package app

import (
	"context"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"stargate.io/stargate/internal/testenv"
)

func defaults(t *testing.T) Options {
	t.Helper()
	var o Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	o.MetricsAddr, o.ProbeAddr = "0", "0"
	return o
}

func TestRunRejectsBadFlagsClearly(t *testing.T) {
	cases := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"selector", func(o *Options) { o.ServerSelector = "a in (" }, "--server-selector"},
		{"memory", func(o *Options) { o.MaxMemory = "lots" }, "--max-memory"},
		{"provider", func(o *Options) { o.Provider = "vmware" }, "use qemu, mock or redfish"},
		{"grace", func(o *Options) { o.HostGracePeriod = 15 * time.Second }, "--host-grace-period"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := defaults(t)
			tc.edit(&o)
			err := Run(context.Background(), nil, o)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestSimulatorOptionsAreValidated(t *testing.T) {
	if os.Geteuid() != 0 {
		o := defaults(t)
		_, err := newSimulator(o, "", discard{})
		if err == nil || !strings.Contains(err.Error(), "must run as root") {
			t.Fatalf("non-root start: %v, want a clear 'must run as root' error", err)
		}
		return
	}
	// As root, only options rejected before any host change are tried here.
	for _, tc := range []struct {
		edit    func(*Options)
		wantErr string
	}{
		{func(o *Options) { o.Accel = "hvf" }, "unknown accelerator"},
		{func(o *Options) { o.Gateway = "192.168.100.1" }, "--gateway"},
		{func(o *Options) { o.Accel = "tcg"; o.IPRange = "192.168.100.20" }, "--ip-range"},
		{func(o *Options) { o.Accel = "tcg"; o.DNS = "one.one.one.one" }, "--dns"},
		{func(o *Options) { o.Accel = "tcg"; o.ConsoleSize = "64Ki" }, "--console-size"},
	} {
		o := defaults(t)
		tc.edit(&o)
		if _, err := newSimulator(o, "", discard{}); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("error %v, want one mentioning %q", err, tc.wantErr)
		}
	}
}

// --console-size takes a size of at least 1Mi; anything else is refused, naming the flag.
func TestConsoleSizeFlag(t *testing.T) {
	o := defaults(t)
	if n, err := consoleSize(o); err != nil || n != 16<<20 {
		t.Errorf("default: %d, %v; want 16Mi", n, err)
	}
	for in, want := range map[string]int64{"1Mi": 1 << 20, "256Mi": 256 << 20, "2G": 2e9} {
		o.ConsoleSize = in
		if n, err := consoleSize(o); err != nil || n != want {
			t.Errorf("%s: %d, %v; want %d", in, n, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-16Mi", "1023Ki", "lots", "16 MiB"} {
		o.ConsoleSize = bad
		if _, err := consoleSize(o); err == nil || !strings.Contains(err.Error(), "--console-size") {
			t.Errorf("%q: error %v, want one naming --console-size", bad, err)
		}
	}
}

type discard struct{}

func (discard) Info(string, ...any) {}

func TestRunExplainsMissingCRDs(t *testing.T) {
	testenv.NeedAssets(t)
	env := &envtest.Environment{} // a real apiserver without the Stargate CRDs
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the apiserver: %v", err)
		}
	}()
	o := defaults(t)
	o.Provider = "mock"
	err = Run(context.Background(), cfg, o)
	if err == nil || !strings.Contains(err.Error(), "kubectl apply -f config/crd/bases/") {
		t.Fatalf("error %v, want the CRD install command", err)
	}
}
