package simulator

// BakesStarted is how many golden image bakes p started.
func BakesStarted(p *Provider) int64 { return p.bakesStarted.Load() }
