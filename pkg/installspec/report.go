package installspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// The callback protocol: the agent POSTs one Report (JSON, Content-Type application/json) to
// Spec.Callback.URL for each step, with the header "Authorization: Bearer <Spec.Callback.Token>".
// The server answers 2xx when it took the report (the body is ignored), 401/403 for a wrong token,
// and 410 Gone when the Operation is over: the agent then stops installing and powers off. Reports
// of one agent arrive in order; Booted comes first, then Writing (repeated, at most every few
// seconds), then Written, Seeded and Done — or Failed at any point, with the reason in Message.

// Phase is a step of the install.
type Phase string

// Phases, in the order they happen.
const (
	// PhaseBooted is the agent's first report: it read its Spec and configured the network.
	PhaseBooted Phase = "Booted"
	// PhaseWriting reports progress while the image streams to the disk.
	PhaseWriting Phase = "Writing"
	// PhaseWritten: the whole image is on the disk and its sha256 matched.
	PhaseWritten Phase = "Written"
	// PhaseSeeded: the cidata partition holds the NoCloud seed.
	PhaseSeeded Phase = "Seeded"
	// PhaseDone: everything is synced; the agent powers the machine off next.
	PhaseDone Phase = "Done"
	// PhaseFailed: the install stopped; Message says why. The agent powers off next.
	PhaseFailed Phase = "Failed"
)

// MaxReportBytes bounds a Report document; a server reads no more.
const MaxReportBytes = 16 << 10

// MaxMessageBytes bounds Report.Message.
const MaxMessageBytes = 4 << 10

// Report is one progress message from the agent.
type Report struct {
	APIVersion string `json:"apiVersion"`
	Phase      Phase  `json:"phase"`
	// Disk describes the target disk once chosen, e.g. "/dev/vda (virtio, serial X, 10737418240 bytes)".
	Disk string `json:"disk,omitempty"`
	// BytesWritten of the image so far.
	BytesWritten int64 `json:"bytesWritten,omitempty"`
	// TotalBytes of the image, when known.
	TotalBytes int64 `json:"totalBytes,omitempty"`
	// BytesPerSecond is the average write rate since the write started.
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// Message is a human-readable line: for Failed, the reason and what to do about it.
	Message string `json:"message,omitempty"`
}

// Validate checks a Report a server received.
func (r *Report) Validate() error {
	if r.APIVersion != APIVersion {
		return fmt.Errorf("apiVersion %q is not %q", truncate(r.APIVersion), APIVersion)
	}
	switch r.Phase {
	case PhaseBooted, PhaseWriting, PhaseWritten, PhaseSeeded, PhaseDone, PhaseFailed:
	default:
		return fmt.Errorf("unknown phase %q", truncate(string(r.Phase)))
	}
	if r.BytesWritten < 0 || r.TotalBytes < 0 || r.BytesPerSecond < 0 {
		return errors.New("byte counts must not be negative")
	}
	if r.TotalBytes > 0 && r.BytesWritten > r.TotalBytes {
		return fmt.Errorf("bytesWritten %d exceeds totalBytes %d", r.BytesWritten, r.TotalBytes)
	}
	if len(r.Message) > MaxMessageBytes || len(r.Disk) > MaxMessageBytes {
		return fmt.Errorf("message or disk is longer than %d bytes", MaxMessageBytes)
	}
	return nil
}

// DecodeReport reads one Report of at most MaxReportBytes, refusing unknown fields, and validates it.
func DecodeReport(r io.Reader) (*Report, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxReportBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading report: %w", err)
	}
	if len(data) > MaxReportBytes {
		return nil, fmt.Errorf("report is larger than %d bytes", MaxReportBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var rep Report
	if err := dec.Decode(&rep); err != nil {
		return nil, fmt.Errorf("parsing report: %w", err)
	}
	if dec.More() {
		return nil, errors.New("parsing report: data after the document")
	}
	if err := rep.Validate(); err != nil {
		return nil, err
	}
	return &rep, nil
}
