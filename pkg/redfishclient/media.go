package redfishclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Media is a virtual media slot that takes a CD or DVD, as the BMC shows it.
type Media struct {
	// Path is the slot's resource path.
	Path       string
	MediaTypes []string
	// Image is the URL of the inserted image, as the BMC shows it ("" when none).
	Image    string
	Inserted bool
}

// mediaResource is the part of a VirtualMedia resource the client uses.
type mediaResource struct {
	MediaTypes []string           `json:"MediaTypes"`
	Image      *string            `json:"Image"`
	Inserted   *bool              `json:"Inserted"`
	Actions    map[string]rawJSON `json:"Actions"`
}

// managerResource is the part of a Manager the client uses.
type managerResource struct {
	VirtualMedia *link `json:"VirtualMedia"`
	Links        struct {
		ManagerForServers []link `json:"ManagerForServers"`
	} `json:"Links"`
}

// Names of the virtual media actions.
const (
	insertAction = "VirtualMedia.InsertMedia"
	ejectAction  = "VirtualMedia.EjectMedia"
)

// maxImageURL bounds the image URL InsertMedia sends.
const maxImageURL = 2048

// slot is a virtual media slot found, with what InsertMedia and EjectMedia need of it.
type slot struct {
	Media
	res  mediaResource
	etag string
}

// inserted reports whether the slot holds media (by Inserted, or an Image where a BMC does not
// say Inserted).
func (s slot) inserted() bool {
	if s.res.Inserted != nil {
		return *s.res.Inserted
	}
	return s.Image != ""
}

// VirtualMedia returns the slot InsertMedia uses: the first whose MediaTypes include CD or DVD,
// looked for under the System and then under its Managers (Links.ManagedBy, or the Managers
// that do not say they serve only other Systems), as BMCs keep it in either place.
func (s *System) VirtualMedia(ctx context.Context) (Media, error) {
	sl, err := s.cdSlot(ctx)
	return sl.Media, err
}

// cdSlot finds the CD slot (see VirtualMedia).
func (s *System) cdSlot(ctx context.Context) (slot, error) {
	collections, err := s.mediaCollections(ctx)
	if err != nil {
		return slot{}, err
	}
	var seen []string
	visited := map[string]bool{}
	for _, cp := range collections {
		var coll collection
		if _, err := s.c.get(ctx, cp, &coll); err != nil {
			var he *HTTPError
			if errors.As(err, &he) && he.StatusCode == http.StatusNotFound {
				seen = append(seen, cp+" (404)")
				continue // a link to nothing: some BMCs show the System's even when the Manager has it
			}
			return slot{}, fmt.Errorf("listing virtual media: %w", err)
		}
		members, err := coll.members()
		if err != nil {
			return slot{}, fmt.Errorf("listing virtual media: %w", err)
		}
		for _, mp := range members {
			if visited[mp] {
				continue
			}
			visited[mp] = true
			sl, err := s.c.readSlot(ctx, mp)
			var he *HTTPError
			switch {
			case errors.As(err, &he) && he.StatusCode >= 400 && he.StatusCode < 500:
				// Some BMCs list slots they then refuse to show (a license missing, a disabled
				// USB slot): another slot may still serve.
				seen = append(seen, fmt.Sprintf("%s (%d)", mp, he.StatusCode))
				continue
			case err != nil:
				return slot{}, err
			}
			if slices.ContainsFunc(sl.MediaTypes, func(t string) bool { return t == "CD" || t == "DVD" }) {
				return sl, nil
			}
			seen = append(seen, fmt.Sprintf("%s [%s]", mp, strings.Join(sl.MediaTypes, " ")))
		}
	}
	if len(seen) == 0 {
		return slot{}, errors.New("the BMC shows no virtual media under the system or its managers")
	}
	return slot{}, fmt.Errorf("no virtual media slot takes a CD or DVD (found: %s)", strings.Join(seen, ", "))
}

// mediaCollections returns the paths of the VirtualMedia collections that may hold the System's
// virtual CD: the System's own, then its Managers'.
func (s *System) mediaCollections(ctx context.Context) ([]string, error) {
	sys, err := s.c.readSystem(ctx, s.Path)
	if err != nil {
		return nil, err
	}
	var out []string
	if sys.VirtualMedia != nil {
		p, err := resourcePath(sys.VirtualMedia.ID)
		if err != nil {
			return nil, fmt.Errorf("system VirtualMedia: %w", err)
		}
		out = append(out, p)
	}
	managers, filter, err := s.managers(ctx, sys)
	if err != nil {
		return nil, err
	}
	for _, mp := range managers {
		var m managerResource
		if _, err := s.c.get(ctx, mp, &m); err != nil {
			return nil, fmt.Errorf("reading manager: %w", err)
		}
		if filter && len(m.Links.ManagerForServers) > 0 && !slices.ContainsFunc(m.Links.ManagerForServers, func(l link) bool {
			p, err := resourcePath(l.ID)
			return err == nil && p == s.Path
		}) {
			continue // another System's manager
		}
		if m.VirtualMedia == nil {
			continue
		}
		p, err := resourcePath(m.VirtualMedia.ID)
		if err != nil {
			return nil, fmt.Errorf("manager VirtualMedia: %w", err)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// managers returns the paths of the System's Managers: its Links.ManagedBy, or else every
// Manager of the BMC (filter true: the caller keeps those that do not name other Systems only).
func (s *System) managers(ctx context.Context, sys systemResource) (paths []string, filter bool, err error) {
	if len(sys.Links.ManagedBy) > 0 {
		for i, l := range sys.Links.ManagedBy {
			if i == maxMembers {
				break
			}
			p, err := resourcePath(l.ID)
			if err != nil {
				return nil, false, fmt.Errorf("system ManagedBy: %w", err)
			}
			paths = append(paths, p)
		}
		return paths, false, nil
	}
	r, err := s.c.root(ctx)
	if err != nil {
		return nil, false, err
	}
	if r.Managers == nil {
		return nil, false, nil
	}
	mp, err := resourcePath(r.Managers.ID)
	if err != nil {
		return nil, false, fmt.Errorf("service root Managers: %w", err)
	}
	var coll collection
	if _, err := s.c.get(ctx, mp, &coll); err != nil {
		return nil, false, fmt.Errorf("listing managers: %w", err)
	}
	paths, err = coll.members()
	if err != nil {
		return nil, false, fmt.Errorf("listing managers: %w", err)
	}
	return paths, true, nil
}

// readSlot reads a VirtualMedia resource.
func (c *Client) readSlot(ctx context.Context, path string) (slot, error) {
	var res mediaResource
	etag, err := c.get(ctx, path, &res)
	if err != nil {
		return slot{}, fmt.Errorf("reading virtual media: %w", err)
	}
	sl := slot{Media: Media{Path: path, MediaTypes: cleanAll(res.MediaTypes)}, res: res, etag: etag}
	if res.Image != nil {
		sl.Image = clean(*res.Image)
	}
	sl.Inserted = sl.inserted()
	return sl, nil
}

// InsertMedia makes imageURL the System's virtual CD. Media already in the slot is ejected first
// (many BMCs refuse to replace it), unless it is imageURL already. It uses the InsertMedia
// action with only the parameters the slot advertises (its ActionInfo or its inline
// AllowableValues): Image always; Inserted, WriteProtected and TransferProtocolType only when
// advertised, as some BMCs refuse parameters they do not know. A BMC that advertises nothing
// gets Image alone, and TransferProtocolType too if it answers that it misses it. A slot without
// the action gets a PATCH of Image and Inserted, with its ETag.
func (s *System) InsertMedia(ctx context.Context, imageURL string) error {
	scheme, err := checkImageURL(imageURL)
	if err != nil {
		return err
	}
	sl, err := s.cdSlot(ctx)
	if err != nil {
		return fmt.Errorf("insert media: %w", err)
	}
	if sl.inserted() {
		if sl.Image == imageURL && sl.res.Inserted != nil && *sl.res.Inserted {
			return nil
		}
		if err := s.c.eject(ctx, sl); err != nil {
			return fmt.Errorf("insert media: ejecting what %s holds first: %w", sl.Path, err)
		}
		if sl, err = s.c.readSlot(ctx, sl.Path); err != nil { // a fresh ETag
			return fmt.Errorf("insert media: %w", err)
		}
	}
	if err := s.c.insert(ctx, sl, imageURL, scheme); err != nil {
		// A retried request may fail only because its first try, whose answer was lost, did it.
		if now, rerr := s.c.readSlot(ctx, sl.Path); rerr == nil && now.Image == imageURL && now.res.Inserted != nil && *now.res.Inserted {
			return nil
		}
		return fmt.Errorf("insert media into %s: %w", sl.Path, err)
	}
	return nil
}

// EjectMedia empties the System's virtual CD; an empty one is left as it is.
func (s *System) EjectMedia(ctx context.Context) error {
	sl, err := s.cdSlot(ctx)
	if err != nil {
		return fmt.Errorf("eject media: %w", err)
	}
	if !sl.inserted() {
		return nil
	}
	if err := s.c.eject(ctx, sl); err != nil {
		if now, rerr := s.c.readSlot(ctx, sl.Path); rerr == nil && !now.inserted() {
			return nil // done by a try whose answer was lost
		}
		return fmt.Errorf("eject media from %s: %w", sl.Path, err)
	}
	return nil
}

// checkImageURL checks the image URL to send and returns its scheme in capitals (a
// TransferProtocolType): an absolute http or https URL without credentials, spaces or control
// characters, of at most maxImageURL bytes.
func checkImageURL(v string) (string, error) {
	if len(v) > maxImageURL || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", errors.New("insert media: the image URL is too long or holds spaces or control characters")
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Opaque != "" {
		return "", errors.New("insert media: the image URL must be an absolute http or https URL without credentials")
	}
	return strings.ToUpper(u.Scheme), nil
}

// insert inserts imageURL into the slot (see InsertMedia).
func (c *Client) insert(ctx context.Context, sl slot, imageURL, scheme string) error {
	a, ok, err := parseAction(sl.res.Actions, insertAction)
	if err != nil {
		return err
	}
	if !ok {
		// Older BMCs (and the spec before VirtualMedia 1.2): PATCH the slot.
		return c.patch(ctx, sl.Path, map[string]any{"Image": imageURL, "Inserted": true, "WriteProtected": true}, sl.etag)
	}
	params, advertised, err := c.insertParams(ctx, a)
	if err != nil {
		return err
	}
	body := map[string]any{"Image": imageURL}
	for name, p := range params {
		var value any
		switch name {
		case "Image":
			continue
		case "Inserted", "WriteProtected":
			value = true
		case "TransferProtocolType":
			value = scheme
		case "TransferMethod":
			if !p.required {
				continue // Stream is the default; some BMCs refuse it named
			}
			value = "Stream"
		default:
			if p.required {
				return fmt.Errorf("the BMC requires InsertMedia parameter %s, which this client does not send", name)
			}
			continue
		}
		if s, isString := value.(string); isString && len(p.allowed) > 0 && !slices.Contains(p.allowed, s) {
			return notAllowedError("InsertMedia "+name, s, p.allowed)
		}
		body[name] = value
	}
	err = c.post(ctx, a.Target, body)
	var he *HTTPError
	if err != nil && !advertised && errors.As(err, &he) && he.StatusCode == http.StatusBadRequest && he.mentions("TransferProtocolType") {
		// A BMC that requires TransferProtocolType without saying so beforehand.
		body["TransferProtocolType"] = scheme
		err = c.post(ctx, a.Target, body)
	}
	return err
}

// insertParam is what a BMC says of one InsertMedia parameter.
type insertParam struct {
	required bool
	allowed  []string
}

// insertParams returns the InsertMedia parameters the action advertises, and whether it
// advertises any at all (through its ActionInfo or inline AllowableValues).
func (c *Client) insertParams(ctx context.Context, a action) (map[string]insertParam, bool, error) {
	params := map[string]insertParam{}
	for name, values := range a.Allowable {
		params[name] = insertParam{allowed: cleanAll(values)}
	}
	if a.ActionInfo != "" {
		info, err := c.actionInfo(ctx, a)
		if err != nil {
			return nil, false, err
		}
		for _, p := range info.Parameters {
			ip := params[p.Name]
			ip.required = ip.required || p.Required
			if len(p.AllowableValues) > 0 {
				ip.allowed = p.AllowableValues
			}
			params[p.Name] = ip
		}
		return params, true, nil
	}
	return params, len(params) > 0, nil
}

// eject empties the slot: the EjectMedia action with an empty object (HPE iLO refuses an empty
// body), or, without the action, a PATCH of Image to null and Inserted to false.
func (c *Client) eject(ctx context.Context, sl slot) error {
	a, ok, err := parseAction(sl.res.Actions, ejectAction)
	if err != nil {
		return err
	}
	if !ok {
		return c.patch(ctx, sl.Path, map[string]any{"Image": nil, "Inserted": false}, sl.etag)
	}
	return c.post(ctx, a.Target, nil)
}
