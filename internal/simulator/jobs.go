package simulator

import (
	"cmp"
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// errNobodyWaits cancels a job (a download) no repave asked about for the idle timeout.
var errNobodyWaits = errors.New("no repave asked for it any more")

// errRetry marks a job's failure that is not a verdict (what it needed went away meanwhile): the
// job is forgotten like a success, and the next repave starts it anew.
var errRetry = errors.New("to be tried again")

// backgroundJob is slow work — an image download — shared by every repave that needs the same
// result, and reported to them by polling: Repave must return quickly.
type backgroundJob struct {
	done    atomic.Bool
	started time.Time
	asked   atomic.Int64 // UnixNano of the last time a repave asked about it
	err     error        // the verdict, set before done
	// askers are the instance-ids of the repaves that asked while it ran: only they are told it
	// failed; any other repave starts it anew (the cause may be fixed by now). Guarded by
	// Provider.mu.
	askers map[string]bool
	// abandoned is set when the job was cancelled because nobody asked: it is forgotten once its
	// run has ended (and cleaned up), and no repave joins it meanwhile.
	abandoned atomic.Bool
}

func (j *backgroundJob) base() *backgroundJob { return j }

// job is a backgroundJob with its own results (the kinds embed backgroundJob).
type job interface{ base() *backgroundJob }

// joinJob returns the job under key for the repave of instanceID: the running one, or the failed
// one whose verdict this repave waited for; otherwise a new one, made by newJob and run by run in
// the background. A job that succeeded is forgotten (its result is in a cache now, where the next
// repave finds it); a failure is kept for the repaves that waited for it. A job no repave asked
// about for the idle timeout is cancelled (its Operations failed, were deleted, or the controller
// moved on) and forgotten once its run ended; one that failed with errRetry is forgotten too.
func joinJob[J job](p *Provider, jobs map[string]J, key, instanceID string, newJob func() J, run func(context.Context, J) error) J {
	p.mu.Lock()
	defer p.mu.Unlock()
	j, ok := jobs[key]
	if ok && j.base().abandoned.Load() {
		return j // still cleaning up after its cancel: the repave waits, then starts anew
	}
	if ok && (!j.base().done.Load() || j.base().askers[instanceID]) {
		j.base().askers[instanceID] = true
		j.base().asked.Store(time.Now().UnixNano())
		return j
	}
	j = newJob()
	b := j.base()
	b.started = time.Now()
	b.askers = map[string]bool{instanceID: true}
	b.asked.Store(time.Now().UnixNano())
	jobs[key] = j
	ctx, cancel := context.WithCancelCause(context.Background())
	idle := cmp.Or(p.cfg.Images.IdleTimeout, DefaultImageIdleTimeout)
	forget := func() {
		if cur, ok := jobs[key]; ok && cur.base() == b {
			delete(jobs, key)
		}
	}
	go watchIdle(p, b, idle, forget, cancel)
	go func() {
		err := run(ctx, j)
		p.mu.Lock()
		defer p.mu.Unlock()
		b.err = err
		b.done.Store(true)
		cancel(nil)
		if err == nil || b.abandoned.Load() || errors.Is(err, errRetry) {
			forget()
		}
	}()
	return j
}

// watchIdle cancels a job no repave asked about for idle (it is forgotten when its run ended),
// and forgets a failed one no repave asked about for idle: its verdict was told or is moot.
func watchIdle(p *Provider, j *backgroundJob, idle time.Duration, forget func(), cancel context.CancelCauseFunc) {
	tick := time.NewTicker(max(idle/4, 10*time.Millisecond))
	defer tick.Stop()
	for range tick.C {
		quiet := time.Since(time.Unix(0, j.asked.Load())) > idle
		switch {
		case j.done.Load() && j.err == nil: // forgotten as it ended
			return
		case j.done.Load() && quiet:
			p.mu.Lock()
			forget()
			p.mu.Unlock()
			return
		case j.done.Load():
		case quiet:
			j.abandoned.Store(true)
			cancel(errNobodyWaits)
			return
		}
	}
}
