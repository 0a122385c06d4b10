package redfish_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stargate.io/stargate/pkg/redfish"
)

// BenchmarkRedfish500Systems drives 500 systems of a MemoryBackend, each with its own BMC
// credentials, over loopback: 8 clients at once, four GETs of a System for every Reset (ForceOff
// and On in turn). It reports requests per second and the latency's 50th and 99th percentiles;
// the client runs on the same CPUs as the service.
func BenchmarkRedfish500Systems(b *testing.B) {
	const systems = 500
	backend := redfish.NewMemoryBackend()
	for i := range systems {
		sys := redfish.System{ID: fmt.Sprintf("server-%03d", i), UUID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), PowerState: redfish.PowerOn,
			MACAddresses: []string{fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256)}, MemoryMiB: 2048, CPUs: 2}
		if err := backend.Add(sys, fmt.Sprintf("admin-%d", i), fmt.Sprintf("secret-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	for _, scheme := range []string{"http", "https"} {
		b.Run(scheme, func(b *testing.B) {
			srv := httptest.NewUnstartedServer(&redfish.Service{Backend: backend})
			if scheme == "https" {
				cert, err := redfish.EnsureCertificate(b.TempDir(), []string{"127.0.0.1"})
				if err != nil {
					b.Fatal(err)
				}
				srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			transport := srv.Client().Transport.(*http.Transport).Clone()
			transport.MaxIdleConnsPerHost = 64
			client := &http.Client{Transport: transport}
			defer transport.CloseIdleConnections()

			var next atomic.Int64
			var mu sync.Mutex
			var all []time.Duration
			b.SetParallelism(4) // 4 per CPU: 8 clients on 2 CPUs
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				lat := make([]time.Duration, 0, 1024)
				for pb.Next() {
					n := next.Add(1)
					i := int(n % systems)
					path := fmt.Sprintf("%s/redfish/v1/Systems/server-%03d", srv.URL, i)
					method, body := http.MethodGet, ""
					if n%5 == 0 {
						reset := "ForceOff"
						if (n/5)%2 == 0 {
							reset = "On"
						}
						method, body = http.MethodPost, `{"ResetType": "`+reset+`"}`
						path += "/Actions/ComputerSystem.Reset"
					}
					req, err := http.NewRequest(method, path, strings.NewReader(body))
					if err != nil {
						b.Error(err)
						return
					}
					if body != "" {
						req.Header.Set("Content-Type", "application/json")
					}
					req.SetBasicAuth(fmt.Sprintf("admin-%d", i), fmt.Sprintf("secret-%d", i))
					t0 := time.Now()
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					lat = append(lat, time.Since(t0))
					if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
						b.Errorf("%s %s: %d", method, path, resp.StatusCode)
						return
					}
				}
				mu.Lock()
				all = append(all, lat...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			if len(all) == 0 {
				return
			}
			slices.Sort(all)
			pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "req/s")
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
		})
	}
}
