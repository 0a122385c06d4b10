package hostnet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"golang.org/x/sys/unix"
)

// TapName derives a tap device name from a VM's identity (such as namespace/name). Linux limits
// interface names to 15 bytes, so the identity is hashed: stable across restarts, and collisions
// between different identities are as unlikely as a 48-bit hash collision.
func TapName(identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return tapPrefix + hex.EncodeToString(sum[:])[:unix.IFNAMSIZ-1-len(tapPrefix)]
}

// MACAddress derives a stable, locally administered unicast MAC address (52:54:00:xx:xx:xx, QEMU's
// customary prefix) from a VM's identity.
func MACAddress(identity string) string {
	sum := sha256.Sum256([]byte("mac:" + identity))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", sum[0], sum[1], sum[2])
}
