package simulator

// BakesStarted is how many golden image bakes p started.
func BakesStarted(p *Provider) int64 { return p.bakesStarted.Load() }

// BakesRunning is how many golden image bakes p runs now or has queued.
func BakesRunning(p *Provider) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.bakes) + len(p.queuedBakes)
}
