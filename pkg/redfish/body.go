package redfish

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
)

// MaxBodyBytes is the largest request body the service reads; a larger one is refused with 413.
const MaxBodyBytes = 64 << 10

// object is a decoded JSON object whose values are decoded one by one, so that each gets the
// Redfish error naming it.
type object map[string]json.RawMessage

// keys returns the object's keys, sorted, so that errors come in a stable order.
func (o object) keys() []string { return slices.Sorted(maps.Keys(o)) }

// readBody reads a PATCH or POST body: a JSON object, at most MaxBodyBytes, sent as
// application/json. An empty body without a Content-Type is an empty object (sushy ejects media
// that way). Requiring the JSON content type for a body also keeps browsers' simple cross-site
// requests (HTML forms, text/plain) from reaching an action with credentials the browser cached.
func readBody(req *request) (object, error) {
	ct := req.r.Header.Get("Content-Type")
	if ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return nil, errorf(http.StatusUnsupportedMediaType, msgHeaderInvalid("Content-Type"))
		}
	}
	req.r.Body = http.MaxBytesReader(req.w, req.r.Body, MaxBodyBytes)
	data, err := io.ReadAll(req.r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, errorf(http.StatusRequestEntityTooLarge, msgPayloadTooLarge())
		}
		return nil, errorf(http.StatusBadRequest, msgMalformedJSON())
	}
	if ct == "" && len(data) > 0 {
		return nil, errorf(http.StatusUnsupportedMediaType, msgHeaderInvalid("Content-Type"))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return object{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, errorf(http.StatusBadRequest, msgMalformedJSON())
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errorf(http.StatusBadRequest, msgMalformedJSON()) // trailing data after the value
	}
	var obj object
	if raw[0] != '{' || json.Unmarshal(raw, &obj) != nil {
		return nil, errorf(http.StatusBadRequest, msgUnrecognizedRequestBody())
	}
	return obj, nil
}

// jsonString decodes a JSON string; ok is false for any other JSON value, null included.
func jsonString(raw json.RawMessage) (s string, ok bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	return s, json.Unmarshal(raw, &s) == nil
}

// jsonBool decodes a JSON boolean; ok is false for any other JSON value.
func jsonBool(raw json.RawMessage) (b, ok bool) {
	switch string(bytes.TrimSpace(raw)) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// isNull reports whether raw is JSON null.
func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// text is a raw JSON value as a message shows it: a string's contents, any other value's JSON.
func text(raw json.RawMessage) string {
	if s, ok := jsonString(raw); ok {
		return s
	}
	return string(bytes.TrimSpace(raw))
}

// writeJSON writes body as the response's JSON.
func writeJSON(w http.ResponseWriter, status int, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		// The bodies are the service's own maps and structs of strings, numbers and bools.
		status = http.StatusInternalServerError
		data, _ = json.Marshal(errorf(status, msgInternalError()).body())
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}
