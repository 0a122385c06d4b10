package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"stargate.io/stargate/internal/simulator"
	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/redfish"
)

// pathsUsage is the synopsis of the paths subcommand.
const pathsUsage = "usage: simulator paths [--work-dir DIR] [--namespace NS --server NAME]"

// Paths implements `simulator paths`: it prints where the simulator keeps things on this host as
// key=value lines (no quoting, one per line), so shell scripts ask the binary instead of
// hard-coding the layout. The keys are work_dir, images_dir, vms_dir, run_dir, ipam_dir,
// media_dir, golden_dir, bakes_dir and bmc_certificate, and with --namespace and --server also vm_dir, disk, seed,
// console, console_markers (the lines the host waits for, kept from a console that outgrew
// --console-size), pidfile, instance_id, qmp_socket, tap and mac (the MAC derived from the
// server's identity). It needs no root and no cluster and touches nothing on disk.
func Paths(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("paths", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, once, to main
	workDir := fs.String("work-dir", filenames.DefaultWorkDir, "the simulator's --work-dir")
	namespace := fs.String("namespace", "", "namespace of a Server whose VM paths to print (with --server)")
	server := fs.String("server", "", "name of a Server whose VM paths to print (with --namespace)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fmt.Fprintln(out, pathsUsage)
			fs.PrintDefaults()
			return nil
		}
		return fmt.Errorf("%w (%s)", err, pathsUsage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (%s)", fs.Arg(0), pathsUsage)
	}
	if (*namespace == "") != (*server == "") {
		return fmt.Errorf("--namespace and --server go together (%s)", pathsUsage)
	}
	if *workDir == "" {
		*workDir = filenames.DefaultWorkDir // as the simulator itself does
	}
	// A newline would split a value into a second, bogus line.
	if strings.ContainsAny(*workDir, "\n\r") {
		return fmt.Errorf("--work-dir %q contains a line break", *workDir)
	}

	// Cleaned as filepath.Join cleans every path below, so work_dir is their prefix verbatim.
	layout := simulator.Layout{WorkDir: filepath.Clean(*workDir)}
	lines := [][2]string{
		{"work_dir", layout.WorkDir},
		{"images_dir", layout.ImagesDir()},
		{"vms_dir", layout.VMsDir()},
		{"run_dir", layout.RunDir()},
		{"ipam_dir", layout.IPAMDir()},
		{"media_dir", layout.MediaDir()},
		{"golden_dir", layout.GoldenDir()},
		{"bakes_dir", layout.BakesDir()},
		// The BMC's self-signed certificate (--redfish-address): the CA a Redfish client trusts.
		{"bmc_certificate", filepath.Join(layout.WorkDir, redfishCertDir, redfish.CertFile)},
	}
	if *server != "" {
		// Kubernetes would refuse other names; refusing them here keeps "../x" out of paths.
		if errs := validation.IsDNS1123Label(*namespace); len(errs) > 0 {
			return fmt.Errorf("--namespace %q: %s", *namespace, strings.Join(errs, "; "))
		}
		if errs := validation.IsDNS1123Subdomain(*server); len(errs) > 0 {
			return fmt.Errorf("--server %q: %s", *server, strings.Join(errs, "; "))
		}
		vm, err := layout.VM(types.NamespacedName{Namespace: *namespace, Name: *server})
		if err != nil {
			return err
		}
		lines = append(lines, [][2]string{
			{"vm_dir", vm.Dir},
			{"disk", vm.Disk},
			{"seed", vm.Seed},
			{"console", vm.Console},
			{"console_markers", vm.ConsoleMarkers},
			{"pidfile", vm.PIDFile},
			{"instance_id", vm.InstanceID},
			{"qmp_socket", vm.QMPSocket},
			{"tap", vm.Tap},
			{"mac", vm.MAC},
		}...)
	}
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s=%s\n", l[0], l[1])
	}
	if _, err := io.WriteString(out, b.String()); err != nil {
		return fmt.Errorf("writing paths: %w", err)
	}
	return nil
}
