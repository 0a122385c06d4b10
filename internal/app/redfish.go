package app

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"stargate.io/stargate/internal/bmc"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/redfish"
)

// redfishCertDir is where the simulator keeps the Redfish service's self-signed certificate, in
// its work directory, so clients that pinned it keep trusting it across restarts.
const redfishCertDir = "redfish"

// bindRedfishFlags registers the flags of the Redfish BMC service.
func (o *Options) bindRedfishFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.RedfishAddress, "redfish-address", "", "serve a Redfish BMC for every Server with spec.bmc on this address, "+
		"e.g. 0.0.0.0:8443 (HTTPS with a self-signed certificate kept in --work-dir/redfish; default: no Redfish)")
	fs.StringVar(&o.RedfishURL, "redfish-url", "", "the base URL clients reach the Redfish service at, shown in status.bmc.address "+
		"(default: https://<this host's name or the --redfish-address host>:<port>)")
	fs.BoolVar(&o.RedfishPlainHTTP, "redfish-insecure-http", false, "serve Redfish over plain HTTP instead of HTTPS (credentials then cross the network in clear)")
}

// redfishBase is the URL clients reach the service at.
func redfishBase(o Options) (string, error) {
	if o.RedfishURL != "" {
		return o.RedfishURL, nil
	}
	host, port, err := net.SplitHostPort(o.RedfishAddress)
	if err != nil {
		return "", fmt.Errorf("--redfish-address %q: want host:port, e.g. 0.0.0.0:8443: %w", o.RedfishAddress, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if host, err = os.Hostname(); err != nil {
			return "", fmt.Errorf("--redfish-url not given and the host name is unknown: %w", err)
		}
	}
	scheme := "https"
	if o.RedfishPlainHTTP {
		scheme = "http"
	}
	return scheme + "://" + net.JoinHostPort(host, port), nil
}

// setupRedfish adds the Redfish service to the manager: it starts and stops with it. Its BMC
// faults go in copts.RunningFaults.
func setupRedfish(mgr ctrl.Manager, o Options, provider controller.Provider, copts *controller.Options, wake chan event.GenericEvent,
	metrics *controller.Metrics) error {
	srv := &redfish.Server{PlainHTTP: o.RedfishPlainHTTP}
	if !o.RedfishPlainHTTP {
		host, _, _ := net.SplitHostPort(o.RedfishAddress)
		hosts := []string{"localhost"}
		if name, err := os.Hostname(); err == nil {
			hosts = append(hosts, name)
		}
		if host != "" && !net.ParseIP(host).IsUnspecified() {
			hosts = append(hosts, host)
		}
		cert, err := redfish.EnsureCertificate(filepath.Join(o.WorkDir, redfishCertDir), hosts)
		if err != nil {
			return fmt.Errorf("redfish certificate: %w", err)
		}
		srv.Certificate = &cert
	}
	backend := bmc.NewBackend(mgr, provider, *copts, wake, metrics)
	copts.RunningFaults = backend.Faults
	srv.Handler = &redfish.Service{Backend: backend, Log: ctrl.Log.WithName("redfish")}
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return srv.ListenAndServe(ctx, o.RedfishAddress)
	}))
}
