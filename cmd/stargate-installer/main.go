// Command stargate-installer is the installer agent: /init of the installer ISO's initramfs. It
// installs the raw image its Spec names (see internal/installer and pkg/installspec), then powers
// the machine off, whether the install worked or not; a failure is reported to the controller and
// printed on the console first.
//
// Run as anything but PID 1 (for debugging), it mounts nothing and does not power off:
//
//	stargate-installer -config spec.json
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"stargate.io/stargate/internal/installer"
)

// consoleHold is how long a failure nobody could be told about stays on the console before the
// machine powers off.
const consoleHold = 10 * time.Minute

func main() {
	config := flag.String("config", "", "install spec to read (default: the initramfs' own)")
	flag.Parse()
	isInit := os.Getpid() == 1
	var console io.Writer = os.Stderr
	if isInit {
		if err := installer.SetUpInit(); err != nil {
			fmt.Fprintf(os.Stderr, "stargate-installer: setting up: %v\n", err)
			installer.PowerOff()
		}
		console = installer.OpenConsoles(os.Stderr)
	}
	agent := &installer.Agent{ConfigPath: *config, Console: console}
	err := agent.Run(context.Background())
	if err == nil {
		fmt.Fprintln(console, "stargate-installer: install complete")
	}
	if isInit {
		if err != nil && !agent.FailureReported {
			// Nobody heard about the failure: leave the reason on the console for a human first.
			fmt.Fprintf(console, "stargate-installer: the controller could not be told; powering off in %s\n", consoleHold)
			time.Sleep(consoleHold)
		}
		installer.PowerOff()
	}
	if err != nil {
		os.Exit(1)
	}
}
