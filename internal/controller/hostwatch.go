package controller

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/hostlease"
)

// serverHostIndex indexes Servers by their owner (status.host).
const serverHostIndex = "status.host"

// Liveness configures the host observer: one process of all hosts (elected) watches every host's
// Lease and shows, on the Servers and Operations of a host that stopped renewing it, that their
// machines' state is unknown. It takes nothing over: hand-over stays an operator's decision.
type Liveness struct {
	// Namespace holds the host Leases and the observer's election Lease.
	Namespace string
	// Grace is how long a host Lease may go unchanged, by the observer's clock, before its host is lost.
	Grace time.Duration
	// Interval is how often the observer lists the Leases (default Grace/8).
	Interval time.Duration
	// Identity names this candidate in the election (the host Lease's holder).
	Identity string
	// Scope is the one namespace this host watches ("" for all): hosts of one scope elect one
	// observer, which can see that scope's Servers.
	Scope string
	// ElectionLease is the election's lease duration (default 15 s; tests shorten it).
	ElectionLease time.Duration
	// WritesPerSecond bounds the observer's status writes and Events (default 20, burst 2x).
	WritesPerSecond float64
}

// Host Leases and the observer's election Lease, in the default --lease-namespace only (a Role,
// not a ClusterRole; another --lease-namespace needs the same Role there). No watch: the observer
// lists the Leases on its own clock.
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;create;update,namespace=stargate-system

// hostObserver is the elected watcher of host Leases.
type hostObserver struct {
	client    client.Client
	leases    client.Reader
	clientset kubernetes.Interface
	recorder  events.EventRecorder
	opts      Liveness
	judge     hostlease.Judge
	limiter   *rate.Limiter

	// mu guards what evacuations read: whether this process leads, since when, and the verdicts.
	mu           sync.Mutex
	leadingSince time.Time
	verdicts     map[string]hostlease.Verdict
}

// leading reports whether this process is the host observer now.
func (o *hostObserver) leading() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.leadingSince.IsZero()
}

// verdict is the observer's view of a host for an evacuation; ok is false when this process does
// not lead the observer election. A host without a Lease counts as lost once this process led
// for a grace period: a live host recreates its Lease at its next renewal.
func (o *hostObserver) verdict(hostID string, now time.Time) (v hostlease.Verdict, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.leadingSince.IsZero() {
		return hostlease.Verdict{}, false
	}
	if v, found := o.verdicts[hostID]; found {
		return v, true
	}
	v = hostlease.Verdict{HostID: hostID, Lease: o.opts.Namespace + "/" + hostlease.LeaseName(hostID)}
	if now.Sub(o.leadingSince) >= o.opts.Grace {
		v.State, v.Since = hostlease.Lost, o.leadingSince
	}
	return v, true
}

func setupHostObserver(mgr ctrl.Manager, l Liveness) (*hostObserver, error) {
	if l.Grace <= 0 {
		l.Grace = hostlease.DefaultGracePeriod
	}
	if l.Namespace == "" {
		l.Namespace = hostlease.DefaultNamespace
	}
	if l.Interval <= 0 {
		l.Interval = l.Grace / 8
	}
	if l.ElectionLease <= 0 {
		l.ElectionLease = 15 * time.Second
	}
	if l.WritesPerSecond <= 0 {
		l.WritesPerSecond = 20
	}
	cs, err := kubernetes.NewForConfig(mgr.GetConfig())
	if err != nil {
		return nil, fmt.Errorf("host observer: creating clientset: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &stargatev1.Server{}, serverHostIndex,
		func(o client.Object) []string { return []string{o.(*stargatev1.Server).Status.Host} }); err != nil {
		return nil, fmt.Errorf("indexing servers by host: %w", err)
	}
	o := &hostObserver{client: mgr.GetClient(), leases: mgr.GetAPIReader(), clientset: cs,
		recorder: mgr.GetEventRecorder("stargate-host-observer"), opts: l, judge: hostlease.Judge{Grace: l.Grace},
		limiter: rate.NewLimiter(rate.Limit(l.WritesPerSecond), int(2*l.WritesPerSecond))}
	if err := mgr.Add(o); err != nil {
		return nil, fmt.Errorf("adding the host observer: %w", err)
	}
	return o, nil
}

// NeedLeaderElection is false: the observer runs its own election, so that the manager's other
// runnables (every host's reconcilers, its provider's and its BMC's background work) keep running
// on every host.
func (o *hostObserver) NeedLeaderElection() bool { return false }

// Start campaigns for the observer's election Lease until ctx ends, observing while it leads.
func (o *hostObserver) Start(ctx context.Context) error {
	name := "stargate-host-observer"
	if o.opts.Scope != "" {
		name += "-" + hostlease.Token(o.opts.Scope)
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.opts.Namespace, name,
		o.clientset.CoreV1(), o.clientset.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: o.opts.Identity})
	if err != nil {
		return fmt.Errorf("host observer: election lock: %w", err)
	}
	log := logf.FromContext(ctx).WithName("host-observer")
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, Name: name, ReleaseOnCancel: true,
			LeaseDuration: o.opts.ElectionLease, RenewDeadline: o.opts.ElectionLease * 2 / 3, RetryPeriod: o.opts.ElectionLease / 7,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					log.Info("observing host leases", "namespace", o.opts.Namespace, "grace", o.opts.Grace)
					o.observe(ctx)
				},
				OnStoppedLeading: func() { log.Info("no longer the host observer") },
			},
		})
		if err != nil {
			return fmt.Errorf("host observer: election: %w", err)
		}
		le.Run(ctx)
	}
	return nil
}

// observe lists the host Leases every interval and shows each verdict, until ctx ends. A fresh
// judge each term: a new leader gives every host a full grace period.
func (o *hostObserver) observe(ctx context.Context) {
	o.judge = hostlease.Judge{Grace: o.opts.Grace}
	o.mu.Lock()
	o.leadingSince, o.verdicts = time.Now(), nil
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		o.leadingSince, o.verdicts = time.Time{}, nil
		o.mu.Unlock()
	}()
	t := time.NewTicker(o.opts.Interval)
	defer t.Stop()
	log := logf.FromContext(ctx).WithName("host-observer")
	type shownVerdict struct {
		state hostlease.HostState
		at    time.Time
	}
	shown := map[string]shownVerdict{}
	for {
		var list coordinationv1.LeaseList
		if err := o.leases.List(ctx, &list, client.InNamespace(o.opts.Namespace), client.HasLabels{hostlease.LabelHostLease}); err != nil {
			o.judge.Blind()
			log.Error(err, "listing host leases")
		} else {
			verdicts := o.judge.Observe(time.Now(), list.Items)
			o.mu.Lock()
			o.verdicts = map[string]hostlease.Verdict{}
			for _, v := range verdicts {
				o.verdicts[v.HostID] = v
			}
			o.mu.Unlock()
			now := time.Now()
			for _, v := range verdicts {
				// Servers are looked at when a verdict changes, and again once per grace period
				// (new Operations, a write that lost a race): not on every tick, which would cost
				// CPU in proportion to the fleet with nothing happening.
				if last, ok := shown[v.HostID]; ok && last.state == v.State && now.Sub(last.at) < o.opts.Grace {
					continue
				}
				if err := o.show(ctx, v); err != nil {
					if ctx.Err() == nil {
						log.Error(err, "showing host state", "host", v.HostID)
					}
					continue
				}
				shown[v.HostID] = shownVerdict{v.State, now}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// show writes a decided verdict on the host's Servers and their unfinished Operations, where they
// do not say it yet.
func (o *hostObserver) show(ctx context.Context, v hostlease.Verdict) error {
	if v.State == hostlease.Undecided {
		return nil
	}
	var servers stargatev1.ServerList
	if err := o.client.List(ctx, &servers, client.MatchingFields{serverHostIndex: v.HostID}); err != nil {
		return fmt.Errorf("listing servers of host %s: %w", v.HostID, err)
	}
	want := hostReachableCondition(v.State == hostlease.Alive, v.HostID, v.Lease, v.Since)
	for i := range servers.Items {
		s := &servers.Items[i]
		if needsCondition(s.Status.Conditions, want) {
			if err := o.markServer(ctx, s, want); err != nil {
				return err
			}
		}
		ops, err := OperationsOf(ctx, o.client, client.ObjectKeyFromObject(s))
		if err != nil {
			return err
		}
		for j := range ops {
			// A finished Operation is not told its host is lost, but one that was is told it is back
			// (its host may well have finished it before the observer saw it renew).
			op := &ops[j]
			if (!op.Status.Phase.IsFinal() || want.Status == metav1.ConditionTrue) && needsCondition(op.Status.Conditions, want) {
				if err := o.markOperation(ctx, op, want); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// needsCondition: a lost host is shown once (its "since" stays what was first written); a host
// back is shown only where it was shown lost.
func needsCondition(conds []metav1.Condition, want metav1.Condition) bool {
	c := meta.FindStatusCondition(conds, stargatev1.ConditionHostReachable)
	if want.Status == metav1.ConditionTrue {
		return c != nil && c.Status != metav1.ConditionTrue
	}
	return c == nil || c.Status != want.Status || c.Reason != want.Reason
}

func (o *hostObserver) markServer(ctx context.Context, s *stargatev1.Server, c metav1.Condition) error {
	if err := o.limiter.Wait(ctx); err != nil {
		return err
	}
	orig := s.DeepCopy()
	meta.SetStatusCondition(&s.Status.Conditions, c)
	if c.Status != metav1.ConditionTrue {
		s.Status.PowerState = stargatev1.PowerUnknown
	}
	if err := o.client.Status().Patch(ctx, s, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // the next round reads it again
		}
		return fmt.Errorf("marking server %s/%s: %w", s.Namespace, s.Name, err)
	}
	kind := corev1.EventTypeWarning
	if c.Status == metav1.ConditionTrue {
		kind = corev1.EventTypeNormal
	}
	o.recorder.Eventf(s, nil, kind, c.Reason, "Observe", "%s", c.Message)
	return nil
}

func (o *hostObserver) markOperation(ctx context.Context, op *stargatev1.Operation, c metav1.Condition) error {
	if err := o.limiter.Wait(ctx); err != nil {
		return err
	}
	orig := op.DeepCopy()
	meta.SetStatusCondition(&op.Status.Conditions, c)
	if op.Status.Phase == "" && c.Status != metav1.ConditionTrue {
		// Never accepted: nothing else says why it waits (its owner accepts it when it returns).
		op.Status.Message = c.Message
	}
	if err := o.client.Status().Patch(ctx, op, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("marking operation %s/%s: %w", op.Namespace, op.Name, err)
	}
	return nil
}
