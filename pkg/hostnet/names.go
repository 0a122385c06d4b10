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

// MACAddress derives a stable, locally administered unicast MAC address from a VM's identity. All
// 46 free bits come from the hash (the first octet's two low bits are fixed: unicast, locally
// administered), so among 1,000 Servers a collision has a chance of about 1 in 100 million;
// callers still check for one before booting.
func MACAddress(identity string) string {
	sum := sha256.Sum256([]byte("mac:" + identity))
	first := sum[0]&0xfc | 0x02
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", first, sum[1], sum[2], sum[3], sum[4], sum[5])
}
