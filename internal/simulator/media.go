package simulator

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/types"

	"stargate.io/stargate/internal/controller"
)

// SetBoot records the boot override for the next power-on.
func (p *Provider) SetBoot(_ context.Context, _ types.NamespacedName, _ controller.BootOverride) error {
	return fmt.Errorf("boot overrides in the QEMU simulator: %w", controller.ErrUnsupported)
}

// InsertMedia attaches an ISO as the VM's CD.
func (p *Provider) InsertMedia(_ context.Context, _ types.NamespacedName, _ string) error {
	return fmt.Errorf("virtual media in the QEMU simulator: %w", controller.ErrUnsupported)
}

// EjectMedia detaches the VM's CD.
func (p *Provider) EjectMedia(_ context.Context, _ types.NamespacedName) error { return nil }
