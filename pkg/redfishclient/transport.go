package redfishclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// One request to the BMC: attempts, timeouts, which failures are retried and how long to wait.

// do sends a request and retries it while it fails in a way worth retrying, up to the
// configured attempts and never past ctx. Its error names the request and the last reason.
func (c *Client) do(ctx context.Context, method, path string, body any, header http.Header) (*response, error) {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	var prev error // the previous attempt's, for an error after the caller's context ended
	for attempt := 1; ; attempt++ {
		resp, err := c.once(ctx, method, path, payload, header)
		switch {
		case err == nil:
			return resp, nil
		case ctx.Err() != nil && prev != nil:
			return nil, fmt.Errorf("%s %s: %w (last error: %w)", method, path, err, prev)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		wait, retry := c.retryable(err, attempt)
		switch {
		case !retry:
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		case attempt >= c.attempts:
			return nil, fmt.Errorf("%s %s: gave up after %d attempts: %w", method, path, attempt, err)
		}
		c.log.V(1).Info("Redfish request failed; retrying", "method", method, "path", path, "attempt", attempt, "wait", wait, "reason", err.Error())
		prev = err
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%s %s: %w (last error: %w)", method, path, context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// once sends one attempt of a request, bounded by the per-request timeout.
func (c *Client) once(ctx context.Context, method, path string, payload []byte, header http.Header) (*response, error) {
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	actx, cancel := context.WithTimeoutCause(ctx, c.timeout, &timeoutError{c.timeout})
	defer cancel()
	u := *c.base
	u.Path = path
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(actx, method, u.String(), rd)
	if err != nil {
		return nil, &refusedError{err}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "stargate-redfishclient")
	req.Header.Set("OData-Version", "4.0")
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.SetBasicAuth(c.user, c.password)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, actx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, c.transportError(ctx, actx, err)
	}
	if len(data) > MaxResponseBytes {
		return nil, &refusedError{fmt.Errorf("the BMC's response is larger than %d bytes", MaxResponseBytes)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, newHTTPError(resp, data)
	}
	return &response{header: resp.Header, body: data}, nil
}

// timeoutError is the cause of an attempt that took longer than the per-request timeout.
type timeoutError struct{ d time.Duration }

func (e *timeoutError) Error() string { return fmt.Sprintf("no answer within %s", e.d) }

// transportError makes a failed exchange's error say what happened: the attempt's timeout, the
// caller's cancellation, or the transport's error, without the URL the http package adds (the
// caller's error names the request already).
func (c *Client) transportError(ctx, actx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if actx.Err() != nil {
		return context.Cause(actx)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err
}

// retryable reports whether a failed attempt is worth another, and how long to wait first.
func (c *Client) retryable(err error, attempt int) (time.Duration, bool) {
	wait := c.minWait << min(attempt-1, 16)
	if wait > c.maxWait || wait <= 0 {
		wait = c.maxWait
	}
	var he *HTTPError
	var refused *refusedError
	var certErr *tls.CertificateVerificationError
	var to *timeoutError
	switch {
	case errors.As(err, &he):
		switch {
		case he.StatusCode == http.StatusTooManyRequests || he.StatusCode == http.StatusServiceUnavailable:
			if he.RetryAfter > 0 {
				wait = min(he.RetryAfter, c.maxWait)
			}
			return wait, true
		case he.StatusCode == http.StatusConflict || he.StatusCode >= 500:
			// 409: many BMCs answer it while a previous change is still being applied.
			return wait, he.StatusCode != http.StatusNotImplemented && he.StatusCode != http.StatusHTTPVersionNotSupported
		}
		return 0, false
	case errors.As(err, &to):
		return wait, true
	case errors.As(err, &refused), errors.As(err, &certErr):
		return 0, false
	}
	// Dropped and refused connections, resets, EOFs: a BMC restarting its web server.
	return wait, true
}
