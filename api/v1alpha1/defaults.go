package v1alpha1

import (
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Defaults of the API, in one place. The API server applies them (the +kubebuilder:default markers
// must repeat the literals; api_test.go checks that they agree), and the accessors below apply them
// to objects that never went through an API server, so no controller keeps a copy of its own.
const (
	// DefaultCPUs is a Server's CPU count when spec.cpus is unset.
	DefaultCPUs = 2
	// DefaultMemory is a Server's RAM when spec.memory is unset.
	DefaultMemory = "4Gi"
	// DefaultDisk is a Server's root disk size when spec.disk is unset.
	DefaultDisk = "20Gi"
	// DefaultOperationTimeout bounds a running Operation when spec.timeout is unset.
	DefaultOperationTimeout = "30m"
	// DefaultGracePeriod is how long powerOff and reboot wait for a guest to shut down.
	DefaultGracePeriod = time.Minute
)

// Grace is spec.gracePeriod, or DefaultGracePeriod when unset.
func (s *OperationSpec) Grace() time.Duration {
	if s.GracePeriod == nil {
		return DefaultGracePeriod
	}
	return s.GracePeriod.Duration
}

// CPUCount is spec.cpus, or DefaultCPUs when unset.
func (s *ServerSpec) CPUCount() int {
	if s.CPUs == 0 {
		return DefaultCPUs
	}
	return int(s.CPUs)
}

// MemoryBytes is spec.memory in bytes, or DefaultMemory when unset.
func (s *ServerSpec) MemoryBytes() int64 {
	if s.Memory != nil {
		return s.Memory.Value()
	}
	q := resource.MustParse(DefaultMemory)
	return q.Value()
}

// DiskBytes is spec.disk in bytes, or DefaultDisk when unset.
func (s *ServerSpec) DiskBytes() int64 {
	if s.Disk != nil {
		return s.Disk.Value()
	}
	q := resource.MustParse(DefaultDisk)
	return q.Value()
}

// ImageURL is spec.image.url, or DefaultImageURL when unset.
func (s *ProvisioningProfileSpec) ImageURL() string {
	if s.Image.URL == "" {
		return DefaultImageURL
	}
	return s.Image.URL
}

// InstallationUserData is the profile's installation user-data (spec.installation.cloudInit), or
// "" when it has none.
func (s ProvisioningProfileSpec) InstallationUserData() string {
	if s.Installation == nil {
		return ""
	}
	return s.Installation.CloudInit
}
