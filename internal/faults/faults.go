// Package faults holds what every injector of FaultInjections shares: the validation of a
// FaultInjection (the same checks admission makes: tenants write these), the seeded probability
// draw and the firstN ledger. The controller decides repave faults with it and the simulator's
// BMC decides BMC faults with it, so that probability and firstN mean the same everywhere.
package faults

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// MaxDuration bounds every duration parameter, as the CRD does (checked again here: the CRD may
// be older than the binary).
const MaxDuration = time.Hour

// IsBMC reports whether t is a fault of a Server's BMC: it strikes while the Server exists
// (at Running), not at a repave step.
func IsBMC(t stargatev1.FaultType) bool { return strings.HasPrefix(string(t), "BMC") }

// Validate checks a fault the way admission does.
func Validate(f stargatev1.Fault) error {
	if f.Name == "" || len(f.Name) > 63 {
		return errors.New("a fault needs a name of 1 to 63 characters")
	}
	if (f.Probability == nil) == (f.FirstN == nil) {
		return fmt.Errorf("fault %s: give exactly one of probability and firstN", f.Name)
	}
	if f.Probability != nil {
		if _, err := ParseProbability(*f.Probability); err != nil {
			return fmt.Errorf("fault %s: %w", f.Name, err)
		}
	}
	if f.FirstN != nil && (*f.FirstN < 1 || *f.FirstN > 100000) {
		return fmt.Errorf("fault %s: firstN must be 1 to 100000", f.Name)
	}
	if f.At != stargatev1.FaultAtRunning && !slices.Contains(stargatev1.RepaveSteps, f.At) {
		return fmt.Errorf("fault %s: at %q is neither a repave step nor Running", f.Name, f.At)
	}
	if IsBMC(f.Type) && f.At != stargatev1.FaultAtRunning {
		return fmt.Errorf("fault %s: BMC faults strike the Server's BMC, not a repave step: at must be Running", f.Name)
	}
	if f.FailedTries != nil && (*f.FailedTries < 1 || *f.FailedTries > 100) {
		return fmt.Errorf("fault %s: failedTries must be 1 to 100", f.Name)
	}
	if f.Percent != nil && (*f.Percent < 0 || *f.Percent > 100) {
		return fmt.Errorf("fault %s: percent must be 0 to 100", f.Name)
	}
	if f.Duration != nil && (f.Duration.Duration <= 0 || f.Duration.Duration > MaxDuration) {
		return fmt.Errorf("fault %s: duration must be more than 0s and at most %s", f.Name, MaxDuration)
	}
	if f.Type == stargatev1.FaultImageServerError && f.FailedTries == nil {
		return fmt.Errorf("fault %s: ImageServerError needs failedTries", f.Name)
	}
	if f.Type == stargatev1.FaultNetworkLoss && f.Percent == nil {
		return fmt.Errorf("fault %s: NetworkLoss needs a percent", f.Name)
	}
	if (f.Type == stargatev1.FaultDiskReadError || f.Type == stargatev1.FaultDiskWriteError) && f.AfterOperations == nil {
		return fmt.Errorf("fault %s: %s needs afterOperations", f.Name, f.Type)
	}
	if f.AfterOperations != nil && (*f.AfterOperations < 0 || *f.AfterOperations > 1000000000) {
		return fmt.Errorf("fault %s: afterOperations must be 0 to 1000000000", f.Name)
	}
	if f.BytesPerSecond != nil && (*f.BytesPerSecond < 1024 || *f.BytesPerSecond > 10<<30) {
		return fmt.Errorf("fault %s: bytesPerSecond must be 1024 to 10737418240", f.Name)
	}
	if needsDuration(f.Type) && f.Duration == nil {
		return fmt.Errorf("fault %s: %s needs a duration", f.Name, f.Type)
	}
	return nil
}

// needsDuration: the types whose effect is bounded by their duration; without one an injector
// would have no end to it.
func needsDuration(t stargatev1.FaultType) bool {
	switch t {
	case stargatev1.FaultHang, stargatev1.FaultNetworkPartition, stargatev1.FaultNetworkLatency, stargatev1.FaultClockSkew,
		stargatev1.FaultBMCUnavailable,
		stargatev1.FaultBMCConnectionRefused, stargatev1.FaultBMCPowerDelay, stargatev1.FaultBMCStalePowerState,
		stargatev1.FaultNodeFlapping:
		return true
	}
	return false
}

// IsBMCEntry reports whether fi's fault named name is a BMC fault: its status entries are the
// BMC's, not the repaves'.
func IsBMCEntry(fi *stargatev1.FaultInjection, name string) bool {
	for _, f := range fi.Spec.Faults {
		if f.Name == name {
			return IsBMC(f.Type)
		}
	}
	return false
}

// ParseProbability reads "0" to "1".
func ParseProbability(s string) (float64, error) {
	p, err := strconv.ParseFloat(s, 64)
	if err != nil || p < 0 || p > 1 || len(s) > 6 {
		return 0, fmt.Errorf("probability %q must be a number from 0 to 1, e.g. 0.5", s)
	}
	return p, nil
}

// ValidateInjection checks a whole FaultInjection and returns its selector.
func ValidateInjection(fi *stargatev1.FaultInjection) (labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(&fi.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("spec.selector: %w", err)
	}
	if len(fi.Spec.Faults) == 0 || len(fi.Spec.Faults) > 32 {
		return nil, errors.New("spec.faults must list 1 to 32 faults")
	}
	for _, f := range fi.Spec.Faults {
		if err := Validate(f); err != nil {
			return nil, err
		}
	}
	return sel, nil
}

// Draw is the probability draw of one fault for one unit it may strike (an Operation for a
// repave fault, a Server for a BMC fault): seeded by the (FaultInjection, unit, fault) triple, so
// that it comes out the same every time it is made.
func Draw(fiUID, unit types.UID, fault string, p float64) bool {
	h := fnv.New64a()
	_, _ = h.Write([]byte(string(fiUID) + "/" + string(unit) + "/" + fault))
	seed := h.Sum64()
	return rand.New(rand.NewPCG(seed, seed>>1|1)).Float64() < p
}

// LedgerKey names one fault of one FaultInjection in a Ledger.
func LedgerKey(fi *stargatev1.FaultInjection, fault string) string {
	return string(fi.UID) + "/" + fault
}

// Ledger remembers this process's firstN decisions that its cache may not show yet, so that two
// units decided at once cannot both take the last of N. Hold its lock around a whole decision
// (Count, then Take), so that the count and the take are one step.
type Ledger struct {
	sync.Mutex
	// taken maps FaultInjection UID/fault name to the units it was injected into.
	taken map[string]map[types.UID]struct{}
}

// Count is how many units have the fault: those the cache shows and those this process took.
func (l *Ledger) Count(key string, cached map[types.UID]struct{}) int {
	n := len(cached)
	for uid := range l.taken[key] {
		if _, ok := cached[uid]; !ok {
			n++
		}
	}
	return n
}

// Has reports whether this process injected the fault into unit already (a decision whose
// record was lost, made again).
func (l *Ledger) Has(key string, unit types.UID) bool {
	_, ok := l.taken[key][unit]
	return ok
}

// Take records that the fault was injected into unit.
func (l *Ledger) Take(key string, unit types.UID) {
	if l.taken == nil {
		l.taken = map[string]map[types.UID]struct{}{}
	}
	if l.taken[key] == nil {
		l.taken[key] = map[types.UID]struct{}{}
	}
	l.taken[key][unit] = struct{}{}
}
