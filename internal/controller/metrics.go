package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// Metrics are the controller's Prometheus metrics, served on the manager's metrics endpoint.
type Metrics struct {
	stepSeconds   *prometheus.HistogramVec
	repaveSeconds *prometheus.HistogramVec
	finishedTotal *prometheus.CounterVec
	running       prometheus.Gauge
	guestSeconds  *prometheus.HistogramVec
	faultsTotal   *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg (nil: controller-runtime's registry).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = metrics.Registry
	}
	buckets := []float64{1, 5, 15, 30, 60, 120, 180, 300, 600, 1200}
	m := &Metrics{
		stepSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "stargate_repave_step_duration_seconds", Help: "Time from the start of a repave to the end of each step.", Buckets: buckets,
		}, []string{"step"}),
		repaveSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "stargate_repave_duration_seconds", Help: "Duration of finished repaves by result.", Buckets: buckets,
		}, []string{"result"}),
		finishedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargate_operations_finished_total", Help: "Operations that finished, by phase.",
		}, []string{"phase"}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stargate_operations_running", Help: "Operations this controller is running now.",
		}),
	}
	m.guestSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "stargate_guest_boot_step_duration_seconds", Help: "Duration of each step of an installed guest's boot, as the guest reported it.",
		Buckets: []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600},
	}, []string{"step"})
	m.faultsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stargate_faults_injected_total", Help: "Faults FaultInjections had injected into Operations and BMCs, by fault type.",
	}, []string{"type"})
	reg.MustRegister(m.stepSeconds, m.repaveSeconds, m.finishedTotal, m.running, m.guestSeconds, m.faultsTotal)
	return m
}

// setRunning records how many repaves this controller runs now (recomputed, so it is right after
// a restart too).
func (m *Metrics) setRunning(n int) {
	if m != nil {
		m.running.Set(float64(n))
	}
}

func (m *Metrics) finished(op *stargatev1.Operation) {
	if m == nil {
		return
	}
	m.finishedTotal.WithLabelValues(string(op.Status.Phase)).Inc()
	if op.Spec.Operation == stargatev1.OperationRepave && op.Status.StartTime != nil && op.Status.CompletionTime != nil {
		m.repaveSeconds.WithLabelValues(string(op.Status.Phase)).Observe(op.Status.CompletionTime.Sub(op.Status.StartTime.Time).Seconds())
	}
}

// stepDone records how long after the start of op the step finished.
func (m *Metrics) stepDone(op *stargatev1.Operation, step string, at time.Time) {
	if m == nil || op.Status.StartTime == nil {
		return
	}
	m.stepSeconds.WithLabelValues(step).Observe(at.Sub(op.Status.StartTime.Time).Seconds())
}

// guestStep records one step of a guest's boot timeline.
func (m *Metrics) guestStep(step string, d time.Duration) {
	if m != nil {
		m.guestSeconds.WithLabelValues(step).Observe(d.Seconds())
	}
}

func (m *Metrics) faultInjected(t stargatev1.FaultType) {
	if m != nil {
		m.faultsTotal.WithLabelValues(string(t)).Inc()
	}
}

// FaultInjected counts one injection of a fault of type t by another injector of this host (the
// simulator's BMC); nil counts nothing.
func (m *Metrics) FaultInjected(t stargatev1.FaultType) { m.faultInjected(t) }
