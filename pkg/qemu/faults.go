package qemu

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"stargate.io/stargate/pkg/filenames"
)

// MaxCountedOperations is the most I/O operations a disk fault counts before its errors start:
// blkdebug counts with one rule per operation (its only counter is a state number), so the rules
// grow with the count. Above it the caller injects nothing (a repave never comes close).
const MaxCountedOperations = 50000

// DiskErrors are the I/O errors a disk gets: reads and/or writes fail with EIO once the guest
// made After operations (reads and writes together). A negative After means that kind never fails.
type DiskErrors struct {
	ReadAfter, WriteAfter int64
}

// BlkdebugConfig is the blkdebug rules file for e: a counter over every read and write request
// (the raw node above blkdebug fires read_aio or write_aio for each), and from the count on, EIO
// for the requests of the failing kinds. Values outside 0..MaxCountedOperations are refused.
func BlkdebugConfig(e DiskErrors) ([]byte, error) {
	last := int64(-1)
	for _, n := range []int64{e.ReadAfter, e.WriteAfter} {
		if n > MaxCountedOperations {
			return nil, fmt.Errorf("disk errors after %d operations: at most %d are counted", n, MaxCountedOperations)
		}
		last = max(last, n)
	}
	if last < 0 {
		return nil, fmt.Errorf("no disk errors to inject")
	}
	var b bytes.Buffer
	// State s (starting at 1) means s-1 operations were made; the counter stops at last+1.
	for s := int64(1); s <= last; s++ {
		for _, ev := range []string{"read_aio", "write_aio"} {
			fmt.Fprintf(&b, "[set-state]\nevent = \"%s\"\nstate = \"%d\"\nnew_state = \"%d\"\n\n", ev, s, s+1)
		}
	}
	for _, k := range []struct {
		kind  string
		after int64
	}{{"read", e.ReadAfter}, {"write", e.WriteAfter}} {
		if k.after < 0 {
			continue
		}
		// One rule per state from after+1 on: a rule holds in one state only.
		for s := k.after + 1; s <= last+1; s++ {
			fmt.Fprintf(&b, "[inject-error]\nevent = \"%s_aio\"\nstate = \"%d\"\niotype = \"%s\"\nerrno = \"5\"\nimmediately = \"on\"\n\n",
				k.kind, s, k.kind)
		}
	}
	return b.Bytes(), nil
}

// diskDrive is the -drive value of the VM's disk: a qcow2 overlay, throttled when
// DiskBytesPerSecond says so, under blkdebug when Blkdebug says so (raw above it fires the events
// its rules count).
func diskDrive(spec VMSpec) string {
	disk := filepath.Join(spec.Dir, filenames.DiskFile)
	d := "file=" + disk + ",if=virtio,format=qcow2,discard=unmap"
	if spec.Blkdebug {
		d = "if=virtio,driver=raw,file.driver=blkdebug,file.config=" + escapeOpt(filepath.Join(spec.Dir, filenames.BlkdebugFile)) +
			",file.image.driver=qcow2,file.image.file.driver=file,file.image.file.filename=" + escapeOpt(disk) + ",discard=unmap"
	}
	if spec.DiskBytesPerSecond > 0 {
		d += ",throttling.bps-total=" + strconv.FormatInt(spec.DiskBytesPerSecond, 10)
	}
	return d
}

// usesDisk reports whether a QEMU command line (/proc/PID/cmdline) runs the disk of dir, in
// either form diskDrive writes.
func usesDisk(cmdline []byte, dir string) bool {
	disk := filepath.Join(dir, filenames.DiskFile)
	return bytes.Contains(cmdline, []byte("file="+disk+",")) || bytes.Contains(cmdline, []byte("file.filename="+escapeOpt(disk)+","))
}

// Pause stops the VM's vCPUs (QMP stop): the machine hangs, its clock with it, until Resume.
func (v VMs) Pause(qmpSocket string) error {
	_, err := qmpExecute(qmpSocket, `{"execute":"stop"}`)
	return err
}

// Resume lets a paused VM run again (QMP cont); a running VM is not an error.
func (v VMs) Resume(qmpSocket string) error {
	_, err := qmpExecute(qmpSocket, `{"execute":"cont"}`)
	return err
}

// RunState is the VM's run state as QMP query-status names it: "running", "paused", ...
func (v VMs) RunState(qmpSocket string) (string, error) {
	ret, err := qmpExecute(qmpSocket, `{"execute":"query-status"}`)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		return "", fmt.Errorf("decoding query-status %s: %w", ret, err)
	}
	return st.Status, nil
}

// networkDelayFilter is the id of the filter that delays a VM's network (SetNetworkDelay).
const networkDelayFilter = "stargate-network-delay"

// SetNetworkDelay makes the VM hold the frames of its NIC and release them every d (QEMU
// filter-buffer on the netdev, both directions), so each waits up to d on its way in and on its
// way out; 0 removes the delay. The kernel's netem would give an exact delay, but it is often not
// built; this needs nothing from the host and touches no other VM. Converges: the filter is
// replaced, and deleting a missing one is not an error.
func (v VMs) SetNetworkDelay(qmpSocket string, d time.Duration) error {
	if d < 0 || d > MaxNetworkDelay {
		return fmt.Errorf("network delay %s must be between 0 and %s", d, MaxNetworkDelay)
	}
	if _, err := qmpExecute(qmpSocket, `{"execute":"object-del","arguments":{"id":"`+networkDelayFilter+`"}}`); err != nil &&
		!strings.Contains(err.Error(), "not found") {
		return fmt.Errorf("removing the network delay: %w", err)
	}
	if d == 0 {
		return nil
	}
	add := fmt.Sprintf(`{"execute":"object-add","arguments":{"qom-type":"filter-buffer","id":%q,"netdev":"net0","queue":"all","interval":%d}}`,
		networkDelayFilter, max(d.Microseconds(), 1))
	if _, err := qmpExecute(qmpSocket, add); err != nil {
		return fmt.Errorf("delaying the network: %w", err)
	}
	return nil
}

// MaxNetworkDelay bounds SetNetworkDelay: a longer one is a partition, not a delay.
const MaxNetworkDelay = 30 * time.Second
