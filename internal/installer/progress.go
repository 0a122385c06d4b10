package installer

import (
	"context"
	"errors"
	"sync"

	"stargate.io/stargate/pkg/installspec"
)

// progressSender sends Writing reports from its own goroutine, so a slow or dead callback never
// slows the image write: only the newest snapshot waits, older ones are dropped.
type progressSender struct {
	reporter *Reporter
	disk     string
	pending  chan Progress
	done     chan struct{}

	mu     sync.Mutex
	latest Progress
}

// newProgressSender starts the sender; a 410 Gone answer (ErrOperationOver) calls abort with it.
func newProgressSender(ctx context.Context, reporter *Reporter, disk string, abort context.CancelCauseFunc) *progressSender {
	p := &progressSender{reporter: reporter, disk: disk, pending: make(chan Progress, 1), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for pr := range p.pending {
			err := reporter.Send(ctx, installspec.Report{Phase: installspec.PhaseWriting, Disk: disk,
				BytesWritten: pr.Written, TotalBytes: pr.Total, BytesPerSecond: pr.BytesPerSecond})
			if errors.Is(err, ErrOperationOver) {
				abort(err)
			}
		}
	}()
	return p
}

// update records a snapshot and queues it, replacing one not yet sent.
func (p *progressSender) update(pr Progress) {
	p.mu.Lock()
	p.latest = pr
	p.mu.Unlock()
	for {
		select {
		case p.pending <- pr:
			return
		default:
		}
		select {
		case <-p.pending: // drop the stale snapshot
		default:
		}
	}
}

// stop waits for the report in flight, if any.
func (p *progressSender) stop() {
	close(p.pending)
	<-p.done
}

func (p *progressSender) last() Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latest
}
