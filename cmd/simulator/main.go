// Command simulator is the simulator datacenter controller: it runs on a Linux host (as root, with
// a kubeconfig), watches Stargate Operations and repaves Servers as QEMU VMs on this host.
package main

import (
	"flag"
	"fmt"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"stargate.io/stargate/internal/app"
)

func main() {
	// `simulator paths` prints the host layout for scripts; it needs no flags of the controller.
	if len(os.Args) > 1 && os.Args[1] == "paths" {
		if err := app.Paths(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "simulator: paths: %v\n", err)
			os.Exit(2)
		}
		return
	}

	var opts app.Options
	opts.BindFlags(flag.CommandLine)
	zopts := zap.Options{Development: false}
	zopts.BindFlags(flag.CommandLine)
	flag.Parse() // controller-runtime adds --kubeconfig
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zopts)))

	if opts.Teardown {
		if err := app.Teardown(ctrl.SetupSignalHandler(), opts); err != nil {
			fmt.Fprintf(os.Stderr, "simulator: teardown: %v\n", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "simulator: no cluster to talk to (%v): pass --kubeconfig or set KUBECONFIG\n", err)
		os.Exit(1)
	}
	if err := app.Run(ctrl.SetupSignalHandler(), cfg, opts); err != nil {
		fmt.Fprintf(os.Stderr, "simulator: %v\n", err)
		os.Exit(1)
	}
}
