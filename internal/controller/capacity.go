package controller

import (
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// capacity is the host's budget for Operations running at once: how many, and how much memory.
// It lives in memory because the cache lags behind this process's own status writes; it is filled
// with the Operations already Running before the first Pending one is admitted, so the bounds hold
// across restarts too.
type capacity struct {
	maxParallel int
	maxMemory   int64
	// onChange is told how many Operations hold capacity after every change (a metric).
	onChange func(running int)

	mu   sync.Mutex
	warm bool
	held map[types.NamespacedName]int64
}

func newCapacity(maxParallel int, maxMemory int64, onChange func(int)) *capacity {
	return &capacity{maxParallel: maxParallel, maxMemory: maxMemory, onChange: onChange, held: map[types.NamespacedName]int64{}}
}

// warmUp records the Operations found Running, once, before anything is admitted. list is called
// only the first time.
func (c *capacity) warmUp(list func() (map[types.NamespacedName]int64, error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.warm {
		return nil
	}
	running, err := list()
	if err != nil {
		return fmt.Errorf("counting running operations: %w", err)
	}
	for key, mem := range running {
		c.held[key] = mem
	}
	c.warm = true
	c.changed()
	return nil
}

// admit reserves capacity for an Operation, or says why it must wait. Admitting an Operation that
// already holds capacity succeeds.
func (c *capacity) admit(key types.NamespacedName, mem int64) (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[key]; ok {
		return true, ""
	}
	used := c.usedLocked()
	background := ""
	if n := c.backgroundLocked(); n > 0 {
		background = fmt.Sprintf(" (%d of them the host's own background VMs, e.g. golden image bakes)", n)
	}
	if c.maxParallel > 0 && len(c.held) >= c.maxParallel {
		return false, fmt.Sprintf("Waiting for host capacity: %d of %d parallel repaves running%s", len(c.held), c.maxParallel, background)
	}
	if c.maxMemory > 0 && used+mem > c.maxMemory {
		return false, fmt.Sprintf("Waiting for host capacity: repaves in progress use %d MiB of %d MiB memory%s, this one needs %d MiB",
			used>>20, c.maxMemory>>20, background, mem>>20)
	}
	c.held[key] = mem
	c.changed()
	return true, ""
}

// tryHold reserves memory for a provider's background work under key (a HostCapacity), if the
// budget has room now. Before the running Operations are counted (warmUp) it never has.
func (c *capacity) tryHold(key string, mem int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := backgroundKey(key)
	if _, ok := c.held[k]; ok {
		return true
	}
	if !c.warm || (c.maxParallel > 0 && len(c.held) >= c.maxParallel) || (c.maxMemory > 0 && c.usedLocked()+mem > c.maxMemory) {
		return false
	}
	c.held[k] = mem
	c.changed()
	return true
}

// backgroundKey holds a provider's background work in the same map as Operations: an empty
// namespace, which no Operation has.
func backgroundKey(key string) types.NamespacedName { return types.NamespacedName{Name: key} }

// usedLocked is the memory held; c.mu is held.
func (c *capacity) usedLocked() int64 {
	used := int64(0)
	for _, m := range c.held {
		used += m
	}
	return used
}

// background is how many holders are a provider's background work; c.mu is held.
func (c *capacity) backgroundLocked() int {
	n := 0
	for k := range c.held {
		if k.Namespace == "" {
			n++
		}
	}
	return n
}

// hold records a running Operation (idempotent).
func (c *capacity) hold(key types.NamespacedName, mem int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[key]; !ok {
		c.held[key] = mem
		c.changed()
	}
}

// release returns an Operation's capacity (idempotent).
func (c *capacity) release(key types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[key]; ok {
		delete(c.held, key)
		c.changed()
	}
}

func (c *capacity) changed() {
	if c.onChange != nil {
		c.onChange(len(c.held))
	}
}
