package redfish

import (
	"fmt"
	"strings"
)

// registry is the Base message registry the service's messages come from (DMTF Base 1.16).
const registry = "Base.1.16"

// message is one Redfish message from the Base registry, as it appears in an error's
// @Message.ExtendedInfo.
type message struct {
	// id is the message's key in the registry, e.g. "ResourceNotFound".
	id         string
	text       string
	args       []string
	related    []string
	severity   string
	resolution string
}

// apiError is a Redfish error response: an HTTP status and the messages that explain it.
type apiError struct {
	status int
	msgs   []message
	// retryAfter, when set, is sent as the Retry-After header (seconds).
	retryAfter string
}

func (e *apiError) Error() string { return e.msgs[0].text }

func errorf(status int, m message) *apiError { return &apiError{status: status, msgs: []message{m}} }

// body is the error response body in Redfish's format (DSP0266 "Error responses"): code and
// message are those of the first message, the rest are in @Message.ExtendedInfo.
func (e *apiError) body() map[string]any {
	infos := make([]map[string]any, 0, len(e.msgs))
	for _, m := range e.msgs {
		info := map[string]any{
			"@odata.type":     "#Message.v1_1_1.Message",
			"MessageId":       registry + "." + m.id,
			"Message":         m.text,
			"MessageArgs":     nonNil(m.args),
			"MessageSeverity": m.severity,
			"Severity":        m.severity,
			"Resolution":      m.resolution,
		}
		if len(m.related) > 0 {
			info["RelatedProperties"] = m.related
		}
		infos = append(infos, info)
	}
	return map[string]any{"error": map[string]any{
		"code":                  registry + "." + e.msgs[0].id,
		"message":               e.msgs[0].text,
		"@Message.ExtendedInfo": infos,
	}}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// jsonPointer turns a property path ("Boot", "BootSourceOverrideTarget") into the JSON pointer
// RelatedProperties use ("#/Boot/BootSourceOverrideTarget").
func jsonPointer(path ...string) string { return "#/" + strings.Join(path, "/") }

// shown quotes a client-supplied value for a message, cut short so that a huge value is not
// echoed back in full.
func shown(v string) string {
	const limit = 128
	if len(v) > limit {
		return v[:limit] + "..."
	}
	return v
}

// The Base registry messages the service uses; their texts are the registry's.

func msgResourceNotFound(kind, name string) message {
	return message{id: "ResourceNotFound", text: fmt.Sprintf("The requested resource of type %s named '%s' was not found.", kind, shown(name)),
		args: []string{kind, shown(name)}, severity: "Critical", resolution: "Provide a valid resource identifier and resubmit the request."}
}

func msgNoValidSession() message {
	return message{id: "NoValidSession", text: "There is no valid session established with the implementation.",
		severity: "Critical", resolution: "Establish a session before attempting any operations."}
}

func msgOperationNotAllowed() message {
	return message{id: "OperationNotAllowed", text: "The HTTP method is not allowed on this resource.", severity: "Critical", resolution: "None."}
}

func msgMalformedJSON() message {
	return message{id: "MalformedJSON", text: "The request body submitted was malformed JSON and could not be parsed by the receiving service.",
		severity: "Critical", resolution: "Ensure that the request body is valid JSON and resubmit the request."}
}

func msgUnrecognizedRequestBody() message {
	return message{id: "UnrecognizedRequestBody", text: "The service detected a malformed request body that it was unable to interpret.",
		severity: "Warning", resolution: "Correct the request body and resubmit the request if it failed."}
}

func msgPayloadTooLarge() message {
	return message{id: "PayloadTooLarge", text: "The supplied payload exceeds the maximum size supported by the service.",
		severity: "Critical", resolution: "Check that the supplied payload is correct and supported by this service."}
}

func msgHeaderInvalid(header string) message {
	return message{id: "HeaderInvalid", text: fmt.Sprintf("Header '%s' is invalid.", header), args: []string{header},
		severity: "Critical", resolution: "Resubmit the request with a valid request header."}
}

func msgEmptyJSON() message {
	return message{id: "EmptyJSON", text: "The request body submitted contained an empty JSON object and the service is unable to process it.",
		severity: "Warning", resolution: "Add properties in the JSON object and resubmit the request."}
}

func msgPropertyMissing(prop string) message {
	return message{id: "PropertyMissing", text: fmt.Sprintf("The property %s is a required property and must be included in the request.", prop),
		args: []string{prop}, related: []string{jsonPointer(prop)}, severity: "Warning",
		resolution: "Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed."}
}

func msgPropertyValueConflict(prop, other string) message {
	return message{id: "PropertyValueConflict",
		text: fmt.Sprintf("The property '%s' could not be written because its value would conflict with the value of the '%s' property.", prop, other),
		args: []string{prop, other}, related: []string{jsonPointer(prop)}, severity: "Warning", resolution: "No resolution is required."}
}

func msgPropertyValueNotInList(value string, path ...string) message {
	prop := path[len(path)-1]
	return message{id: "PropertyValueNotInList", text: fmt.Sprintf("The value '%s' for the property %s is not in the list of acceptable values.", shown(value), prop),
		args: []string{shown(value), prop}, related: []string{jsonPointer(path...)}, severity: "Warning",
		resolution: "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed."}
}

func msgPropertyValueTypeError(value string, path ...string) message {
	prop := path[len(path)-1]
	return message{id: "PropertyValueTypeError",
		text: fmt.Sprintf("The value '%s' for the property %s is of a different type than the property can accept.", shown(value), prop),
		args: []string{shown(value), prop}, related: []string{jsonPointer(path...)}, severity: "Warning",
		resolution: "Correct the value for the property in the request body and resubmit the request if the operation failed."}
}

func msgPropertyUnknown(path ...string) message {
	prop := path[len(path)-1]
	return message{id: "PropertyUnknown", text: fmt.Sprintf("The property %s is not in the list of valid properties for the resource.", shown(prop)),
		args: []string{shown(prop)}, related: []string{jsonPointer(path...)}, severity: "Warning",
		resolution: "Remove the unknown property from the request body and resubmit the request if the operation failed."}
}

func msgPropertyNotWritable(path ...string) message {
	prop := path[len(path)-1]
	return message{id: "PropertyNotWritable", text: fmt.Sprintf("The property %s is a read only property and cannot be assigned a value.", shown(prop)),
		args: []string{shown(prop)}, related: []string{jsonPointer(path...)}, severity: "Warning",
		resolution: "Remove the property from the request body and resubmit the request if the operation failed."}
}

func msgPropertyValueFormatError(value string, path ...string) message {
	prop := path[len(path)-1]
	return message{id: "PropertyValueFormatError",
		text: fmt.Sprintf("The value '%s' for the property %s is of a different format than the property can accept.", shown(value), prop),
		args: []string{shown(value), prop}, related: []string{jsonPointer(path...)}, severity: "Warning",
		resolution: "Correct the value for the property in the request body and resubmit the request if the operation failed."}
}

func msgActionParameterMissing(action, param string) message {
	return message{id: "ActionParameterMissing", text: fmt.Sprintf("The action %s requires the parameter %s to be present in the request body.", action, param),
		args: []string{action, param}, related: []string{jsonPointer(param)}, severity: "Critical",
		resolution: "Supply the action with the required parameter in the request body when the request is resubmitted."}
}

func msgActionParameterUnknown(action, param string) message {
	return message{id: "ActionParameterUnknown", text: fmt.Sprintf("The action %s was submitted with the invalid parameter %s.", action, shown(param)),
		args: []string{action, shown(param)}, related: []string{jsonPointer(shown(param))}, severity: "Warning",
		resolution: "Correct the invalid action parameter and resubmit the request if the operation failed."}
}

func msgActionParameterNotSupported(param, action string) message {
	return message{id: "ActionParameterNotSupported", text: fmt.Sprintf("The parameter %s for the action %s is not supported on the target resource.", param, action),
		args: []string{param, action}, related: []string{jsonPointer(param)}, severity: "Warning",
		resolution: "Remove the parameter supplied and resubmit the request if the operation failed."}
}

func msgActionParameterValueNotInList(value, param, action string) message {
	return message{id: "ActionParameterValueNotInList",
		text: fmt.Sprintf("The value '%s' for the parameter %s in the action %s is not in the list of acceptable values.", shown(value), param, action),
		args: []string{shown(value), param, action}, related: []string{jsonPointer(param)}, severity: "Warning",
		resolution: "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed."}
}

func msgActionParameterValueTypeError(value, param, action string) message {
	return message{id: "ActionParameterValueTypeError",
		text: fmt.Sprintf("The value '%s' for the parameter %s in the action %s is of a different type than the parameter can accept.", shown(value), param, action),
		args: []string{shown(value), param, action}, related: []string{jsonPointer(param)}, severity: "Warning",
		resolution: "Correct the value for the parameter in the request body and resubmit the request if the operation failed."}
}

func msgActionParameterValueFormatError(value, param, action string) message {
	return message{id: "ActionParameterValueFormatError",
		text: fmt.Sprintf("The value '%s' for the parameter %s in the action %s is of a different format than the parameter can accept.", shown(value), param, action),
		args: []string{shown(value), param, action}, related: []string{jsonPointer(param)}, severity: "Warning",
		resolution: "Correct the value for the parameter in the request body and resubmit the request if the operation failed."}
}

func msgResourceInUse() message {
	return message{id: "ResourceInUse", text: "The change to the requested resource failed because the resource is in use or in transition.",
		severity: "Warning", resolution: "Remove the condition and resubmit the request if the operation failed."}
}

// msgGeneralError carries a Backend's BadRequestError: its text is the resolution, as the
// registry asks of GeneralError in @Message.ExtendedInfo.
func msgGeneralError(text string) message {
	return message{id: "GeneralError", text: text, severity: "Critical", resolution: text}
}

func msgInternalError() message {
	return message{id: "InternalError", text: "The request failed due to an internal service error.  The service is still operational.",
		severity: "Critical", resolution: "Resubmit the request.  If the problem persists, consider resetting the service."}
}
