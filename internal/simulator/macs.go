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

// macClaims serialises MAC claims across Servers (repaves of different Servers run concurrently,
// each under its own Server lock).
var macClaims sync.Mutex

// claimMAC records mac as the MAC of the VM in vmDir, unless another VM directory under vmsDir
// already has it: then it returns that VM's <namespace>/<server>. Each VM directory's MACFile is
// the registry, so the check survives restarts and needs no other state.
func claimMAC(vmsDir, vmDir, mac string) (owner string, err error) {
	macClaims.Lock()
	defer macClaims.Unlock()
	files, err := filepath.Glob(filepath.Join(vmsDir, "*", "*", filenames.MACFile))
	if err != nil {
		return "", fmt.Errorf("listing MAC claims: %w", err)
	}
	for _, f := range files {
		dir := filepath.Dir(f)
		if dir == filepath.Clean(vmDir) {
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
			return filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir), nil
		}
	}
	if err := os.MkdirAll(vmDir, 0o700); err != nil {
		return "", fmt.Errorf("creating VM directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(vmDir, filenames.MACFile), []byte(mac+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("recording MAC address: %w", err)
	}
	return "", nil
}

// recordedMAC is the MAC the VM in vmDir was installed with ("" if none yet).
func recordedMAC(vmDir string) string {
	b, _ := os.ReadFile(filepath.Join(vmDir, filenames.MACFile))
	return strings.TrimSpace(string(b))
}
