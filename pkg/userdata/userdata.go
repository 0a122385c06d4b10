// Package userdata checks cloud-init user-data before any server is touched. It is its own tiny
// package so that the provider-neutral controller can validate profiles without linking the
// host layer (netlink, iptables, the ISO writer) that only the QEMU simulator needs.
package userdata

import (
	"bytes"
	"errors"
	"fmt"

	"sigs.k8s.io/yaml"
)

// MaxBytes bounds the user-data a NoCloud seed carries. cloud-init reads the whole seed into
// memory and the API object holding it lives in etcd, so both stay well below their limits.
const MaxBytes = 256 * 1024

// Validate checks user-data before any server is touched: it must not be empty or oversized, and
// a "#cloud-config" document must be a YAML mapping.
func Validate(userData []byte) error {
	if len(bytes.TrimSpace(userData)) == 0 {
		return errors.New("user-data is empty")
	}
	if len(userData) > MaxBytes {
		return fmt.Errorf("user-data is %d bytes, more than the %d a NoCloud seed may carry here: "+
			"move large files to the image or fetch them from the guest", len(userData), MaxBytes)
	}
	if !bytes.HasPrefix(userData, []byte("#cloud-config")) {
		return nil // scripts, MIME archives, includes: cloud-init's business.
	}
	var doc any
	if err := yaml.Unmarshal(userData, &doc); err != nil {
		return fmt.Errorf("user-data starts with #cloud-config but is not valid YAML: %w", err)
	}
	if doc == nil {
		return nil
	}
	if _, ok := doc.(map[string]any); !ok {
		return fmt.Errorf("user-data starts with #cloud-config but its YAML is a %T, not a mapping of cloud-config keys", doc)
	}
	return nil
}
