package redfishdc_test

import (
	"encoding/pem"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/pkg/redfish"
)

// An https BMC is verified against the CA its Server names; another CA fails the connection with
// the certificate error in status; insecureSkipVerify works and status says NotVerified.
func TestBMCTLS(t *testing.T) {
	d := newDC(t, dcOptions{https: true})
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		d.addSystem(id)
	}
	d.basics()
	otherCA, err := redfish.EnsureCertificate(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	d.create(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bmc-ca"}, Data: map[string][]byte{"ca.crt": d.bmcCA}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "other-ca"}, Data: map[string][]byte{"ca.crt": pemOf(otherCA.Certificate[0])}},
	)
	verified := d.server("verified", "node-1", d.bmc.URL)
	verified.Spec.BMC.CASecretRef = &stargatev1.LocalSecretReference{Name: "bmc-ca"}
	wrongCA := d.server("wrong-ca", "node-2", d.bmc.URL)
	wrongCA.Spec.BMC.CASecretRef = &stargatev1.LocalSecretReference{Name: "other-ca"}
	insecure := d.server("insecure", "node-3", d.bmc.URL)
	insecure.Spec.BMC.InsecureSkipVerify = true
	d.create(verified, wrongCA, insecure,
		powerOp("off-1", "verified", stargatev1.OperationPowerOff), powerOp("off-3", "insecure", stargatev1.OperationPowerOff),
		repave("r2", "wrong-ca", 0))

	d.waitForPhase("off-1", stargatev1.OperationSucceeded)
	d.waitForPhase("off-3", stargatev1.OperationSucceeded)
	for id, want := range map[string]redfish.PowerState{"node-1": redfish.PowerOff, "node-2": redfish.PowerOn, "node-3": redfish.PowerOff} {
		if got := d.system(id).PowerState; got != want {
			t.Errorf("%s: %s, want %s", id, got, want)
		}
	}
	for name, want := range map[string]stargatev1.BMCTLS{"verified": stargatev1.BMCTLSVerified, "insecure": stargatev1.BMCTLSNotVerified} {
		d.waitForServer(name, "showing how its BMC is trusted", func(s *stargatev1.Server) bool { return s.Status.BMC != nil && s.Status.BMC.TLS == want })
	}
	d.waitFor("r2", "the certificate error in MediaInserted", func(op *stargatev1.Operation) bool {
		c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionMediaInserted)
		return c != nil && c.Reason == "BMCError" && strings.Contains(c.Message, "certificate")
	})
	for _, c := range d.backend.Calls() {
		if c.System == "node-2" {
			t.Errorf("the BMC whose certificate was not trusted got a change: %+v", c)
		}
	}
}

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
