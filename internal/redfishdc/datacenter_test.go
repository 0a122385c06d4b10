package redfishdc_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/redfishdc"
	"stargate.io/stargate/pkg/imagecache"
	"stargate.io/stargate/pkg/qemu"
)

// startProvider runs the Redfish datacenter as the simulator binary does with --provider redfish:
// the provider (cfg, its readers and PublicURL filled in here) with its HTTP server on listen, and
// the controllers on envtest, watching namespace ns. All of it stops when the test ends.
func startProvider(t *testing.T, ns, listen string, opts controller.Options, cfg redfishdc.Config) *redfishdc.Provider {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	// The provider's URLs are known once its server listens; the handler is set right after.
	var handler atomic.Pointer[redfishdc.Provider]
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.Load().ServeHTTP(w, r) }))
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	mgrOpts := ctrl.Options{
		Scheme:                 env.Scheme,
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	}
	if cfg.Log.GetSink() != nil {
		mgrOpts.Logger = cfg.Log
	}
	mgr, err := ctrl.NewManager(env.Config, mgrOpts)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Reader, cfg.SecretReader, cfg.PublicURL = mgr.GetClient(), mgr.GetAPIReader(), srv.URL
	p, err := redfishdc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	handler.Store(p)
	if err := controller.Setup(mgr, p, opts, controller.NewMetrics(prometheus.NewRegistry())); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = p.Close()
	})
	return p
}

// imageCache is the image cache the simulator binary makes (see internal/app), in dir, taking
// file:// images under imageDir.
func imageCache(dir, imageDir string) *imagecache.Cache {
	return &imagecache.Cache{Dir: dir, FileDirs: []string{imageDir},
		Verify: func(ctx context.Context, path string) error { _, err := qemu.InspectBaseImage(ctx, path); return err }}
}
