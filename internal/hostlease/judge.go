package hostlease

import (
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// HostState is what an observer concludes about a host from its Lease.
type HostState int

const (
	// Undecided means the observer has not yet seen the Lease renewed, nor waited a full grace period.
	Undecided HostState = iota
	// Alive means the observer saw the Lease renewed within the grace period.
	Alive
	// Lost means the observer saw no renewal for a grace period.
	Lost
)

// Verdict is the observer's conclusion about one host.
type Verdict struct {
	HostID string
	Lease  string
	State  HostState
	// Since is, for a lost host, when the observer last saw its Lease change (by its own clock).
	Since time.Time
}

// Judge decides which hosts are lost from successive lists of their Leases. It trusts only its
// own clock: a host is lost when its Lease's resourceVersion has not changed for Grace since this
// judge last saw it change (or first saw it). The hosts' own timestamps are never compared with
// it, so skewed host clocks cannot declare anybody lost.
type Judge struct {
	Grace time.Duration

	hosts map[string]*hostView
	blind bool
	// guardUntil ends the last mass-silence pause (see Observe).
	guardUntil time.Time
}

type hostView struct {
	lease   string
	rv      string
	changed time.Time
	renewed bool
	lost    bool
}

// Blind records that the Leases could not be listed: the API server may be down, and then no
// host can renew either. The next successful Observe gives every host a full grace period.
func (j *Judge) Blind() { j.blind = true }

// Observe takes the current host Leases (those without a host id annotation are ignored) and
// returns a verdict per host. When more than half of the hosts not yet lost (and at least two)
// fall silent at once, the API server was probably down or unreachable for all of them: nobody is
// declared lost until they had a full grace period to renew again; those still silent then are.
func (j *Judge) Observe(now time.Time, leases []coordinationv1.Lease) []Verdict {
	if j.hosts == nil {
		j.hosts = map[string]*hostView{}
	}
	seen := map[string]bool{}
	for i := range leases {
		l := &leases[i]
		id := l.Annotations[AnnotationHostID]
		if id == "" {
			continue
		}
		seen[id] = true
		v, ok := j.hosts[id]
		switch {
		case !ok:
			j.hosts[id] = &hostView{lease: l.Namespace + "/" + l.Name, rv: l.ResourceVersion, changed: now}
		case v.rv != l.ResourceVersion:
			v.rv, v.changed, v.renewed, v.lost = l.ResourceVersion, now, true, false
		}
	}
	for id := range j.hosts {
		if !seen[id] {
			delete(j.hosts, id) // Lease deleted: the host was decommissioned
		}
	}
	if j.blind {
		j.blind = false
		for _, v := range j.hosts {
			if !v.lost {
				v.changed = now
			}
		}
	}

	var silent []*hostView
	candidates := 0
	for _, v := range j.hosts {
		if v.lost {
			continue
		}
		candidates++
		if now.Sub(v.changed) >= j.Grace {
			silent = append(silent, v)
		}
	}
	if len(silent) > 1 && 2*len(silent) > candidates && now.After(j.guardUntil.Add(j.Grace)) {
		j.guardUntil = now.Add(j.Grace)
		for _, v := range silent {
			v.changed = now
		}
		silent = nil
	}
	for _, v := range silent {
		v.lost = true
	}

	out := make([]Verdict, 0, len(j.hosts))
	for id, v := range j.hosts {
		vd := Verdict{HostID: id, Lease: v.lease}
		switch {
		case v.lost:
			vd.State, vd.Since = Lost, v.changed
		case v.renewed:
			vd.State = Alive
		}
		out = append(out, vd)
	}
	return out
}
