package hostnet

import (
	"os"
	"testing"

	"stargate.io/stargate/internal/netnstest"
)

// Tests that change networking run inside a network namespace the test binary
// creates for itself (as root); see netnstest.
func TestMain(m *testing.M) { os.Exit(netnstest.Main(m)) }
