package simulator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"stargate.io/stargate/pkg/filenames"
)

// macClaims serialises MAC claims across Servers and bakes (repaves of different Servers and
// bakes run concurrently, each under its own lock).
var macClaims sync.Mutex

// claimMAC records mac as the MAC of the VM in dir — a Server's VM directory or a bake's
// directory — unless another VM, a Server's or a bake's, already has it: then it returns who has
// it ("Server <namespace>/<server>" or "the bake VM of golden image <key16>"). The MACFile of each
// VM and bake directory is the registry, so the check survives restarts and needs no other state.
func claimMAC(l Layout, dir, mac string) (owner string, err error) {
	macClaims.Lock()
	defer macClaims.Unlock()
	registries := []struct {
		pattern string
		name    func(dir string) string
	}{
		{filepath.Join(l.VMsDir(), "*", "*", filenames.MACFile), func(dir string) string {
			return "Server " + filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir)
		}},
		{filepath.Join(l.BakesDir(), "*", filenames.MACFile), func(dir string) string {
			key := filepath.Base(dir)
			return "the bake VM of golden image " + key[:min(len(key), 16)]
		}},
	}
	for _, r := range registries {
		files, err := filepath.Glob(r.pattern)
		if err != nil {
			return "", fmt.Errorf("listing MAC claims: %w", err)
		}
		for _, f := range files {
			other := filepath.Dir(f)
			if other == filepath.Clean(dir) {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue // released meanwhile
				}
				return "", fmt.Errorf("reading MAC claim: %w", err)
			}
			if strings.EqualFold(strings.TrimSpace(string(b)), mac) {
				return r.name(other), nil
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating the VM's directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, filenames.MACFile), []byte(mac+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("recording MAC address: %w", err)
	}
	return "", nil
}

// recordedMAC is the MAC the VM in vmDir was installed with ("" if none yet).
func recordedMAC(vmDir string) string {
	b, _ := os.ReadFile(filepath.Join(vmDir, filenames.MACFile))
	return strings.TrimSpace(string(b))
}
