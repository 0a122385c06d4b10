package simulator

import (
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/pkg/filenames"
	"stargate.io/stargate/pkg/hostnet"
	"stargate.io/stargate/pkg/qemu"
)

// Layout says where the simulator keeps its state under a work directory. The names come from
// pkg/filenames; the paths are computed here once, for the provider and for `simulator paths`, so
// scripts read the layout instead of repeating it. Layout touches nothing on disk: it works
// without root and whether or not a simulator runs.
type Layout struct {
	// WorkDir is the work directory (--work-dir).
	WorkDir string
}

// ImagesDir holds the image cache.
func (l Layout) ImagesDir() string { return filepath.Join(l.WorkDir, filenames.ImagesDir) }

// MediaDir holds the virtual media (CD) cache, apart from the image cache (see filenames.MediaDir).
func (l Layout) MediaDir() string { return filepath.Join(l.WorkDir, filenames.MediaDir) }

// GoldenDir holds the golden images, <key>.qcow2 (see filenames.GoldenDir).
func (l Layout) GoldenDir() string { return filepath.Join(l.WorkDir, filenames.GoldenDir) }

// BakesDir holds the directories of golden images being baked (see filenames.BakesDir).
func (l Layout) BakesDir() string { return filepath.Join(l.WorkDir, filenames.BakesDir) }

// FaultFetchesDir holds the scratch caches of downloads with injected faults (imagefaults.go).
func (l Layout) FaultFetchesDir() string { return filepath.Join(l.WorkDir, filenames.FaultFetchesDir) }

// VMsDir holds one directory per VM, <namespace>/<server>.
func (l Layout) VMsDir() string { return filepath.Join(l.WorkDir, filenames.VMsDir) }

// RunDir holds the QMP sockets.
func (l Layout) RunDir() string { return filepath.Join(l.WorkDir, filenames.RunDir) }

// IPAMDir holds the address claims, one directory per bridge.
func (l Layout) IPAMDir() string { return filepath.Join(l.WorkDir, filenames.IPAMDir) }

// poolDir holds the address claims on one bridge: each bridge is its own subnet.
func (l Layout) poolDir(bridge string) string { return filepath.Join(l.IPAMDir(), bridge) }

// VMDir is where a server's VM lives. Namespaces and Server names cannot contain '/', so
// <namespace>/<name> never collides.
func (l Layout) VMDir(server types.NamespacedName) string {
	return filepath.Join(l.VMsDir(), server.Namespace, server.Name)
}

// QMPSocket is the QMP socket of the VM in vmDir: in RunDir under a hash of vmDir, because VM
// directories can be longer than a unix socket path may be (see qemu.QMPSocketPath).
func (l Layout) QMPSocket(vmDir string) (string, error) {
	return qemu.QMPSocketPath(l.RunDir(), vmDir)
}

// VMPaths are the files and host names of one server's VM.
type VMPaths struct {
	// Dir is the VM directory; Disk, Seed, Console, ConsoleMarkers, PIDFile and InstanceID are
	// its files (see pkg/filenames for what each holds).
	Dir, Disk, Seed, Console, ConsoleMarkers, PIDFile, InstanceID string
	// QMPSocket is the VM's QMP control socket, in RunDir.
	QMPSocket string
	// Tap is the VM's tap device.
	Tap string
	// MAC is the MAC address derived from the server's identity; a repave request may set
	// another one.
	MAC string
}

// VM returns the files and host names of server's VM. It fails only when the work directory is
// too long for a QMP socket path.
func (l Layout) VM(server types.NamespacedName) (VMPaths, error) {
	dir := l.VMDir(server)
	qmp, err := l.QMPSocket(dir)
	if err != nil {
		return VMPaths{}, err
	}
	id := identity(server)
	return VMPaths{
		Dir:            dir,
		Disk:           filepath.Join(dir, filenames.DiskFile),
		Seed:           filepath.Join(dir, filenames.SeedFile),
		Console:        filepath.Join(dir, filenames.ConsoleFile),
		ConsoleMarkers: filepath.Join(dir, filenames.ConsoleMarkersFile),
		PIDFile:        filepath.Join(dir, filenames.PIDFile),
		InstanceID:     filepath.Join(dir, filenames.InstanceIDFile),
		QMPSocket:      qmp,
		Tap:            hostnet.TapName(id),
		MAC:            hostnet.MACAddress(id),
	}, nil
}

// identity names a server's VM for derived host names (tap, MAC) and IP ownership.
func identity(server types.NamespacedName) string { return server.Namespace + "/" + server.Name }
