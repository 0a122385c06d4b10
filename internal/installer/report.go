package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"stargate.io/stargate/pkg/installspec"
)

// ErrOperationOver is returned when the callback answers 410 Gone: the Operation this agent works
// for has ended, so the install must stop.
var ErrOperationOver = errors.New("the controller says the Operation is over (410 Gone)")

// Reporter sends Reports to the callback URL. A report that cannot be delivered is logged (the
// console is the last resort) and never stops the install, except for ErrOperationOver.
type Reporter struct {
	Client *http.Client
	URL    string
	Token  string
	Log    func(format string, args ...any)
	// Attempts for reports that matter (all but Writing); Writing is sent once.
	Attempts int
	// Backoff between attempts.
	Backoff time.Duration
}

// Send delivers r; it returns ErrOperationOver when the server says the Operation ended, and the
// delivery error when every attempt failed.
func (rp *Reporter) Send(ctx context.Context, r installspec.Report) error {
	r.APIVersion = installspec.APIVersion
	if len(r.Message) > installspec.MaxMessageBytes {
		r.Message = r.Message[:installspec.MaxMessageBytes-3] + "..."
	}
	body, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding the report: %w", err)
	}
	attempts := max(rp.Attempts, 1)
	if r.Phase == installspec.PhaseWriting {
		attempts = 1 // the next progress report is only seconds away
	}
	for i := range attempts {
		if i > 0 {
			if err = sleepCtx(ctx, rp.Backoff); err != nil {
				break
			}
		}
		err = rp.post(ctx, body)
		if err == nil || errors.Is(err, ErrOperationOver) {
			return err
		}
	}
	rp.Log("report %s not delivered to %s: %v", r.Phase, rp.URL, err)
	return err
}

func (rp *Reporter) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rp.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+rp.Token)
	resp, err := rp.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusGone:
		return ErrOperationOver
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("callback answered %s", resp.Status)
	}
	return nil
}
