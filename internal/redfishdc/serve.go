package redfishdc

import (
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
	"stargate.io/stargate/pkg/cloudinit"
	"stargate.io/stargate/pkg/installspec"
)

// maxGuestReportBytes bounds the installed OS's callback (one readiness line with its timeline).
const maxGuestReportBytes = 64 << 10

// ServeHTTP serves each running Operation's URLs under /i/<id>/, id being 52 random characters:
//
//	GET  installer.iso  the per-Operation installer ISO (for the BMC)
//	GET  disk.raw       the raw OS image (for the installer; Range requests)
//	POST report         the installer's progress Reports (Authorization: Bearer <agent token>)
//	POST ready          the installed OS's cloud-init result (Authorization: Bearer <guest token>)
//
// An unknown id is 404; an Operation that is over, or whose installer is done, answers 410 on the
// installer's URLs; a wrong token is 401 and changes nothing.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rest, ok := strings.CutPrefix(r.URL.Path, "/i/")
	id, name, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || strings.Contains(name, "/") {
		http.NotFound(w, r)
		return
	}
	p.mu.Lock()
	op, gone := p.routes[id], p.gone[id]
	p.mu.Unlock()
	switch {
	case gone:
		http.Error(w, "this Operation is over", http.StatusGone)
		return
	case op == nil:
		http.NotFound(w, r)
		return
	}
	switch {
	case name == "installer.iso" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		op.serveISO(w, r)
	case name == "disk.raw" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		op.serveImage(w, r)
	case name == "report" && r.Method == http.MethodPost:
		op.serveReport(w, r)
	case name == "ready" && r.Method == http.MethodPost:
		op.serveReady(w, r)
	case name == "installer.iso" || name == "disk.raw" || name == "report" || name == "ready":
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	default:
		http.NotFound(w, r)
	}
}

// installerOver reports whether the installer's URLs are closed.
func (o *operation) installerOver() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ended || o.agentOver
}

func (o *operation) serveISO(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	m := o.medium
	o.mu.Unlock()
	switch {
	case o.installerOver():
		http.Error(w, "this Operation's installer is over", http.StatusGone)
	case m == nil:
		http.Error(w, "the installer ISO is not built yet", http.StatusNotFound)
	default:
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "installer.iso", time.Time{}, io.NewSectionReader(m, 0, m.Size()))
	}
}

func (o *operation) serveImage(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	img := o.raw
	o.mu.Unlock()
	switch {
	case o.installerOver():
		http.Error(w, "this Operation's installer is over", http.StatusGone)
		return
	case img.Path == "":
		http.Error(w, "the image is not ready yet", http.StatusNotFound)
		return
	}
	f, err := os.Open(img.Path)
	if err != nil {
		http.Error(w, "the image is not available", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "disk.raw", time.Time{}, io.NewSectionReader(f, 0, img.Size))
}

// authorized checks the bearer token in constant time.
func authorized(r *http.Request, token string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func (o *operation) serveReport(w http.ResponseWriter, r *http.Request) {
	if o.installerOver() {
		http.Error(w, "this Operation's installer is over: stop", http.StatusGone)
		return
	}
	if !authorized(r, o.agentToken) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="stargate-installer"`)
		http.Error(w, "wrong token", http.StatusUnauthorized)
		return
	}
	rep, err := installspec.DecodeReport(http.MaxBytesReader(w, r.Body, installspec.MaxReportBytes+1))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !o.applyReport(rep) {
		http.Error(w, "this Operation's installer is over: stop", http.StatusGone)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// applyReport records an installer's Report; false means the installer's part is over.
func (o *operation) applyReport(rep *installspec.Report) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended || o.agentOver {
		return false
	}
	booted := func() {
		disk := ""
		if rep.Disk != "" {
			disk = "; target disk " + rep.Disk
		}
		for _, s := range o.steps {
			if s.Type == stargatev1.ConditionInstallerBooted && s.State == controller.StepDone {
				return
			}
		}
		o.installerBooted = time.Now()
		o.setLocked(stargatev1.ConditionInstallerBooted, controller.StepDone, "Reported", "The installer booted and reported"+disk)
	}
	switch rep.Phase {
	case installspec.PhaseBooted:
		booted()
		o.setLocked(stargatev1.ConditionImageWritten, controller.StepInProgress, "Writing", "The installer is about to write the image")
	case installspec.PhaseWriting:
		booted()
		o.writeRate = rep.BytesPerSecond
		o.setLocked(stargatev1.ConditionImageWritten, controller.StepInProgress, "Writing", writeMessage(rep))
	case installspec.PhaseWritten:
		booted()
		// The installer's own write, from its first report to the image verified: what a faster
		// disk or network changes (the guest timeline of the installed OS follows it).
		o.timeline = append(o.timeline, controller.TimelineStep{Name: "image-write", Duration: time.Since(o.installerBooted)})
		o.setLocked(stargatev1.ConditionImageWritten, controller.StepInProgress, "Seeding",
			fmt.Sprintf("The image is written (%s%s, sha256 verified); writing the cloud-init seed", formatBytes(rep.BytesWritten), o.rateSuffix()))
	case installspec.PhaseSeeded:
		booted()
		o.setLocked(stargatev1.ConditionImageWritten, controller.StepInProgress, "Syncing", "The image and the cloud-init seed are written; syncing")
	case installspec.PhaseDone:
		booted()
		o.setLocked(stargatev1.ConditionImageWritten, controller.StepDone, "Written",
			fmt.Sprintf("The installer wrote the image (%s%s) and the cloud-init seed%s",
				formatBytes(max(rep.BytesWritten, o.raw.Size)), o.rateSuffix(), diskSuffix(rep)))
		o.agentOver = true
		close(o.agentDone)
	case installspec.PhaseFailed:
		step := stargatev1.ConditionImageWritten
		for _, s := range o.steps {
			if s.Type == stargatev1.ConditionInstallerBooted && s.State != controller.StepDone {
				step = stargatev1.ConditionInstallerBooted
			}
		}
		o.agentOver = true
		o.failLocked(step, "InstallerFailed", "The installer failed: "+rep.Message)
	}
	return true
}

func diskSuffix(rep *installspec.Report) string {
	if rep.Disk == "" {
		return ""
	}
	return " to " + rep.Disk
}

// writeMessage is ImageWritten's message while the installer writes: bytes, % and rate.
func writeMessage(rep *installspec.Report) string {
	msg := "Writing the image" + diskSuffix(rep) + ": " + formatBytes(rep.BytesWritten)
	if rep.TotalBytes > 0 {
		msg += fmt.Sprintf(" of %s (%d%%)", formatBytes(rep.TotalBytes), rep.BytesWritten*100/rep.TotalBytes)
	}
	if rep.BytesPerSecond > 0 {
		msg += fmt.Sprintf(", %s/s", formatBytes(rep.BytesPerSecond))
	}
	return msg
}

// rateSuffix is " at RATE/s" once the installer reported its write rate.
func (o *operation) rateSuffix() string {
	if o.writeRate <= 0 {
		return ""
	}
	return " at " + formatBytes(o.writeRate) + "/s"
}

func (o *operation) serveReady(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	ended := o.ended
	o.mu.Unlock()
	if ended {
		http.Error(w, "this Operation is over", http.StatusGone)
		return
	}
	if !authorized(r, o.guestToken) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="stargate-guest"`)
		http.Error(w, "wrong token", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxGuestReportBytes))
	if err != nil {
		http.Error(w, "report too large", http.StatusRequestEntityTooLarge)
		return
	}
	res := cloudinit.ParseGuestResult(body, o.instanceID)
	if !res.Done {
		http.Error(w, "no readiness line for this installation", http.StatusBadRequest)
		return
	}
	if code, msg := o.applyGuest(res); code != 0 {
		http.Error(w, msg, code)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// applyGuest records the installed OS's cloud-init result; a non-zero code refuses it.
func (o *operation) applyGuest(res cloudinit.GuestResult) (int, string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended {
		return http.StatusGone, "this Operation is over"
	}
	// Only the OS booted from the disk may report: the token also travels in the ISO, so a call
	// before that is not the installed OS's.
	for _, s := range o.steps {
		if s.Type == stargatev1.ConditionBootedFromDisk && s.State != controller.StepDone {
			return http.StatusConflict, "the server has not booted from its disk yet"
		}
	}
	if len(res.Errors) > 0 {
		o.failLocked(stargatev1.ConditionGuestReady, "CloudInitFailed", "cloud-init reported errors: "+strings.Join(res.Errors, "; "))
		return 0, ""
	}
	for _, t := range res.Timeline {
		o.timeline = append(o.timeline, controller.TimelineStep{Name: t.Name, Duration: t.Duration})
	}
	o.setLocked(stargatev1.ConditionGuestReady, controller.StepDone, "CloudInitDone", "cloud-init finished without errors in the installed OS")
	o.done = true
	o.endLocked()
	return 0, ""
}
