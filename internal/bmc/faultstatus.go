package bmc

import (
	"context"
	"fmt"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/faults"
)

// FieldManagerPrefix prefixes the field manager the BMC writes a FaultInjection's status with
// (then the host id): its own, apart from the FaultInjection reconciler's, so that each owns its
// counts in the host's entry.
const FieldManagerPrefix = "stargate-bmc-"

// applyStatus counts a strike in this host's entry of fi's status: the fault's entry (Servers
// struck, the last one and when) and the entry's total. It applies every BMC fault entry this
// host has for fi, as server-side apply drops those its manager owned and leaves out. The status
// stays bounded: one entry per fault of the spec (at most 32). f.mu is held.
func (f *Faults) applyStatus(ctx context.Context, fi *stargatev1.FaultInjection, struck stargatev1.Fault, server string, now time.Time) error {
	prev := hostEntry(fi, f.HostID)
	var entries []stargatev1.FaultCount
	// The total counts the reconciler's faults (from Operations) as the status has them, and the
	// BMC's as this host knows them now.
	total := prev.Injected
	for _, p := range prev.Faults {
		if faults.IsBMCEntry(fi, p.Name) {
			total -= p.Injected
		}
	}
	for _, fault := range fi.Spec.Faults {
		if !faults.IsBMC(fault.Type) {
			continue
		}
		c := stargatev1.FaultCount{Name: fault.Name, Type: fault.Type, Injected: f.count(fi, fault.Name)}
		for _, p := range prev.Faults {
			if p.Name == fault.Name {
				c.LastServer, c.LastTime = p.LastServer, p.LastTime
			}
		}
		if fault.Name == struck.Name {
			t := metav1.NewTime(now)
			c.LastServer, c.LastTime = server, &t
		}
		total += c.Injected
		if c.Injected > 0 {
			entries = append(entries, c)
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	fs := make([]any, 0, len(entries))
	for i := range entries {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&entries[i])
		if err != nil {
			return fmt.Errorf("converting fault count: %w", err)
		}
		fs = append(fs, m)
	}
	host := map[string]any{"host": f.HostID, "injected": total, "faults": fs}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": stargatev1.GroupVersion.String(),
		"kind":       "FaultInjection",
		"metadata":   map[string]any{"name": fi.Name, "namespace": fi.Namespace, "uid": string(fi.UID)},
		"status":     map[string]any{"hosts": []any{host}},
	}}
	if err := f.Client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(FieldManagerPrefix+f.HostID), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying status of fault injection %s: %w", fi.Name, client.IgnoreNotFound(err))
	}
	return nil
}
