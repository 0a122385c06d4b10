package userdata

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	cases := []struct {
		name, data, wantErr string
	}{
		{"cloud-config", "#cloud-config\npackages: [curl]\n", ""},
		{"empty cloud-config", "#cloud-config\n", ""},
		{"shell script", "#!/bin/sh\necho hi\n", ""},
		{"empty", "  \n", "user-data is empty"},
		{"bad YAML", "#cloud-config\npackages: [curl\n", "not valid YAML"},
		{"not a mapping", "#cloud-config\n- a\n- b\n", "not a mapping"},
		{"too big", "#!/bin/sh\n" + strings.Repeat("#", MaxBytes), "more than the"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate([]byte(tc.data))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
