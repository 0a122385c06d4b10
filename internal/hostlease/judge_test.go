package hostlease

import (
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func leases(rv map[string]string) []coordinationv1.Lease {
	var out []coordinationv1.Lease
	for id, v := range rv {
		out = append(out, coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: LeaseName(id),
			ResourceVersion: v, Annotations: map[string]string{AnnotationHostID: id}}})
	}
	return out
}

func states(vs []Verdict) map[string]HostState {
	m := map[string]HostState{}
	for _, v := range vs {
		m[v.HostID] = v.State
	}
	return m
}

func TestJudgeDeclaresASilentHostLostAfterGraceByItsOwnClock(t *testing.T) {
	j := &Judge{Grace: 40 * time.Second}
	t0 := time.Unix(1000, 0)
	// Just started: nobody is judged before a full grace period, however old the Leases look.
	if s := states(j.Observe(t0, leases(map[string]string{"a": "1", "b": "1"}))); s["a"] != Undecided || s["b"] != Undecided {
		t.Fatalf("at start: %v", s)
	}
	s := states(j.Observe(t0.Add(10*time.Second), leases(map[string]string{"a": "2", "b": "1"})))
	if s["a"] != Alive || s["b"] != Undecided {
		t.Fatalf("after a's renewal: %v", s)
	}
	vs := j.Observe(t0.Add(40*time.Second), leases(map[string]string{"a": "3", "b": "1"}))
	for _, v := range vs {
		if v.HostID == "b" && (v.State != Lost || !v.Since.Equal(t0)) {
			t.Fatalf("b: %+v; want Lost since %s", v, t0)
		}
	}
	if s := states(j.Observe(t0.Add(45*time.Second), leases(map[string]string{"a": "3", "b": "2"}))); s["b"] != Alive {
		t.Fatalf("b renewed again: %v", s)
	}
}

func TestJudgeWaitsOutAMassSilenceOnce(t *testing.T) {
	j := &Judge{Grace: 40 * time.Second}
	t0 := time.Unix(1000, 0)
	all := func(rv string) map[string]string { return map[string]string{"a": rv, "b": rv, "c": rv} }
	j.Observe(t0, leases(all("1")))
	j.Observe(t0.Add(5*time.Second), leases(all("2")))
	// The API server was down: nobody renewed for 60 s. No one is lost yet...
	if s := states(j.Observe(t0.Add(65*time.Second), leases(all("2")))); s["a"] == Lost || s["b"] == Lost || s["c"] == Lost {
		t.Fatalf("mass silence declared hosts lost: %v", s)
	}
	// ...a and b resume, c stays silent for a full grace period after that: c alone is lost.
	j.Observe(t0.Add(75*time.Second), leases(map[string]string{"a": "3", "b": "3", "c": "2"}))
	s := states(j.Observe(t0.Add(105*time.Second), leases(map[string]string{"a": "4", "b": "4", "c": "2"})))
	if s["a"] != Alive || s["b"] != Alive || s["c"] != Lost {
		t.Fatalf("after the pause: %v", s)
	}
}

func TestJudgeGivesAFullGraceAfterItCouldNotList(t *testing.T) {
	j := &Judge{Grace: 40 * time.Second}
	t0 := time.Unix(1000, 0)
	j.Observe(t0, leases(map[string]string{"a": "1", "b": "1"}))
	j.Blind()
	if s := states(j.Observe(t0.Add(50*time.Second), leases(map[string]string{"a": "1", "b": "2"}))); s["a"] == Lost {
		t.Fatalf("a lost right after the observer could list again: %v", s)
	}
	if s := states(j.Observe(t0.Add(90*time.Second), leases(map[string]string{"a": "1", "b": "3"}))); s["a"] != Lost {
		t.Fatalf("a silent for a full grace after recovery: %v", s)
	}
}

func TestJudgeForgetsDeletedLeases(t *testing.T) {
	j := &Judge{Grace: time.Second}
	t0 := time.Unix(1000, 0)
	j.Observe(t0, leases(map[string]string{"a": "1"}))
	if vs := j.Observe(t0.Add(time.Hour), nil); len(vs) != 0 {
		t.Fatalf("verdicts for deleted Leases: %+v", vs)
	}
}
