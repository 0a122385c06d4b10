// Package bmc gives every Server a Redfish BMC: it is the pkg/redfish Backend over Kubernetes and
// a datacenter Provider. A Server this host owns, with spec.bmc, is a ComputerSystem whose id is
// <namespace>.<name>; its credentials come from the Secret spec.bmc names (type
// kubernetes.io/basic-auth, nothing else is read); a change is made through the Provider under the
// same per-Server lock that starts Operations, refused while an Operation runs on the Server, told
// in an Event that names the BMC user, and shown in the Server's status at once.
package bmc

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/redfish"
)

// Backend is the Redfish backend of one datacenter host.
type Backend struct {
	// Client reads Servers (cached).
	Client client.Client
	// APIReader reads Secrets (only "get" is needed) and, before a change, the Server's Operations.
	APIReader client.Reader
	Provider  controller.Provider
	Recorder  events.EventRecorder
	// Locks are the reconcilers' per-Server locks (controller.Options.Locks).
	Locks *controller.ServerLocks
	// HostID is this host's identity: only the Servers it owns are served.
	HostID string
	// Wake is the Server reconciler's wake channel (controller.Options.Wake).
	Wake chan<- event.GenericEvent
	// RestartGrace bounds a GracefulRestart's wait for the guest to shut down; default 1m.
	RestartGrace time.Duration
	// MaxMemoryBytes and MaxCPUs are the limits one machine must fit (controller.Options'; 0 means
	// no bound): a blank machine is refused what a repave of its Server would be (ensureMachine).
	MaxMemoryBytes int64
	MaxCPUs        int
	// Faults makes FaultInjections' BMC faults real; nil injects none.
	Faults *Faults
}

var _ redfish.Backend = (*Backend)(nil)

// server returns the Server behind a system id, if this host serves it.
func (b *Backend) server(ctx context.Context, id string) (*stargatev1.Server, error) {
	ns, name, ok := strings.Cut(id, ".")
	if !ok {
		return nil, redfish.ErrNotFound
	}
	s := &stargatev1.Server{}
	if err := b.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil, redfish.ErrNotFound
		}
		return nil, err
	}
	if !servesBMC(s, b.HostID) {
		return nil, redfish.ErrNotFound
	}
	return s, nil
}

// Authorize checks user and password against the Server's BMC Secret, in constant time.
func (b *Backend) Authorize(ctx context.Context, id, user, password string) bool {
	s, err := b.server(ctx, id)
	if err != nil {
		return false
	}
	secret := &corev1.Secret{}
	if err := b.APIReader.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.BMC.CredentialsSecretRef.Name}, secret); err != nil {
		return false
	}
	if secret.Type != stargatev1.BMCCredentialsSecretType || len(secret.Data[corev1.BasicAuthPasswordKey]) == 0 {
		return false
	}
	userOK := subtle.ConstantTimeCompare([]byte(user), secret.Data[corev1.BasicAuthUsernameKey])
	passOK := subtle.ConstantTimeCompare([]byte(password), secret.Data[corev1.BasicAuthPasswordKey])
	return userOK&passOK == 1
}

// Systems lists the Servers this host serves a BMC for.
func (b *Backend) Systems(ctx context.Context) ([]string, error) {
	var list stargatev1.ServerList
	if err := b.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing servers: %w", err)
	}
	var ids []string
	for i := range list.Items {
		s := &list.Items[i]
		if servesBMC(s, b.HostID) {
			ids = append(ids, controller.BMCSystemID(client.ObjectKeyFromObject(s)))
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// System reports the Server's machine as the datacenter sees it now.
func (b *Backend) System(ctx context.Context, id string) (redfish.System, error) {
	s, err := b.server(ctx, id)
	if err != nil {
		return redfish.System{}, err
	}
	info, err := b.Provider.Inspect(ctx, client.ObjectKeyFromObject(s))
	if err != nil {
		return redfish.System{}, fmt.Errorf("inspecting server %s: %w", s.Name, err)
	}
	sys := redfish.System{ID: id, Name: s.Namespace + "/" + s.Name, UUID: string(s.UID), PowerState: redfish.PowerOff,
		MemoryMiB: s.Spec.MemoryBytes() >> 20, CPUs: s.Spec.CPUCount(),
		Boot:  redfish.Boot{Target: redfish.BootTargetNone, Enabled: redfish.BootDisabled, Mode: redfish.BootModeLegacy},
		Media: redfish.Media{Image: info.Media.Image, Inserted: info.Media.Inserted, WriteProtected: true}}
	if info.Running {
		sys.PowerState = redfish.PowerOn
	}
	if info.Boot.Target != "" {
		sys.Boot = redfish.Boot{Target: info.Boot.Target, Enabled: info.Boot.Enabled, Mode: info.Boot.Mode}
	}
	if mac := first(info.MACAddress, s.Status.MACAddress); mac != "" {
		sys.MACAddresses = []string{mac}
	}
	b.faultedSystem(ctx, s, &sys)
	return sys, nil
}

func first(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// Reset changes the Server's power as a BMC would (later, when a BMCPowerDelay strikes).
func (b *Backend) Reset(ctx context.Context, id string, t redfish.ResetType, user string) error {
	if b.Faults != nil {
		s, err := b.server(ctx, id)
		if err != nil {
			return err
		}
		if d := b.powerDelay(ctx, s); d > 0 {
			b.delayedReset(s, id, t, user, d)
			return nil
		}
	}
	return b.reset(ctx, id, t, user)
}

// reset changes the Server's power now.
func (b *Backend) reset(ctx context.Context, id string, t redfish.ResetType, user string) error {
	return b.change(ctx, id, user, "PowerChangedByBMC", "reset "+string(t), func(s *stargatev1.Server, key types.NamespacedName) error {
		var prior redfish.PowerState
		if b.Faults != nil {
			prior = b.powerNow(ctx, s)
		}
		if err := b.resetMachine(ctx, s, key, t, user); err != nil {
			return err
		}
		if t != redfish.ResetForceOff && t != redfish.ResetGracefulShutdown {
			b.bootsNow(ctx, s)
		}
		b.stalePower(ctx, s, prior)
		return nil
	})
}

// resetMachine asks the Provider for the power change t.
func (b *Backend) resetMachine(ctx context.Context, s *stargatev1.Server, key types.NamespacedName, t redfish.ResetType, user string) error {
	switch t {
	case redfish.ResetOn, redfish.ResetForceRestart, redfish.ResetGracefulRestart:
		if err := b.ensureMachine(ctx, s, user); err != nil {
			return err
		}
	}
	switch t {
	case redfish.ResetOn:
		return b.Provider.PowerOn(ctx, key)
	case redfish.ResetForceOff:
		return b.Provider.PowerOff(ctx, key)
	case redfish.ResetGracefulShutdown:
		return b.Provider.Shutdown(ctx, key)
	case redfish.ResetForceRestart:
		if err := b.Provider.PowerOff(ctx, key); err != nil {
			return err
		}
		return b.Provider.PowerOn(ctx, key)
	case redfish.ResetGracefulRestart:
		if err := b.Provider.Shutdown(ctx, key); err != nil {
			return err
		}
		go b.finishRestart(key)
		return nil
	}
	return &redfish.BadRequestError{Message: "unsupported reset type " + string(t)}
}

// finishRestart powers a gracefully restarting server on again once it is off, forcing it off
// when the guest ignores the power button for longer than RestartGrace.
func (b *Backend) finishRestart(key types.NamespacedName) {
	grace := b.RestartGrace
	if grace == 0 {
		grace = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace+time.Minute)
	defer cancel()
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(time.Second) {
		if info, err := b.Provider.Inspect(ctx, key); err == nil && !info.Running {
			break
		}
	}
	unlock := b.Locks.Lock(key)
	defer unlock()
	_ = b.Provider.PowerOff(ctx, key) // no-op when the guest shut down
	_ = b.Provider.PowerOn(ctx, key)
	b.wake(key)
}

// SetBoot changes the boot override.
func (b *Backend) SetBoot(ctx context.Context, id string, boot redfish.Boot, user string) error {
	what := fmt.Sprintf("boot override %s/%s/%s", boot.Target, boot.Enabled, boot.Mode)
	return b.change(ctx, id, user, "BootChangedByBMC", what, func(s *stargatev1.Server, key types.NamespacedName) error {
		if b.ignoresBoot(ctx, s, boot) {
			return nil
		}
		if err := b.ensureMachine(ctx, s, user); err != nil {
			return err
		}
		return b.Provider.SetBoot(ctx, key, controller.BootOverride{Target: boot.Target, Enabled: boot.Enabled, Mode: boot.Mode})
	})
}

// InsertMedia attaches the image as the Server's virtual CD.
func (b *Backend) InsertMedia(ctx context.Context, id, imageURL, user string) error {
	return b.change(ctx, id, user, "MediaChangedByBMC", "insert virtual media "+imageURL, func(s *stargatev1.Server, key types.NamespacedName) error {
		if err := b.insertMediaFault(ctx, s, imageURL); err != nil {
			return err
		}
		if err := b.ensureMachine(ctx, s, user); err != nil {
			return err
		}
		return b.Provider.InsertMedia(ctx, key, imageURL)
	})
}

// EjectMedia detaches the virtual CD.
func (b *Backend) EjectMedia(ctx context.Context, id, user string) error {
	return b.change(ctx, id, user, "MediaChangedByBMC", "eject virtual media", func(_ *stargatev1.Server, key types.NamespacedName) error {
		return b.Provider.EjectMedia(ctx, key)
	})
}

// change makes one change to a Server under its lock, unless an Operation runs on it, then records
// an Event naming the BMC user and wakes the Server's reconciler.
func (b *Backend) change(ctx context.Context, id, user, reason, what string, do func(*stargatev1.Server, types.NamespacedName) error) error {
	s, err := b.server(ctx, id)
	if err != nil {
		return err
	}
	key := client.ObjectKeyFromObject(s)
	unlock := b.Locks.Lock(key)
	defer unlock()
	ops, err := controller.OperationsOf(ctx, b.APIReader, key)
	if err != nil {
		return err
	}
	if op := controller.RunningOperation(ops); op != nil {
		return fmt.Errorf("operation %s runs on this server: %w", op.Name, redfish.ErrConflict)
	}
	if err := do(s, key); err != nil {
		return providerError(err)
	}
	b.Recorder.Eventf(s, nil, corev1.EventTypeNormal, reason, "Redfish", "BMC user %q: %s", user, what)
	b.wake(key)
	return nil
}

// ensureMachine makes the blank machine of a Server that was never repaved, when the datacenter
// has blank machines (controller.BlankMachines): a new server can be given virtual media and
// powered on before anything is installed on it. Its hardware comes from the Server's spec, and
// must fit the limits a repave of the Server would have to fit: through its BMC a user starts no
// larger machine than the controller would. An installed or running machine is left as it is.
func (b *Backend) ensureMachine(ctx context.Context, s *stargatev1.Server, user string) error {
	blank, ok := b.Provider.(controller.BlankMachines)
	if !ok {
		return nil
	}
	key := client.ObjectKeyFromObject(s)
	info, err := b.Provider.Inspect(ctx, key)
	if err != nil {
		return fmt.Errorf("inspecting server %s: %w", s.Name, err)
	}
	if info.InstanceID != "" || info.Running {
		return nil
	}
	if err := controller.FitsHost(&s.Spec, s.Name, b.MaxMemoryBytes, b.MaxCPUs); err != nil {
		return &redfish.BadRequestError{Message: "this server cannot be powered on as a blank machine here: " + err.Error()}
	}
	m := controller.BlankMachine{Server: key, CPUs: s.Spec.CPUCount(), MemoryMiB: s.Spec.MemoryBytes() >> 20,
		DiskBytes: s.Spec.DiskBytes(), MAC: s.Spec.MACAddress}
	changed, err := blank.EnsureBlankMachine(ctx, m)
	if err == nil && changed {
		b.Recorder.Eventf(s, nil, corev1.EventTypeNormal, "BlankMachineByBMC", "Redfish",
			"BMC user %q: blank machine of %d CPUs, %d MiB of memory and an empty %s disk (nothing installed)",
			user, m.CPUs, m.MemoryMiB, resource.NewQuantity(m.DiskBytes, resource.BinarySI))
	}
	return err
}

// providerError maps what a Provider refuses to a 400 the client can act on.
func providerError(err error) error {
	var bad *redfish.BadRequestError
	switch {
	case errors.As(err, &bad):
		return err
	case errors.Is(err, controller.ErrNotInstalled), errors.Is(err, controller.ErrUnsupported):
		return &redfish.BadRequestError{Message: err.Error()}
	}
	return err
}

func (b *Backend) wake(key types.NamespacedName) {
	if b.Wake == nil {
		return
	}
	s := &stargatev1.Server{}
	s.Namespace, s.Name = key.Namespace, key.Name
	select {
	case b.Wake <- event.GenericEvent{Object: s}:
	default: // the reconciler is busy; its next health check shows the change
	}
}

// servesBMC reports whether this host serves a BMC for the Server: one it owns that asks for one
// (spec.bmc) without naming an existing BMC to drive (spec.bmc.address: its credentials are that
// BMC's, and must not open one here).
func servesBMC(s *stargatev1.Server, hostID string) bool {
	return s.Spec.BMC != nil && !s.Spec.DrivesBMC() && s.Status.Host == hostID && s.DeletionTimestamp.IsZero()
}
