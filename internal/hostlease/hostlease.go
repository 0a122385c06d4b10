// Package hostlease keeps a host's liveness visible in the cluster the way kubelets do: each host
// holds a coordination.k8s.io Lease named for its --host-id and renews it every few seconds. A
// second process with the same host id refuses to start while another incarnation renews it.
package hostlease

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Defaults of the lease flags.
const (
	// DefaultNamespace holds the host Leases (and the observer's leader-election Lease), like
	// kube-node-lease holds the kubelets'.
	DefaultNamespace = "stargate-system"
	// DefaultRenewInterval is how often a host renews its Lease.
	DefaultRenewInterval = 10 * time.Second
	// DefaultGracePeriod is how long a Lease may go unrenewed before its host counts as gone.
	DefaultGracePeriod = 40 * time.Second
)

// Labels and annotations on host Leases: the Lease name is a token of the host id (ids may be
// longer or carry characters a name cannot), so the id itself travels in an annotation.
const (
	// LabelHostLease marks the Leases of hosts, so the observer lists only those.
	LabelHostLease = "stargate.io/host-lease"
	// AnnotationHostID is the exact --host-id of the Lease's host.
	AnnotationHostID = "stargate.io/host-id"
)

var (
	notFinalizerChar = regexp.MustCompile(`[^a-z0-9._-]+`)
	notLabelChar     = regexp.MustCompile(`[^a-z0-9-]+`)
)

// Token turns a host identity into the name part of a finalizer: lower case, [a-z0-9._-], at most
// 40 bytes (long or unusual identities end in a short hash, so they stay distinct).
func Token(hostID string) string { return token(hostID, notFinalizerChar) }

// token replaces runs of the characters bad matches with '-', adding a hash when that changed
// the id or it had to be shortened.
func token(hostID string, bad *regexp.Regexp) string {
	t := strings.Trim(bad.ReplaceAllString(strings.ToLower(hostID), "-"), "-._")
	if t == hostID && len(t) <= 40 && t != "" {
		return t
	}
	sum := sha256.Sum256([]byte(hostID))
	h := hex.EncodeToString(sum[:4])
	if len(t) > 31 {
		t = strings.Trim(t[:31], "-._")
	}
	if t == "" {
		return h
	}
	return t + "-" + h
}

// LeaseName is the name of a host's Lease: "host-" and the host id as a DNS label (a valid
// object name; unusual ids end in a short hash).
func LeaseName(hostID string) string { return "host-" + token(hostID, notLabelChar) }

// Incarnation tells one run of a host from another: the machine's boot id, the pid namespace and
// the pid. Two simulators in two network namespaces of one machine share the boot id, so the pid
// (qualified by its namespace) is what tells them apart.
type Incarnation struct {
	BootID string
	PIDNS  string
	PID    int
}

// Self is this process's incarnation.
func Self() Incarnation {
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return Incarnation{BootID: strings.TrimSpace(string(boot)), PIDNS: pidNS(ns), PID: os.Getpid()}
}

// pidNS reduces "pid:[4026531836]" to its inode number.
func pidNS(link string) string {
	return strings.TrimSuffix(strings.TrimPrefix(link, "pid:["), "]")
}

// Holder is the Lease's holder identity: <host-id>/<boot id>/<pid ns>/<pid>.
func Holder(hostID string, inc Incarnation) string {
	return fmt.Sprintf("%s/%s/%s/%d", hostID, inc.BootID, inc.PIDNS, inc.PID)
}

// parseHolder reads an incarnation back from the end of a holder identity (host ids may hold '/').
func parseHolder(holder string) (Incarnation, bool) {
	parts := strings.Split(holder, "/")
	if len(parts) < 4 {
		return Incarnation{}, false
	}
	n := len(parts)
	pid, err := strconv.Atoi(parts[n-1])
	if err != nil || pid <= 0 || parts[n-3] == "" {
		return Incarnation{}, false
	}
	return Incarnation{BootID: parts[n-3], PIDNS: parts[n-2], PID: pid}, true
}

// Config configures a host's Lease.
type Config struct {
	Client    client.Client
	Namespace string
	HostID    string
	// RenewInterval and GracePeriod: see the defaults. Grace is also how long Acquire waits for a
	// Lease held by another incarnation to stop changing before it takes it over.
	RenewInterval time.Duration
	GracePeriod   time.Duration
	// Self is this incarnation (default Self()); Alive reports whether a pid of this machine's pid
	// namespace runs (default: /proc/<pid> exists). Tests replace both.
	Self  Incarnation
	Alive func(pid int) bool
	Log   logr.Logger
}

func (c *Config) defaults() {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.RenewInterval <= 0 {
		c.RenewInterval = DefaultRenewInterval
	}
	if c.GracePeriod <= 0 {
		c.GracePeriod = DefaultGracePeriod
	}
	if c.Self.BootID == "" {
		c.Self = Self()
	}
	if c.Alive == nil {
		c.Alive = func(pid int) bool { _, err := os.Stat("/proc/" + strconv.Itoa(pid)); return err == nil }
	}
}

// ErrHeldByAnother says another live incarnation renews the host's Lease.
var ErrHeldByAnother = errors.New("host lease held by another incarnation")

// Lease is a host's held Lease.
type Lease struct {
	cfg    Config
	holder string
	key    client.ObjectKey
}

// Acquire takes the host's Lease, creating it if missing. A Lease held by another incarnation is
// taken over at once when that incarnation is provably gone (same boot and pid namespace, pid not
// running) or released; otherwise Acquire watches it for a grace period by this process's clock
// and refuses (ErrHeldByAnother) as soon as it sees it renewed.
func Acquire(ctx context.Context, cfg Config) (*Lease, error) {
	cfg.defaults()
	l := &Lease{cfg: cfg, holder: Holder(cfg.HostID, cfg.Self),
		key: client.ObjectKey{Namespace: cfg.Namespace, Name: LeaseName(cfg.HostID)}}
	var seenRV string
	var seenAt time.Time
	for {
		cur := &coordinationv1.Lease{}
		err := cfg.Client.Get(ctx, l.key, cur)
		switch {
		case apierrors.IsNotFound(err):
			if err := cfg.Client.Create(ctx, l.fresh()); err == nil {
				return l, nil
			} else if apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("creating host lease %s: %w: create namespace %s (kubectl apply -f config/rbac/namespace.yaml) "+
					"or pass --lease-namespace", l.key, err, l.key.Namespace)
			} else if !apierrors.IsAlreadyExists(err) {
				return nil, fmt.Errorf("creating host lease %s: %w", l.key, err)
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("reading host lease %s: %w", l.key, err)
		}
		other := ptr.Deref(cur.Spec.HolderIdentity, "")
		why := ""
		switch inc, ok := parseHolder(other); {
		case other == "" || other == l.holder:
			why = "released"
		case ok && inc.BootID == cfg.Self.BootID && inc.PIDNS == cfg.Self.PIDNS && !cfg.Alive(inc.PID):
			why = fmt.Sprintf("its holder %s was this machine's pid %d, which no longer runs", other, inc.PID)
		case seenRV == "" || seenRV != cur.ResourceVersion:
			if seenRV != "" {
				return nil, fmt.Errorf("%w: host id %q: Lease %s is renewed by %s, which is still running: "+
					"stop that process first, or give this one another --host-id", ErrHeldByAnother, cfg.HostID, l.key, other)
			}
			seenRV, seenAt = cur.ResourceVersion, time.Now()
			cfg.Log.Info("host lease held by another incarnation: watching whether it is renewed",
				"lease", l.key, "holder", other, "wait", cfg.GracePeriod)
		case time.Since(seenAt) >= cfg.GracePeriod:
			why = fmt.Sprintf("its holder %s has not renewed it for %s", other, cfg.GracePeriod)
		}
		if why != "" {
			taken, err := l.takeOver(ctx, cur)
			if err != nil {
				return nil, err
			}
			if taken {
				cfg.Log.Info("took over host lease", "lease", l.key, "because", why)
				return l, nil
			}
			seenRV = "" // someone else changed it: judge again
			continue
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for host lease %s held by %s: %w", l.key, other, ctx.Err())
		case <-time.After(min(time.Second, cfg.RenewInterval/4)):
		}
	}
}

func (l *Lease) fresh() *coordinationv1.Lease {
	now := metav1.NewMicroTime(time.Now())
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: l.key.Namespace, Name: l.key.Name,
			Labels:      map[string]string{LabelHostLease: "true"},
			Annotations: map[string]string{AnnotationHostID: l.cfg.HostID}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(l.holder), AcquireTime: &now, RenewTime: &now,
			LeaseDurationSeconds: ptr.To(int32(l.cfg.GracePeriod / time.Second))},
	}
}

// takeOver writes this incarnation into the Lease read as cur; false when it changed meanwhile.
func (l *Lease) takeOver(ctx context.Context, cur *coordinationv1.Lease) (bool, error) {
	next := l.fresh()
	next.ResourceVersion = cur.ResourceVersion
	next.Spec.LeaseTransitions = ptr.To(ptr.Deref(cur.Spec.LeaseTransitions, 0) + 1)
	for k, v := range cur.Labels {
		if _, ok := next.Labels[k]; !ok {
			next.Labels[k] = v
		}
	}
	if err := l.cfg.Client.Update(ctx, next); err != nil {
		if apierrors.IsConflict(err) {
			return false, nil
		}
		return false, fmt.Errorf("taking over host lease %s: %w", l.key, err)
	}
	return true, nil
}

// Holder is this incarnation's holder identity.
func (l *Lease) Holder() string { return l.holder }

// Key is the Lease's namespace and name.
func (l *Lease) Key() client.ObjectKey { return l.key }

// ErrLost says another incarnation took the Lease: this process must stop at once, since two
// processes would otherwise drive the same machines.
var ErrLost = errors.New("host lease taken by another incarnation")

// Start renews the Lease every RenewInterval until ctx ends, then releases it so a restart takes
// over at once. Failed renewals are retried (the API server may be down); it returns ErrLost when
// another incarnation holds the Lease. It is a manager Runnable that runs on every host.
func (l *Lease) Start(ctx context.Context) error {
	t := time.NewTicker(l.cfg.RenewInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := l.Release(rctx); err != nil {
				l.cfg.Log.Error(err, "releasing host lease")
			}
			return nil
		case <-t.C:
		}
		if err := l.Renew(ctx); errors.Is(err, ErrLost) {
			return err
		} else if err != nil && ctx.Err() == nil {
			l.cfg.Log.Error(err, "renewing host lease (will retry)", "lease", l.key)
		}
	}
}

// NeedLeaderElection is false: every host renews its own Lease.
func (l *Lease) NeedLeaderElection() bool { return false }

// Renew writes a fresh renewTime, after checking this incarnation still holds the Lease.
func (l *Lease) Renew(ctx context.Context) error {
	cur := &coordinationv1.Lease{}
	if err := l.cfg.Client.Get(ctx, l.key, cur); err != nil {
		if apierrors.IsNotFound(err) { // deleted by hand: hold it again
			if err := l.cfg.Client.Create(ctx, l.fresh()); err != nil {
				return fmt.Errorf("recreating host lease %s: %w", l.key, err)
			}
			return nil
		}
		return fmt.Errorf("reading host lease %s: %w", l.key, err)
	}
	if h := ptr.Deref(cur.Spec.HolderIdentity, ""); h != l.holder {
		return fmt.Errorf("%w: Lease %s is now held by %q (this is %s)", ErrLost, l.key, h, l.holder)
	}
	now := metav1.NewMicroTime(time.Now())
	cur.Spec.RenewTime = &now
	if err := l.cfg.Client.Update(ctx, cur); err != nil {
		return fmt.Errorf("renewing host lease %s: %w", l.key, err)
	}
	return nil
}

// Release clears the holder when this incarnation still holds the Lease.
func (l *Lease) Release(ctx context.Context) error {
	cur := &coordinationv1.Lease{}
	if err := l.cfg.Client.Get(ctx, l.key, cur); err != nil {
		return client.IgnoreNotFound(err)
	}
	if ptr.Deref(cur.Spec.HolderIdentity, "") != l.holder {
		return nil
	}
	cur.Spec.HolderIdentity = ptr.To("")
	if err := l.cfg.Client.Update(ctx, cur); err != nil {
		return fmt.Errorf("releasing host lease %s: %w", l.key, err)
	}
	return nil
}
