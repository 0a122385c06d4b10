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
	used := int64(0)
	for _, m := range c.held {
		used += m
	}
	if c.maxParallel > 0 && len(c.held) >= c.maxParallel {
		return false, fmt.Sprintf("Waiting for host capacity: %d of %d parallel repaves running", len(c.held), c.maxParallel)
	}
	if c.maxMemory > 0 && used+mem > c.maxMemory {
		return false, fmt.Sprintf("Waiting for host capacity: repaves in progress use %d MiB of %d MiB memory, this one needs %d MiB",
			used>>20, c.maxMemory>>20, mem>>20)
	}
	c.held[key] = mem
	c.changed()
	return true, ""
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
