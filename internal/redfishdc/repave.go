package redfishdc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/installeriso"
	"stargate.io/stargate/pkg/installspec"
	"stargate.io/stargate/pkg/redfishclient"
)

// operation is one repave: its secrets, its steps, and the goroutine that drives the BMC. The
// HTTP handler feeds it the installer's and the guest's reports.
type operation struct {
	p          *Provider
	instanceID string
	// id names the Operation's URLs; agentToken and guestToken authenticate the installer's
	// reports and the installed OS's callback. All three are random and die with the Operation.
	id                     string
	agentToken, guestToken string
	ctx                    context.Context
	cancel                 context.CancelFunc
	agentDone              chan struct{}

	mu        sync.Mutex
	steps     []controller.Step
	failed    bool
	reason    string
	message   string
	done      bool
	ended     bool // the URLs answer 410
	agentOver bool // the installer reported Done or Failed: its URLs answer 410
	touched   bool // this repave changed the server's media or power
	// settled is set once the controller stopped this repave (or a power Operation followed it):
	// from then on PowerOff is a power Operation's and acts.
	settled bool
	medium  *installeriso.Medium
	raw     rawImage
	ip, mac string
	// network is what the installer and the installed OS get: spec.network, or with the pool's
	// address (effectiveNetwork).
	network  stargatev1.StaticNetwork
	timeline []controller.TimelineStep
	// writeRate is the installer's last average write rate (bytes/s), for the ImageWritten message.
	writeRate int64
	// installerBooted is when the installer first reported: the timeline's image-write starts there.
	installerBooted time.Time
}

// start prepares a repave and starts driving it in the background. A repave refused by its
// Server's objects is recorded failed, untouched, so that stopping it touches nothing either.
func (p *Provider) start(ctx context.Context, req controller.RepaveRequest) (*operation, error) {
	op := &operation{p: p, instanceID: req.InstanceID, id: randomID(), agentToken: randomToken(), guestToken: randomToken(),
		agentDone: make(chan struct{})}
	for _, t := range stargatev1.RedfishRepaveSteps {
		op.steps = append(op.steps, controller.Step{Type: t, State: controller.StepPending})
	}
	s, err := p.checkServer(ctx, req)
	var ce *configError
	switch {
	case errors.As(err, &ce):
		// The step the mistake stops: the network is the installer's, the rest the BMC's.
		step := stargatev1.ConditionMediaInserted
		if ce.reason == "NoNetwork" {
			step = stargatev1.ConditionInstallerReady
		}
		op.failLocked(step, ce.reason, ce.msg)
	case err != nil:
		return nil, err
	default:
		op.network, err = p.effectiveNetwork(ctx, s)
		if errors.As(err, &ce) {
			op.failLocked(stargatev1.ConditionInstallerReady, ce.reason, ce.msg)
			break
		} else if err != nil {
			return nil, err
		}
		op.mac = op.network.MACAddress
		op.ip, _, _ = strings.Cut(op.network.Address, "/")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if running := p.ops[req.InstanceID]; running != nil {
		return running, nil
	}
	if old := p.current[req.Server]; old != nil {
		old.end() // a new repave replaces the server's previous one
		p.forget(old)
	}
	p.ops[op.instanceID], p.current[req.Server], p.routes[op.id] = op, op, op
	if !op.failed {
		op.ctx, op.cancel = context.WithCancel(p.ctx)
		go op.run(req, s)
	}
	return op, nil
}

// checkServer reads the Server of a repave and checks what can be checked before touching it.
func (p *Provider) checkServer(ctx context.Context, req controller.RepaveRequest) (*stargatev1.Server, error) {
	s, err := p.server(ctx, req.Server)
	if err != nil {
		return nil, err
	}
	if err := p.checkAddressLiteral(s); err != nil {
		return nil, err
	}
	if s.Spec.Network == nil {
		return nil, refuse("NoNetwork", "Server %s has no spec.network: a real server needs the static address the installer and the installed OS use", s.Name)
	}
	return s, nil
}

// checkAddressLiteral refuses a BMC address that is an IP outside the allowed networks before any
// connection; names are checked on every connection (see checkBMCAddress).
func (p *Provider) checkAddressLiteral(s *stargatev1.Server) error {
	u, err := url.Parse(s.Spec.BMC.Address)
	if err != nil {
		return refuse("InvalidBMCAddress", "spec.bmc.address is not a URL")
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil && !p.bmcAllowed(a) {
		return refuse("BMCNotAllowed", "spec.bmc.address %s: %s %v", s.Spec.BMC.Address, a, ErrBMCNotAllowed)
	}
	return nil
}

// run drives the repave: image, ISO, BMC, then waits for the installer and the guest.
func (o *operation) run(req controller.RepaveRequest, s *stargatev1.Server) {
	ctx := o.ctx
	img, ok := o.image(ctx, req)
	if !ok {
		return
	}
	if !o.buildInstaller(req, s, img) {
		return
	}
	var sys *redfishclient.System
	connected := func(ctx context.Context) (*redfishclient.System, error) {
		if sys != nil {
			return sys, nil
		}
		var err error
		sys, err = o.p.connect(ctx, s)
		return sys, err
	}
	isoURL := o.url("installer.iso")
	if !o.bmcStep(ctx, stargatev1.ConditionMediaInserted, "Inserting the installer ISO", func(ctx context.Context) error {
		sys, err := connected(ctx)
		if err != nil {
			return err
		}
		o.mu.Lock()
		o.touched = true // from here on, the server may run what this repave started
		o.mu.Unlock()
		// Eject first: many BMCs refuse an insert into a drive that holds media.
		if err := sys.EjectMedia(ctx); err != nil {
			return fmt.Errorf("ejecting: %w", err)
		}
		if err := sys.InsertMedia(ctx, isoURL); err != nil {
			return fmt.Errorf("inserting the installer ISO: %w", err)
		}
		if err := sys.SetBootOverride(ctx, redfishclient.BootOverride{Target: redfishclient.BootCd, Enabled: redfishclient.BootOnce}); err != nil {
			return fmt.Errorf("setting the boot override to the CD: %w", err)
		}
		return nil
	}) {
		return
	}
	o.set(stargatev1.ConditionMediaInserted, controller.StepDone, "Inserted", "The installer ISO is in the virtual CD drive; the server boots from it once")
	if !o.bmcStep(ctx, stargatev1.ConditionInstallerBooted, "Powering the server on from the virtual CD", func(ctx context.Context) error {
		sys, err := connected(ctx)
		if err != nil {
			return err
		}
		return powerCycle(ctx, sys)
	}) {
		return
	}
	o.setIfNotDone(stargatev1.ConditionInstallerBooted, controller.StepInProgress, "Booting",
		"The server boots the installer from the virtual CD; waiting for its first report")
	select {
	case <-ctx.Done():
		return
	case <-o.agentDone:
	}
	if !o.bootFromDisk(ctx, connected) {
		return
	}
	o.set(stargatev1.ConditionGuestReady, controller.StepInProgress, "Booting",
		"The server boots its installed OS; waiting for cloud-init to call back")
}

// image is the ImageReady step: the OS image fetched under the image policy, converted to raw.
func (o *operation) image(ctx context.Context, req controller.RepaveRequest) (rawImage, bool) {
	started := time.Now()
	o.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Downloading", "Fetching "+req.ImageURL)
	src, err := o.p.cfg.Images.Fetch(ctx, req.ImageURL, req.ImageChecksum, func(done, total int64) {
		o.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Downloading", downloadMessage(req.ImageURL, done, total, time.Since(started)))
	})
	if err != nil {
		if ctx.Err() == nil {
			o.fail(stargatev1.ConditionImageReady, "ImageFetchFailed", fmt.Sprintf("Fetching the OS image failed: %v", err))
		}
		return rawImage{}, false
	}
	o.set(stargatev1.ConditionImageReady, controller.StepInProgress, "Converting", "Converting "+req.ImageURL+" to a raw disk image")
	img, err := o.p.raw.get(ctx, src)
	if err != nil {
		if ctx.Err() == nil {
			o.fail(stargatev1.ConditionImageReady, "ImageConversionFailed", fmt.Sprintf("Converting the OS image to raw failed: %v", err))
		}
		return rawImage{}, false
	}
	o.mu.Lock()
	o.raw = img
	o.mu.Unlock()
	o.set(stargatev1.ConditionImageReady, controller.StepDone, "Cached",
		fmt.Sprintf("Image %s cached as raw (%s)", req.ImageURL, formatBytes(img.Size)))
	return img, true
}

// buildInstaller is the InstallerReady step: the per-Operation Spec and the ISO that carries it.
func (o *operation) buildInstaller(req controller.RepaveRequest, s *stargatev1.Server, img rawImage) bool {
	spec, err := o.installSpec(req, s, img)
	if err == nil {
		var m *installeriso.Medium
		if m, err = o.p.base.NewMedium(spec); err == nil {
			o.mu.Lock()
			o.medium = m
			o.mu.Unlock()
		}
	}
	if err != nil {
		o.fail(stargatev1.ConditionInstallerReady, "InvalidInstallSpec", fmt.Sprintf("Building the installer's configuration failed: %v", err))
		return false
	}
	o.set(stargatev1.ConditionInstallerReady, controller.StepDone, "Served", "The installer ISO for this Operation is served")
	return true
}

func (o *operation) installSpec(req controller.RepaveRequest, s *stargatev1.Server, img rawImage) (*installspec.Spec, error) {
	n := o.network
	prefix, err := netip.ParsePrefix(n.Address)
	if err != nil {
		return nil, fmt.Errorf("spec.network.address: %w", err)
	}
	gn := &cloudinit.GuestNetwork{MAC: n.MACAddress, Address: prefix}
	if n.Gateway != "" {
		if gn.Gateway, err = netip.ParseAddr(n.Gateway); err != nil {
			return nil, fmt.Errorf("spec.network.gateway: %w", err)
		}
	}
	for _, d := range n.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return nil, fmt.Errorf("spec.network.dns: %w", err)
		}
		gn.DNS = append(gn.DNS, a)
	}
	userData := req.UserData
	if len(req.Installation) > 0 {
		// No golden images on real servers: the installation runs in every install.
		if userData, err = cloudinit.CombineUserData(req.Installation, req.UserData); err != nil {
			return nil, fmt.Errorf("combining the installation and the user-data: %w", err)
		}
	}
	files, err := cloudinit.Config{InstanceID: req.InstanceID, Hostname: req.Server.Name, UserData: userData,
		VendorData: cloudinit.CallbackVendorData(req.InstanceID, o.url("ready"), o.guestToken), Network: gn}.Files()
	if err != nil {
		return nil, err
	}
	seed, err := installspec.SeedFromFiles(files)
	if err != nil {
		return nil, err
	}
	spec := &installspec.Spec{
		APIVersion: installspec.APIVersion,
		Image:      installspec.Image{URL: o.url("disk.raw"), ChunkedSHA256: img.Digest, SizeBytes: img.Size},
		Network:    installspec.Network{MAC: n.MACAddress, Address: n.Address, Gateway: n.Gateway, DNS: slices.Clone(n.DNS)},
		Seed:       seed,
		Callback:   installspec.Callback{URL: o.url("report"), Token: o.agentToken},
	}
	if h := s.Spec.RootDeviceHint; h != nil {
		spec.RootDevice = installspec.RootDeviceHint{Serial: h.Serial, WWN: h.WWN}
		if h.MinSize != nil {
			spec.RootDevice.MinSizeBytes = h.MinSize.Value()
		}
	}
	return spec, spec.Validate()
}

// url is one of the Operation's URLs.
func (o *operation) url(name string) string {
	return o.p.cfg.PublicURL + "/i/" + o.id + "/" + name
}

// bootFromDisk is the BootedFromDisk step: once the installer powered the server off (or its
// grace is over), eject the CD — some BMCs ignore a one-time override, so the CD must be gone —,
// boot the disk once, power on.
func (o *operation) bootFromDisk(ctx context.Context, connected func(context.Context) (*redfishclient.System, error)) bool {
	o.set(stargatev1.ConditionBootedFromDisk, controller.StepInProgress, "WaitingForPowerOff", "Waiting for the installer to power the server off")
	deadline := time.Now().Add(o.p.cfg.PowerOffGrace)
	return o.bmcStep(ctx, stargatev1.ConditionBootedFromDisk, "Booting the server from its disk", func(ctx context.Context) error {
		sys, err := connected(ctx)
		if err != nil {
			return err
		}
		for {
			state, err := sys.PowerState(ctx)
			if err != nil {
				return fmt.Errorf("reading the power state: %w", err)
			}
			if state == redfishclient.PowerOff {
				break
			}
			if time.Now().After(deadline) {
				if err := sys.Reset(ctx, redfishclient.ResetForceOff); err != nil {
					return fmt.Errorf("forcing the server off after the installer's grace of %s: %w", o.p.cfg.PowerOffGrace, err)
				}
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(min(time.Second, o.p.cfg.PowerOffGrace)):
			}
		}
		if err := sys.EjectMedia(ctx); err != nil {
			return fmt.Errorf("ejecting the installer ISO: %w", err)
		}
		if err := sys.SetBootOverride(ctx, redfishclient.BootOverride{Target: redfishclient.BootHdd, Enabled: redfishclient.BootOnce}); err != nil {
			return fmt.Errorf("setting the boot override to the disk: %w", err)
		}
		if err := sys.Reset(ctx, redfishclient.ResetOn); err != nil {
			return fmt.Errorf("powering on: %w", err)
		}
		o.set(stargatev1.ConditionBootedFromDisk, controller.StepDone, "PoweredOn", "The CD is ejected and the server powered on from its disk")
		return nil
	})
}

// powerCycle makes the server boot anew: forced off if it runs, then on.
func powerCycle(ctx context.Context, sys *redfishclient.System) error {
	state, err := sys.PowerState(ctx)
	if err != nil {
		return fmt.Errorf("reading the power state: %w", err)
	}
	if state != redfishclient.PowerOff {
		if err := sys.Reset(ctx, redfishclient.ResetForceOff); err != nil {
			return fmt.Errorf("forcing the server off: %w", err)
		}
	}
	if err := sys.Reset(ctx, redfishclient.ResetOn); err != nil {
		return fmt.Errorf("powering on: %w", err)
	}
	return nil
}

// bmcStep runs f until it succeeds: a BMC that errs (5xx, timeouts, resets, after the client's own
// retries) is tried again after StepRetry, with its last error in the step's message, until the
// Operation's spec.timeout ends it. A mistake in the Server's objects fails the step at once.
func (o *operation) bmcStep(ctx context.Context, step, what string, f func(context.Context) error) bool {
	for attempt := 1; ; attempt++ {
		err := f(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		var ce *configError
		if errors.As(err, &ce) {
			o.fail(step, ce.reason, ce.msg)
			return false
		}
		o.set(step, controller.StepInProgress, "BMCError", fmt.Sprintf("%s: the BMC failed (attempt %d): %v; trying again in %s",
			what, attempt, err, o.p.cfg.StepRetry))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(o.p.cfg.StepRetry):
		}
	}
}
