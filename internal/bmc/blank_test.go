package bmc_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/bmc"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/internal/mockdc"
)

// blankDC is the mock datacenter with blank machines: it records what the BMC asked it to make.
type blankDC struct {
	*mockdc.Provider
	mu   sync.Mutex
	made []controller.BlankMachine
}

func (d *blankDC) EnsureBlankMachine(_ context.Context, m controller.BlankMachine) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.made = append(d.made, m)
	return len(d.made) == 1, nil // made once, then unchanged
}

func (d *blankDC) madeFor(name string) []controller.BlankMachine {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []controller.BlankMachine
	for _, m := range d.made {
		if m.Server.Name == name {
			out = append(out, m)
		}
	}
	return out
}

// The BMC of a Server never repaved makes its blank machine, from the Server's spec, before
// InsertMedia, a boot override or a power-on — unless the machine would not fit the host's limits
// (--max-cpus, --max-memory), as a repave of the Server would not: then nothing is made and the
// BMC user hears why. An installed Server, and a power-off, make nothing.
func TestBMCMakesBlankMachinesWithinTheHostLimits(t *testing.T) {
	dc := &blankDC{}
	w := newWorldWith(t, 20*time.Millisecond, func(p *mockdc.Provider) controller.Provider {
		dc.Provider = p
		return dc
	}, func(b *bmc.Backend) { b.MaxCPUs, b.MaxMemoryBytes = 4, 8<<30 })

	blankServer := func(name string, cpus int32, memory, disk string) string {
		w.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-bmc"}, Type: corev1.SecretTypeBasicAuth,
			Data: map[string][]byte{"username": []byte("tenant"), "password": []byte("pw")}})
		w.create(&stargatev1.Server{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: stargatev1.ServerSpec{CPUs: cpus,
			Memory: ptr.To(resource.MustParse(memory)), Disk: ptr.To(resource.MustParse(disk)), MACAddress: "52:54:00:00:00:42",
			BMC: &stargatev1.BMCSpec{CredentialsSecretRef: stargatev1.LocalSecretReference{Name: name + "-bmc"}}}})
		w.waitServer(name, func(st stargatev1.ServerStatus) bool { return st.BMC != nil })
		return "/redfish/v1/Systems/" + w.ns + "." + name
	}

	sys := blankServer("fits", 2, "1Gi", "5Gi")
	w.call("PATCH", sys, "tenant", "pw", `{"Boot":{"BootSourceOverrideTarget":"Cd","BootSourceOverrideEnabled":"Once"}}`)
	w.call("POST", sys+"/Actions/ComputerSystem.Reset", "tenant", "pw", `{"ResetType":"On"}`)
	want := controller.BlankMachine{Server: types.NamespacedName{Namespace: w.ns, Name: "fits"}, CPUs: 2, MemoryMiB: 1024,
		DiskBytes: 5 << 30, MAC: "52:54:00:00:00:42"}
	if made := dc.madeFor("fits"); len(made) != 2 || made[0] != want || made[1] != want {
		t.Errorf("blank machines made for a boot override and a power-on: %+v, want twice %+v", made, want)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		n := 0
		for _, e := range w.events("fits") {
			if e.Reason == "BlankMachineByBMC" && strings.Contains(e.Note, `BMC user "tenant": blank machine of 2 CPUs, 1024 MiB of memory and an empty 5Gi disk`) {
				n++
			}
		}
		return n == 1, fmt.Sprintf("%d BlankMachineByBMC events naming the user and the hardware, want 1 (made once)", n)
	})
	w.call("POST", sys+"/Actions/ComputerSystem.Reset", "tenant", "pw", `{"ResetType":"ForceOff"}`)
	if made := dc.madeFor("fits"); len(made) != 2 {
		t.Errorf("a power-off made a blank machine: %+v", made)
	}

	for name, spec := range map[string][2]any{
		"too-wide": {int32(8), "1Gi"},
		"too-big":  {int32(1), "16Gi"},
	} {
		sys := blankServer(name, spec[0].(int32), spec[1].(string), "5Gi")
		for _, req := range [][3]string{
			{"POST", sys + "/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`},
			{"PATCH", sys, `{"Boot":{"BootSourceOverrideTarget":"Cd","BootSourceOverrideEnabled":"Once"}}`},
			{"POST", "/redfish/v1/Managers/" + w.ns + "." + name + "/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia",
				`{"Image":"http://images.example/installer.iso","Inserted":true}`},
		} {
			code, body := w.call(req[0], req[1], "tenant", "pw", req[2])
			if code != 400 || !strings.Contains(body, "cannot be powered on as a blank machine here") ||
				!strings.Contains(body, "--max-") {
				t.Errorf("%s %s on %s: %d %s, want 400 naming the host limit", req[0], req[1], name, code, body)
			}
		}
		if made := dc.madeFor(name); len(made) != 0 {
			t.Errorf("%s: blank machine made beyond the host's limits: %+v", name, made)
		}
	}

	// An installed Server is no blank machine: nothing is made for it.
	w.installedServer("installed", "admin", "s3cret")
	isys := "/redfish/v1/Systems/" + w.ns + ".installed"
	if code, body := w.call("PATCH", isys, "admin", "s3cret", `{"Boot":{"BootSourceOverrideTarget":"Cd","BootSourceOverrideEnabled":"Once"}}`); code >= 300 {
		t.Fatalf("PATCH boot of an installed server: %d %s", code, body)
	}
	if made := dc.madeFor("installed"); len(made) != 0 {
		t.Errorf("blank machine made for an installed server: %+v", made)
	}
}
