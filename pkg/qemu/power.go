package qemu

// Powerdown presses the VM's ACPI power button (QMP system_powerdown) and returns at once: a guest
// that honours it shuts down cleanly, and QEMU exits. A VM that is not running is not an error.
func (v VMs) Powerdown(dir, qmpSocket string) error {
	if st, err := v.Status(dir); err != nil || !st.Running {
		return err
	}
	return qmpCommand(qmpSocket, `{"execute":"system_powerdown"}`)
}

// Reset restarts the VM at once, like a reset button (QMP system_reset).
func (v VMs) Reset(dir, qmpSocket string) error {
	if st, err := v.Status(dir); err != nil || !st.Running {
		return err
	}
	return qmpCommand(qmpSocket, `{"execute":"system_reset"}`)
}
