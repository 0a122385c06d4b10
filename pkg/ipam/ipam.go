// Package ipam hands out the simulator's guest IPv4 addresses: persistently, one file per address
// as CNI's host-local plugin does, so an owner keeps its address across repaves and restarts and
// no address is ever given twice. It needs only files and a file lock, not the network itself.
package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/gofrs/flock"
)

// ErrPoolExhausted is returned when every address of the range is taken.
var ErrPoolExhausted = errors.New("IP address pool exhausted")

// Pool hands out IPv4 addresses from a range, persistently: one file per address (named after the
// address, holding the owner), as CNI's host-local plugin does. An owner keeps its address across
// repaves and restarts; an address is never given twice, even after a crash, because a file is
// claimed with an atomic link before the address is used. A file lock serialises allocators, also
// across processes.
type Pool struct {
	// Dir holds the address files, one directory per network.
	Dir string
	// First and Last bound the range, inclusive.
	First, Last netip.Addr
}

// Allocate returns owner's address, claiming the lowest free one if owner has none yet.
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	if owner == "" || strings.ContainsAny(owner, "\n") {
		return netip.Addr{}, fmt.Errorf("invalid IPAM owner %q", owner)
	}
	if !p.First.Is4() || !p.Last.Is4() || p.Last.Less(p.First) {
		return netip.Addr{}, fmt.Errorf("invalid IP range %s-%s", p.First, p.Last)
	}
	unlock, err := p.lock()
	if err != nil {
		return netip.Addr{}, err
	}
	defer unlock()

	if addr, ok, err := p.lookupLocked(owner); err != nil || ok {
		return addr, err
	}
	for a := p.First; !p.Last.Less(a); a = a.Next() {
		claimed, err := p.claim(a, owner)
		if err != nil {
			return netip.Addr{}, err
		}
		if claimed {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: all %d addresses of %s-%s are in use; delete unused Servers or widen the range", ErrPoolExhausted, p.size(), p.First, p.Last)
}

// Lookup returns owner's address, if it has one.
func (p *Pool) Lookup(owner string) (netip.Addr, bool, error) {
	unlock, err := p.lock()
	if err != nil {
		return netip.Addr{}, false, err
	}
	defer unlock()
	return p.lookupLocked(owner)
}

// Release frees owner's address. Releasing an owner without an address is not an error.
func (p *Pool) Release(owner string) error {
	unlock, err := p.lock()
	if err != nil {
		return err
	}
	defer unlock()
	entries, err := p.entries()
	if err != nil {
		return err
	}
	for addr, o := range entries {
		if o == owner {
			if err := os.Remove(filepath.Join(p.Dir, addr.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("releasing %s: %w", addr, err)
			}
		}
	}
	return nil
}

// Allocations returns every claimed address and its owner.
func (p *Pool) Allocations() (map[netip.Addr]string, error) {
	unlock, err := p.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return p.entries()
}

func (p *Pool) size() uint32 {
	first, last := p.First.As4(), p.Last.As4()
	return binary.BigEndian.Uint32(last[:]) - binary.BigEndian.Uint32(first[:]) + 1
}

func (p *Pool) lock() (func(), error) {
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating IPAM directory: %w", err)
	}
	l := flock.New(filepath.Join(p.Dir, ".lock"))
	if err := l.Lock(); err != nil {
		return nil, fmt.Errorf("locking IPAM directory %s: %w", p.Dir, err)
	}
	return func() { _ = l.Unlock() }, nil
}

func (p *Pool) lookupLocked(owner string) (netip.Addr, bool, error) {
	entries, err := p.entries()
	if err != nil {
		return netip.Addr{}, false, err
	}
	for addr, o := range entries {
		if o == owner {
			return addr, true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// entries reads every address file. Files that are not addresses (the lock, temporaries) are skipped.
func (p *Pool) entries() (map[netip.Addr]string, error) {
	des, err := os.ReadDir(p.Dir)
	if err != nil {
		return nil, fmt.Errorf("reading IPAM directory: %w", err)
	}
	out := map[netip.Addr]string{}
	for _, de := range des {
		addr, err := netip.ParseAddr(de.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.Dir, de.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading IPAM entry %s: %w", de.Name(), err)
		}
		out[addr] = strings.TrimSpace(string(b))
	}
	return out, nil
}

// claim atomically creates the file for addr holding owner; false when addr is taken. The owner is
// written to a temporary file first and linked into place, so a crash never leaves an empty claim.
func (p *Pool) claim(addr netip.Addr, owner string) (bool, error) {
	final := filepath.Join(p.Dir, addr.String())
	if _, err := os.Lstat(final); err == nil {
		return false, nil
	}
	tmp, err := os.CreateTemp(p.Dir, ".claim-*")
	if err != nil {
		return false, fmt.Errorf("claiming %s: %w", addr, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(owner + "\n"); err != nil {
		tmp.Close()
		return false, fmt.Errorf("claiming %s: %w", addr, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, fmt.Errorf("claiming %s: %w", addr, err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("claiming %s: %w", addr, err)
	}
	if err := os.Link(tmp.Name(), final); err != nil {
		if errors.Is(err, os.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("claiming %s: %w", addr, err)
	}
	return true, nil
}
