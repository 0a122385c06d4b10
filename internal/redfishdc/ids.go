package redfishdc

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"strings"
)

// randomID names an Operation's URLs: 52 base32 characters (256 bits), lower case, nothing a
// picky BMC refuses in a URL.
func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// randomToken is a bearer token (256 bits, URL-safe base64).
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
