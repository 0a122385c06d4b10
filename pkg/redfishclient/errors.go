package redfishclient

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// HTTPError is a BMC's answer other than 2xx. Its text is the status and the messages of the
// Redfish error body (error.@Message.ExtendedInfo[].Message, or error.message), cut to a
// bounded length.
type HTTPError struct {
	StatusCode int
	// Code is the error body's error.code, e.g. "Base.1.16.PropertyValueNotInList".
	Code string
	// Messages are the error body's messages, cleaned of control characters and bounded.
	Messages []string
	// MessageIDs are the ExtendedInfo's MessageIds, in the same order as they came.
	MessageIDs []string
	// RelatedProperties are the properties the messages name (JSON pointers such as
	// "#/TransferProtocolType").
	RelatedProperties []string
	// RetryAfter is the BMC's Retry-After (429, 503), zero if it sent none.
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	s := strconv.Itoa(e.StatusCode) + " " + http.StatusText(e.StatusCode)
	switch {
	case len(e.Messages) > 0:
		s += ": " + strings.Join(e.Messages, "; ")
	case e.Code != "":
		s += ": " + e.Code
	}
	if e.StatusCode == http.StatusUnauthorized {
		s += " (the BMC refused the credentials)"
	}
	return s
}

// Limits on what an error keeps of a BMC's error body.
const (
	maxMessages   = 8
	maxMessageLen = 300
)

// redfishErrorBody is a Redfish error response (DSP0266 "Error responses").
type redfishErrorBody struct {
	Error struct {
		Code     string        `json:"code"`
		Message  string        `json:"message"`
		Extended []messageInfo `json:"@Message.ExtendedInfo"`
	} `json:"error"`
}

type messageInfo struct {
	MessageID         string   `json:"MessageId"`
	Message           string   `json:"Message"`
	RelatedProperties []string `json:"RelatedProperties"`
}

// newHTTPError reads a non-2xx response. A body that is not a Redfish error leaves only the
// status: a BMC's HTML error page says nothing worth repeating.
func newHTTPError(resp *http.Response, body []byte) *HTTPError {
	e := &HTTPError{StatusCode: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	var eb redfishErrorBody
	if json.Unmarshal(body, &eb) != nil {
		return e
	}
	e.Code = clean(eb.Error.Code)
	for _, m := range eb.Error.Extended {
		if len(e.Messages) == maxMessages {
			break
		}
		if text := clean(m.Message); text != "" {
			e.Messages = append(e.Messages, text)
		}
		e.MessageIDs = append(e.MessageIDs, clean(m.MessageID))
		for _, p := range m.RelatedProperties {
			if len(e.RelatedProperties) < maxMessages {
				e.RelatedProperties = append(e.RelatedProperties, clean(p))
			}
		}
	}
	if msg := clean(eb.Error.Message); len(e.Messages) == 0 && msg != "" {
		e.Messages = append(e.Messages, msg)
	}
	return e
}

// mentions reports whether the error names the property (in RelatedProperties or its messages).
func (e *HTTPError) mentions(property string) bool {
	if slices.Contains(e.RelatedProperties, "#/"+property) {
		return true
	}
	for _, m := range e.Messages {
		if strings.Contains(m, property) {
			return true
		}
	}
	return false
}

// clean makes text from a BMC safe to show: control characters become spaces, runs of space
// collapse, and it is cut to maxMessageLen bytes.
func clean(s string) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f || r == ' ' }), " ")
	if len(s) > maxMessageLen {
		cut := maxMessageLen
		for cut > 0 && s[cut]&0xc0 == 0x80 { // not inside a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date. Zero if absent or
// unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if n < 0 || n > 3600 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// notAllowedError is a value the BMC does not advertise for a property or parameter.
func notAllowedError(what, value string, allowed []string) error {
	return fmt.Errorf("the BMC does not allow %s %q (it allows: %s)", what, value, strings.Join(allowed, ", "))
}
