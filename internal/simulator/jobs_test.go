package simulator

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// testJob is a backgroundJob with nothing of its own.
type testJob struct{ backgroundJob }

// Repaves that need the same job share one run; a failure is told to those that waited, and only
// to them; a success is forgotten.
func TestJoinJob(t *testing.T) {
	p := &Provider{}
	jobs := map[string]*testJob{}
	var runs atomic.Int32
	newJob := func() *testJob { return &testJob{} }
	release := make(chan struct{})
	failing := func(context.Context, *testJob) error {
		runs.Add(1)
		<-release
		return errors.New("broken installation")
	}
	first := joinJob(p, jobs, "key", "i-1", newJob, failing)
	if second := joinJob(p, jobs, "key", "i-2", newJob, failing); second != first {
		t.Fatal("a second repave of the same key started another job")
	}
	close(release)
	for !first.done.Load() {
		time.Sleep(time.Millisecond)
	}
	if again := joinJob(p, jobs, "key", "i-2", newJob, failing); again != first || again.err == nil {
		t.Errorf("a repave that waited does not get the failure: %+v", again)
	}
	succeeding := func(context.Context, *testJob) error { runs.Add(1); return nil }
	fresh := joinJob(p, jobs, "key", "i-3", newJob, succeeding)
	if fresh == first {
		t.Fatal("a repave that did not wait for the failure got it instead of a new try")
	}
	waitForgotten(t, p, jobs, "key", "a successful job is still remembered")
	if n := runs.Load(); n != 2 {
		t.Errorf("%d runs, want 2", n)
	}
}

// A failure is kept for those who waited, then forgotten once nobody asked for the idle timeout.
func TestFailedJobForgottenWhenIdle(t *testing.T) {
	p := &Provider{cfg: Config{Images: ImagePolicy{IdleTimeout: 50 * time.Millisecond}}}
	jobs := map[string]*testJob{}
	j := joinJob(p, jobs, "key", "i-1", func() *testJob { return &testJob{} },
		func(context.Context, *testJob) error { return errors.New("broken") })
	waitForgotten(t, p, jobs, "key", "a failed job nobody asks about is remembered for ever")
	if !j.done.Load() || j.err == nil {
		t.Errorf("the job was forgotten before its verdict: %+v", j)
	}
}

// waitForgotten waits until jobs holds nothing under key, or fails with why.
func waitForgotten[J any](t *testing.T, p *Provider, jobs map[string]J, key, why string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		p.mu.Lock()
		_, kept := jobs[key]
		p.mu.Unlock()
		if !kept {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
	}
}
