package app

import (
	"bytes"
	"strings"
	"testing"
)

func TestPathsPrintsTheLayout(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"default work dir", nil, `work_dir=/var/lib/stargate
images_dir=/var/lib/stargate/images
vms_dir=/var/lib/stargate/vms
run_dir=/var/lib/stargate/run
ipam_dir=/var/lib/stargate/ipam
media_dir=/var/lib/stargate/media
golden_dir=/var/lib/stargate/golden
bakes_dir=/var/lib/stargate/bakes
bmc_certificate=/var/lib/stargate/redfish/tls.crt
`},
		// The tap name, MAC and socket name are hashes of the server's identity and VM directory:
		// these literals pin them, so a change that would orphan running VMs fails here.
		{"one server", []string{"--work-dir", "/srv/stargate/", "--namespace", "dc1", "--server", "worker-1"}, `work_dir=/srv/stargate
images_dir=/srv/stargate/images
vms_dir=/srv/stargate/vms
run_dir=/srv/stargate/run
ipam_dir=/srv/stargate/ipam
media_dir=/srv/stargate/media
golden_dir=/srv/stargate/golden
bakes_dir=/srv/stargate/bakes
bmc_certificate=/srv/stargate/redfish/tls.crt
vm_dir=/srv/stargate/vms/dc1/worker-1
disk=/srv/stargate/vms/dc1/worker-1/disk.qcow2
seed=/srv/stargate/vms/dc1/worker-1/seed.iso
console=/srv/stargate/vms/dc1/worker-1/console.log
console_markers=/srv/stargate/vms/dc1/worker-1/console.markers
pidfile=/srv/stargate/vms/dc1/worker-1/qemu.pid
instance_id=/srv/stargate/vms/dc1/worker-1/instance-id
qmp_socket=/srv/stargate/run/1974d8ccdcbff70a.qmp
tap=sg-4b0929db01c8
mac=ca:6c:ee:bf:1e:df
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := Paths(tc.args, &out); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", out.String(), tc.want)
			}
		})
	}
}

func TestPathsRejectsBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--namespace", "dc1"}, "go together"},
		{[]string{"--server", "worker-1"}, "go together"},
		{[]string{"--namespace", "..", "--server", "worker-1"}, "--namespace"},
		{[]string{"--namespace", "dc1", "--server", "a/b"}, "--server"},
		{[]string{"--bridge", "br0"}, "usage: simulator paths"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"--work-dir", "/" + strings.Repeat("x", 120), "--namespace", "dc1", "--server", "s"}, "shorter --work-dir"},
	} {
		var out bytes.Buffer
		err := Paths(tc.args, &out)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: error %v, want one mentioning %q", tc.args, err, tc.wantErr)
		}
		if out.Len() > 0 {
			t.Errorf("%v: printed %q despite the error", tc.args, out.String())
		}
	}
}
