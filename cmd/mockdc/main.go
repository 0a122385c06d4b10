// Command mockdc serves a fake datacenter API (see internal/mockdc) for running the controller
// without QEMU: `bin/mockdc --listen 127.0.0.1:8090 --step-delay 2s`, then
// `bin/simulator --provider=mock --mock-url http://127.0.0.1:8090`.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"stargate.io/stargate/internal/mockdc"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8090", "address to serve the mock datacenter API on")
	stepDelay := flag.Duration("step-delay", 2*time.Second, "how long each step of a repave takes")
	flag.Parse()
	srv := &http.Server{Addr: *listen, Handler: mockdc.NewServer(mockdc.Config{StepDelay: *stepDelay}), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(os.Stderr, "mockdc: serving on http://%s (step delay %s)\n", *listen, *stepDelay)
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintf(os.Stderr, "mockdc: %v\n", err)
		os.Exit(1)
	}
}
