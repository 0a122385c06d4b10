package redfish

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Gatekeeper is an optional interface of a Backend whose systems' BMCs may be out of service (a
// simulated fault): before the service serves a request on a system — after its credentials are
// checked, so that an outage tells nobody without them that the system exists — it asks Admit.
// nil serves the request; a *ServiceError answers it with that error; ErrDropConnection closes
// the client's connection without an answer; any other error is a 500.
type Gatekeeper interface {
	Admit(ctx context.Context, systemID string) error
}

// ErrDropConnection is returned by a Gatekeeper to close the request's connection without any
// answer, as a BMC that stopped listening would. One listener serves every system, so a system's
// BMC cannot refuse the TCP connection itself: the connection is dropped once the request shows
// which system it is for; the client sees its connection closed (EOF or reset) rather than
// ECONNREFUSED.
var ErrDropConnection = errors.New("redfish: drop the connection")

// ServiceError is returned by a Backend (or a Gatekeeper) to answer with Status (4xx or 5xx) and
// Message as a Redfish error, e.g. an InsertMedia a BMC failed at. Message is shown to the
// client, so it must not hold secrets. A 503 with RetryAfter is answered with
// Base.ServiceTemporarilyUnavailable and a Retry-After header in whole seconds.
type ServiceError struct {
	Status     int
	Message    string
	RetryAfter time.Duration
}

func (e *ServiceError) Error() string { return e.Message }

// apiError is the Redfish error the service answers with.
func (e *ServiceError) apiError() *apiError {
	status := e.Status
	if status < 400 || status > 599 {
		status = http.StatusInternalServerError
	}
	if status == http.StatusServiceUnavailable && e.RetryAfter > 0 {
		secs := strconv.Itoa(int((e.RetryAfter + time.Second - 1) / time.Second))
		m := message{id: "ServiceTemporarilyUnavailable", text: "The service is temporarily unavailable.  Retry in " + secs + " seconds.",
			args: []string{secs}, severity: "Critical",
			resolution: "Wait for the indicated retry duration and retry the operation. " + e.Message}
		return &apiError{status: status, msgs: []message{m}, retryAfter: secs}
	}
	return errorf(status, msgGeneralError(e.Message))
}

// admit asks the Backend's Gatekeeper, if it has one, whether the request on req.id is served; if
// not, it answers (or drops) the request and reports false.
func (s *Service) admit(req *request) bool {
	g, ok := s.Backend.(Gatekeeper)
	if !ok {
		return true
	}
	err := g.Admit(req.ctx, req.id)
	switch {
	case err == nil:
		return true
	case errors.Is(err, ErrDropConnection):
		dropConnection(req.w)
	default:
		s.fail(req, err)
	}
	return false
}

// dropConnection closes the request's connection without writing anything.
func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2, or a recorder in a test: aborting the handler resets the stream instead.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
