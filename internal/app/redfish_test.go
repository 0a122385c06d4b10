package app

import (
	"os"
	"strings"
	"testing"
)

func TestRedfishBase(t *testing.T) {
	host, _ := os.Hostname()
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{RedfishAddress: "10.0.0.5:8443"}, "https://10.0.0.5:8443"},
		{Options{RedfishAddress: "0.0.0.0:8443"}, "https://" + host + ":8443"},
		{Options{RedfishAddress: ":8000", RedfishPlainHTTP: true}, "http://" + host + ":8000"},
		{Options{RedfishAddress: "0.0.0.0:8443", RedfishURL: "https://bmc.lab:443"}, "https://bmc.lab:443"},
	} {
		if got, err := redfishBase(tc.o); err != nil || got != tc.want {
			t.Errorf("%+v: %q %v, want %q", tc.o, got, err, tc.want)
		}
	}
	if _, err := redfishBase(Options{RedfishAddress: "8443"}); err == nil || !strings.Contains(err.Error(), "--redfish-address") {
		t.Errorf("a bad address: %v", err)
	}
}
