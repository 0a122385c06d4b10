// Package filenames names every directory and file the simulator keeps on its host, in the
// manner of Lima's filenames package: the layout is read, and changed, in this one place, and
// `simulator paths` prints it so that scripts never spell it out themselves.
//
// A work directory (default DefaultWorkDir) holds:
//
//	images/<sha256 of URL>/         the image cache (see pkg/imagecache)
//	media/<sha256 of URL>/          the virtual media (CD) cache, kept apart from the images
//	vms/<namespace>/<server>/       one VM directory per Server: DiskFile, SeedFile, ConsoleFile, ...
//	run/<hash of VM dir>.qmp        QMP sockets, outside the VM directories to stay short
//	ipam/<bridge>/<address>         address claims (see pkg/ipam)
package filenames

// DefaultWorkDir is the work directory when --work-dir is not given.
const DefaultWorkDir = "/var/lib/stargate"

// Directories of a work directory.
const (
	// ImagesDir holds the image cache; it survives teardown so images are downloaded once.
	ImagesDir = "images"
	// VMsDir holds one directory per VM, <namespace>/<server>; it is root-only because seeds
	// carry user-data and consoles may echo it.
	VMsDir = "vms"
	// RunDir holds the QMP sockets. Unix socket paths are limited to 107 bytes, so sockets live
	// here under a short hash rather than in the (long) VM directories.
	RunDir = "run"
	// IPAMDir holds the address claims, one subdirectory per bridge.
	IPAMDir = "ipam"
	// MediaDir caches the ISOs inserted as virtual CDs. It is a cache of its own, not ImagesDir:
	// a cache removes an entry its check rejects, and the checks differ (a disk image is no CD,
	// an ISO no disk), so one URL asked for as both must not evict the other's entry — least of
	// all an OS image that VM disks use as their backing file.
	MediaDir = "media"
	// GoldenDir holds golden images, <key>.qcow2: OS images with a profile's installation baked
	// in (see internal/simulator/golden.go). Like ImagesDir it survives teardown; each file is a
	// standalone qcow2 (no backing file) whose mtime is its last use.
	GoldenDir = "golden"
	// BakesDir holds one directory per golden image being baked, <key>: the bake VM's disk,
	// seed and console. A bake left by a crash is removed at startup and baked again on demand.
	BakesDir = "bakes"
	// FaultFetchesDir holds the downloads of repaves with an injected image fault, one scratch
	// cache each, removed when the download ends, and all of them at startup.
	FaultFetchesDir = "fault-fetches"
)

// Files of a VM directory. The directory is the VM's whole state: a restarted controller finds
// its VMs again from it.
const (
	// DiskFile is the VM's qcow2 overlay on the cached base image.
	DiskFile = "disk.qcow2"
	// SeedFile is the cloud-init NoCloud seed ISO.
	SeedFile = "seed.iso"
	// ConsoleFile is the serial console log of the current boot. It is kept within --console-size
	// (see pkg/consolelog): once it outgrows it, the middle of the file is a hole — the head of the
	// boot and the newest output stay, and the apparent size is everything the guest wrote.
	ConsoleFile = "console.log"
	// ConsoleMarkersFile holds the lines the host waits for (the guest's readiness report) that
	// were in a part of ConsoleFile dropped to keep it within its size; like the console, it
	// belongs to the current boot.
	ConsoleMarkersFile = "console.markers"
	// BootImageFile says which image the disk overlays (the OS image, or a golden image baked from
	// it), as the repave's ImageReady message said: a restarted controller reports it again.
	BootImageFile = "boot-image"
	// PIDFile is QEMU's pidfile.
	PIDFile = "qemu.pid"
	// InstanceIDFile holds the instance-id of the installation on the disk. It is written last,
	// once QEMU started, so its presence means "this installation started".
	InstanceIDFile = "instance-id"
	// QEMULogFile holds QEMU's output when it failed to start.
	QEMULogFile = "qemu.log"
	// VMSpecFile holds the VM's QEMU settings (CPUs, memory, MAC, tap) as JSON, written when the
	// installation starts, so that a power-on boots the same machine again.
	VMSpecFile = "vm.json"
	// MACFile holds the MAC address of the VM's network interface, claimed before anything else
	// of an installation, so that no two Servers on one host boot with the same MAC.
	MACFile = "mac"
	// BootFile holds the boot override a BMC set (target, once or continuous, mode) as JSON, so
	// that it survives restarts; absent means no override.
	BootFile = "boot.json"
	// SerconPortFile holds the I/O port SeaBIOS prints its serial console on (QEMU fw_cfg
	// etc/sercon-port), for VMs whose firmware shows on the console (blank machines).
	SerconPortFile = "sercon-port"
	// BlankFile marks a blank machine (a Server never repaved, made by its BMC) and holds its
	// hardware as JSON (CPUs, memory, disk size, MAC). A repave removes it before anything else.
	BlankFile = "blank.json"
	// MediaFile holds the virtual CD (its URL, digest and cached path) as JSON while one is
	// inserted; absent means an empty drive.
	MediaFile = "media.json"
	// BlkdebugFile holds the QEMU blkdebug rules of a VM whose disk has an injected I/O error
	// (a FaultInjection's DiskReadError or DiskWriteError); absent on a VM without one.
	BlkdebugFile = "blkdebug.conf"
	// FaultsStruckFile lists the faults of the current installation that struck already (one
	// line each), so that a poll or a restart never strikes one twice.
	FaultsStruckFile = "faults-struck"
	// HangFile holds the time (RFC 3339) an injected Hang ends while the VM is stopped by it: the
	// simulator resumes the VM once it has passed, also after a restart.
	HangFile = "hang-until"
	// NetworkFaultsFile records the network faults injected into a VM's current installation
	// (JSON): the simulator sets them again from it after a restart, and ends a partition on time.
	NetworkFaultsFile = "network-faults.json"
)

// QMPSocketSuffix ends the name of every QMP socket in RunDir.
const QMPSocketSuffix = ".qmp"

// LockFile in the work directory is held (flock) by the one simulator that uses the directory; it
// holds that simulator's PID, so a second one can say which process to stop.
const LockFile = "simulator.lock"
