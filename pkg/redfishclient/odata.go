package redfishclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
)

// rootPath is the Redfish service root.
const rootPath = "/redfish/v1"

// maxMembers bounds how many members of a collection the client looks at.
const maxMembers = 64

// link is a Redfish reference to another resource.
type link struct {
	ID string `json:"@odata.id"`
}

// collection is a Redfish resource collection.
type collection struct {
	Members []link `json:"Members"`
}

// resourcePath checks a path the BMC gave (an @odata.id or an action target) and returns it
// cleaned. Only an absolute path below /redfish/v1 is accepted — never a URL with a host, so a
// BMC cannot send the client, with its credentials, anywhere else.
func resourcePath(p string) (string, error) {
	if len(p) > 1024 {
		return "", fmt.Errorf("the BMC gave a link of %d bytes", len(p))
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || u.RawQuery != "" ||
		!strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\ \t\r\n") {
		return "", fmt.Errorf("the BMC gave a link %q that is not a path on itself", clean(p))
	}
	clean := path.Clean(u.Path)
	if clean != rootPath && !strings.HasPrefix(clean, rootPath+"/") {
		return "", fmt.Errorf("the BMC gave a link %q outside %s", clean, rootPath)
	}
	return clean, nil
}

// members returns the checked paths of a collection's members (at most maxMembers).
func (c collection) members() ([]string, error) {
	var out []string
	for i, m := range c.Members {
		if i == maxMembers {
			break
		}
		p, err := resourcePath(m.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// lastSegment is the last segment of a resource path, unescaped when it can be.
func lastSegment(p string) string {
	s := path.Base(p)
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// actionInfo is a Redfish ActionInfo resource: the parameters an action takes.
type actionInfo struct {
	Parameters []struct {
		Name            string   `json:"Name"`
		Required        bool     `json:"Required"`
		AllowableValues []string `json:"AllowableValues"`
	} `json:"Parameters"`
}

// action is an action as a resource advertises it: its target, and what it says of its
// parameters (inline "<Param>@Redfish.AllowableValues" and/or an @Redfish.ActionInfo link).
type action struct {
	Target     string
	ActionInfo string
	// Allowable holds the inline allowable values, by parameter name.
	Allowable map[string][]string
}

// parseAction reads an action object of a resource's Actions. ok is false when it is absent.
func parseAction(actions map[string]rawJSON, name string) (action, bool, error) {
	raw, ok := actions["#"+name]
	if !ok {
		return action{}, false, nil
	}
	var obj map[string]rawJSON
	if err := decode(raw, &obj); err != nil {
		return action{}, false, fmt.Errorf("action %s: %w", name, err)
	}
	var a action
	if err := unmarshalString(obj["target"], &a.Target); err != nil || a.Target == "" {
		return action{}, false, fmt.Errorf("action %s has no target", name)
	}
	var err error
	if a.Target, err = resourcePath(a.Target); err != nil {
		return action{}, false, fmt.Errorf("action %s: %w", name, err)
	}
	if info, ok := obj["@Redfish.ActionInfo"]; ok {
		if err := unmarshalString(info, &a.ActionInfo); err != nil {
			return action{}, false, fmt.Errorf("action %s: @Redfish.ActionInfo: %w", name, err)
		}
		if a.ActionInfo != "" {
			if a.ActionInfo, err = resourcePath(a.ActionInfo); err != nil {
				return action{}, false, fmt.Errorf("action %s: %w", name, err)
			}
		}
	}
	const suffix = "@Redfish.AllowableValues"
	for k, v := range obj {
		param, found := strings.CutSuffix(k, suffix)
		if !found || param == "" {
			continue
		}
		var values []string
		if err := unmarshalStrings(v, &values); err != nil {
			return action{}, false, fmt.Errorf("action %s: %s: %w", name, k, err)
		}
		if a.Allowable == nil {
			a.Allowable = map[string][]string{}
		}
		a.Allowable[param] = values
	}
	return a, true, nil
}

// rawJSON is a JSON value decoded later.
type rawJSON = json.RawMessage

// unmarshalString decodes a JSON string; null is "".
func unmarshalString(raw rawJSON, s *string) error {
	if raw == nil {
		return errors.New("missing")
	}
	return json.Unmarshal(raw, s)
}

// unmarshalStrings decodes a JSON array of strings (at most maxMembers of them); null is none.
func unmarshalStrings(raw rawJSON, s *[]string) error {
	if err := json.Unmarshal(raw, s); err != nil {
		return err
	}
	if len(*s) > maxMembers {
		return fmt.Errorf("%d values", len(*s))
	}
	for i, v := range *s {
		(*s)[i] = clean(v)
	}
	return nil
}
