// Package installer is the logic of the Stargate installer agent, the static program that runs as
// /init of the installer ISO's initramfs: it loads the drivers its hardware needs, configures the
// static network of its Spec, picks the target disk, streams the raw image to it while checking
// its sha256, writes the NoCloud seed into a partition labelled cidata, and reports each step to
// the controller's callback URL. cmd/stargate-installer wires it to PID 1's duties.
package installer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"stargate.io/stargate/pkg/installspec"
)

// Agent holds where things are; the zero values of the paths are the real system's.
type Agent struct {
	ConfigPath string // default installspec.ConfigPath
	ModulesDir string // default /lib/modules/$(uname -r)
	SysRoot    string // default /sys
	DevDir     string // default /dev
	ResolvConf string // default /etc/resolv.conf
	WorkDir    string // default /tmp
	Console    io.Writer
	// NetworkTimeout bounds the wait for the NIC and its carrier; DiskTimeout the wait for disks.
	NetworkTimeout, DiskTimeout time.Duration

	// FailureReported is set by Run when it failed and the controller took the Failed report:
	// nobody needs to read the console then.
	FailureReported bool
}

// seedReserve is what the image may not use at the end of the disk: the cidata partition, its
// alignment and the backup GPT.
const seedReserve = SeedPartitionBytes + 2*partitionAlign

func (a *Agent) defaults() error {
	if a.ConfigPath == "" {
		a.ConfigPath = installspec.ConfigPath
	}
	if a.ModulesDir == "" {
		release, err := KernelRelease()
		if err != nil {
			return err
		}
		a.ModulesDir = filepath.Join("/lib/modules", release)
	}
	if a.SysRoot == "" {
		a.SysRoot = "/sys"
	}
	if a.DevDir == "" {
		a.DevDir = "/dev"
	}
	if a.ResolvConf == "" {
		a.ResolvConf = "/etc/resolv.conf"
	}
	if a.WorkDir == "" {
		a.WorkDir = "/tmp"
	}
	if a.Console == nil {
		a.Console = os.Stderr
	}
	if a.NetworkTimeout == 0 {
		a.NetworkTimeout = 60 * time.Second
	}
	if a.DiskTimeout == 0 {
		a.DiskTimeout = 60 * time.Second
	}
	return nil
}

func (a *Agent) logf(format string, args ...any) {
	fmt.Fprintf(a.Console, "stargate-installer: "+format+"\n", args...)
}

// Run performs the install. Every failure is reported to the callback (when the Spec could be read
// and the network works) and printed to the console, with what to do about it; the caller powers
// off either way.
func (a *Agent) Run(ctx context.Context) (err error) {
	if err := a.defaults(); err != nil {
		return err
	}
	spec, err := a.readSpec()
	if err != nil {
		a.logf("FAILED: %v", err)
		return err
	}
	var reporter *Reporter
	defer func() {
		if err == nil {
			return
		}
		a.logf("FAILED: %v", err)
		switch {
		case errors.Is(err, ErrOperationOver):
			a.FailureReported = true // the controller ended it; there is nothing to tell
		case reporter != nil:
			sendErr := reporter.Send(context.WithoutCancel(ctx), installspec.Report{Phase: installspec.PhaseFailed, Message: err.Error()})
			a.FailureReported = sendErr == nil
		}
	}()

	loaded, err := a.loadModules(ctx)
	if err != nil {
		return err
	}
	ifname, err := ConfigureNetwork(ctx, spec.Network, a.ResolvConf, a.NetworkTimeout, a.logf)
	if err != nil {
		return fmt.Errorf("configuring the network: %w", err)
	}
	a.logf("network: %s has %s", ifname, spec.Network.Address)

	client, err := httpClient(spec.CABundle)
	if err != nil {
		return err
	}
	reporter = &Reporter{Client: client, URL: spec.Callback.URL, Token: spec.Callback.Token, Log: a.logf, Attempts: 5, Backoff: 2 * time.Second}
	if err := reporter.Send(ctx, installspec.Report{Phase: installspec.PhaseBooted,
		Message: fmt.Sprintf("installer up: %d kernel modules loaded, %s configured", loaded, ifname)}); errors.Is(err, ErrOperationOver) {
		return err
	}

	need := spec.Image.SizeBytes + seedReserve
	disk, err := a.chooseDisk(ctx, spec.RootDevice, need)
	if err != nil {
		return err
	}
	a.logf("target disk: %s", disk)
	return a.install(ctx, spec, disk, client, reporter)
}

func (a *Agent) readSpec() (*installspec.Spec, error) {
	f, err := os.Open(a.ConfigPath)
	if err != nil {
		return nil, fmt.Errorf("reading the install spec: %w (the ISO carries it as its second initrd; was it built with pkg/installeriso?)", err)
	}
	defer f.Close()
	spec, err := installspec.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("the install spec at %s is invalid: %w", a.ConfigPath, err)
	}
	return spec, nil
}

// loadModules loads drivers for the devices present until no new module loads, as udev's
// coldplug does. It returns the number of modules loaded.
func (a *Agent) loadModules(ctx context.Context) (int, error) {
	idx, err := LoadModuleIndex(a.ModulesDir)
	if err != nil {
		return 0, fmt.Errorf("reading the kernel module index: %w (the initramfs was built for another kernel?)", err)
	}
	loader := &ModuleLoader{Index: idx, Dir: a.ModulesDir, Log: a.logf}
	total := 0
	for range 10 {
		n, err := loader.LoadForDevices(filepath.Join(a.SysRoot, "devices"))
		if err != nil {
			return total, err
		}
		total += n
		if n == 0 {
			break
		}
		// Drivers probe their devices, and new devices (virtio, SCSI targets) appear, shortly after loading.
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return total, err
		}
	}
	a.logf("loaded %d kernel modules", total)
	return total, nil
}

// chooseDisk waits until the disks stop changing (controllers scan their buses asynchronously),
// then chooses; it keeps looking until DiskTimeout when no disk fits yet.
func (a *Agent) chooseDisk(ctx context.Context, hint installspec.RootDeviceHint, need int64) (Disk, error) {
	const settle = 3 * time.Second
	deadline := time.Now().Add(a.DiskTimeout)
	var prev []string
	stableSince := time.Now()
	for {
		disks, err := ScanDisks(filepath.Join(a.SysRoot, "block"), a.DevDir)
		if err != nil {
			return Disk{}, err
		}
		names := make([]string, len(disks))
		for i, d := range disks {
			names[i] = d.Name
		}
		if !slices.Equal(names, prev) {
			prev, stableSince = names, time.Now()
		}
		if time.Since(stableSince) >= settle {
			disk, err := ChooseDisk(disks, hint, need)
			if err == nil || time.Now().After(deadline) {
				return disk, err
			}
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return Disk{}, err
		}
	}
}

// install writes the image and the seed to disk. Once anything was written, a failure — the
// Operation ending included — leaves the disk wiped: a half-installed disk must not boot.
func (a *Agent) install(ctx context.Context, spec *installspec.Spec, disk Disk, client *http.Client, reporter *Reporter) (err error) {
	dev, err := os.OpenFile(disk.Path, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", disk.Path, err)
	}
	defer dev.Close()
	var written int64
	wiped := false
	defer func() {
		if err != nil && written > 0 && !wiped {
			err = errors.Join(err, Wipe(dev, written))
		}
	}()

	// A 410 on a progress report (the Operation ended) stops the write at once.
	writeCtx, stopWrite := context.WithCancelCause(ctx)
	defer stopWrite(nil)
	progress := newProgressSender(writeCtx, reporter, disk.String(), stopWrite)
	writer := &ImageWriter{
		Source:        ImageSource{Client: client, URL: spec.Image.URL, ChunkedSHA256: spec.Image.ChunkedSHA256, Size: spec.Image.SizeBytes},
		Capacity:      disk.SizeBytes - seedReserve,
		ProgressEvery: 3 * time.Second,
		Progress:      progress.update,
		Log:           a.logf,
	}
	a.logf("writing %s to %s", spec.Image.URL, disk.Path)
	written, err = writer.Write(writeCtx, dev)
	progress.stop()
	if err != nil {
		wiped = errors.Is(err, ErrDigestMismatch) // Write wiped it already
		if cause := context.Cause(writeCtx); errors.Is(cause, ErrOperationOver) {
			err = cause
		}
		return fmt.Errorf("writing the image to %s: %w", disk.Path, err)
	}
	rate := progress.last().BytesPerSecond
	a.logf("image written: %d bytes, chunked sha256 %s, %d bytes/s", written, spec.Image.ChunkedSHA256, rate)
	if err := reporter.Send(ctx, installspec.Report{Phase: installspec.PhaseWritten, Disk: disk.String(),
		BytesWritten: written, TotalBytes: written, BytesPerSecond: rate, Message: "sha256 verified"}); errors.Is(err, ErrOperationOver) {
		return err
	}

	sectorSize := 512
	if s, err := strconv.Atoi(readAttr(filepath.Join(a.SysRoot, "block", disk.Name), "queue/logical_block_size")); err == nil {
		sectorSize = s
	}
	part, err := WriteSeedPartition(dev, disk.SizeBytes, written, sectorSize, spec.Seed.Files(), a.WorkDir)
	if err != nil {
		return fmt.Errorf("writing the cidata partition: %w", err)
	}
	a.logf("seed: partition %d (%s) at byte %d", part.Number, part.Table, part.Start)
	if err := reporter.Send(ctx, installspec.Report{Phase: installspec.PhaseSeeded, Disk: disk.String(),
		Message: fmt.Sprintf("cidata is partition %d of the %s", part.Number, part.Table)}); errors.Is(err, ErrOperationOver) {
		return err
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", disk.Path, err)
	}
	_ = reporter.Send(ctx, installspec.Report{Phase: installspec.PhaseDone, Disk: disk.String(), BytesWritten: written,
		TotalBytes: written, BytesPerSecond: rate, Message: "installed; powering off"})
	return nil
}

// httpClient trusts caBundle only (no system roots exist in the initramfs) and never uses a proxy.
func httpClient(caBundle string) (*http.Client, error) {
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		// Images are mostly incompressible or already compressed; asking for gzip would only cost CPU.
		DisableCompression: true,
	}
	if caBundle != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(caBundle)) {
			return nil, errors.New("the spec's caBundle holds no usable certificate")
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			// A redirect could lead the agent (and its token) anywhere: the controller serves directly.
			return errors.New("redirects are not followed")
		},
	}, nil
}
