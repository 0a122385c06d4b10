package redfish

import (
	"net/http"
	"net/url"
	"path"
	"strings"
)

func (s *Service) getMediaCollection(req *request) (any, error) {
	if _, err := s.system(req); err != nil {
		return nil, err
	}
	return newCollection(req.base+"/VirtualMedia", "VirtualMediaCollection", "Virtual Media Collection", []string{req.base + "/VirtualMedia/" + mediaID}), nil
}

func (s *Service) getMedia(req *request) (any, error) {
	sys, err := s.system(req)
	if err != nil {
		return nil, err
	}
	m := sys.Media
	self := req.base + "/VirtualMedia/" + mediaID
	var image, imageName any
	connected := "NotConnected"
	if m.Image != "" {
		image, imageName = m.Image, imageNameOf(m.Image)
	}
	if m.Inserted {
		connected = "URI"
	}
	return map[string]any{
		"@odata.id":      self,
		"@odata.type":    "#VirtualMedia.v1_3_0.VirtualMedia",
		"Id":             mediaID,
		"Name":           "Virtual CD",
		"MediaTypes":     []string{"CD", "DVD"},
		"Image":          image,
		"ImageName":      imageName,
		"Inserted":       m.Inserted,
		"WriteProtected": m.WriteProtected || !m.Inserted,
		"ConnectedVia":   connected,
		"TransferMethod": "Stream",
		"Actions": map[string]any{
			"#" + insertAction: map[string]string{"target": self + "/Actions/" + insertAction},
			"#" + ejectAction:  map[string]string{"target": self + "/Actions/" + ejectAction},
		},
	}, nil
}

// imageNameOf is the file name an image URL ends in.
func imageNameOf(imageURL string) string {
	u, err := url.Parse(imageURL)
	if err != nil {
		return ""
	}
	if name := path.Base(u.Path); name != "/" && name != "." {
		return name
	}
	return ""
}

// checkImageURL reports whether an image URL a client sent may be inserted, and its scheme: it
// must be an absolute http or https URL of at most maxImageURL bytes, without
// credentials (they would be shown back in Image) and without spaces or control characters.
func checkImageURL(v string) (scheme string, ok bool) {
	if len(v) > maxImageURL || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", false
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Opaque != "" {
		return "", false
	}
	return u.Scheme, true
}

// postInsertMedia serves InsertMedia. Of its parameters, those the Backend does not take must have
// the values it implies: Inserted and WriteProtected true, TransferProtocolType the URL's scheme,
// TransferMethod Stream, no credentials.
func (s *Service) postInsertMedia(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	raw, ok := body["Image"]
	if !ok {
		return errorf(http.StatusBadRequest, msgActionParameterMissing(insertAction, "Image"))
	}
	image, ok := jsonString(raw)
	if !ok {
		return errorf(http.StatusBadRequest, msgActionParameterValueTypeError(text(raw), "Image", insertAction))
	}
	scheme, ok := checkImageURL(image)
	if !ok {
		m := msgActionParameterValueFormatError(image, "Image", insertAction)
		m.resolution = "Give an absolute http:// or https:// URL without credentials and resubmit the request."
		return errorf(http.StatusBadRequest, m)
	}
	for _, k := range body.keys() {
		v := body[k]
		switch k {
		case "Image":
		case "Inserted", "WriteProtected":
			// A virtual CD is read-only and an image is inserted as it is attached.
			b, ok := jsonBool(v)
			if !ok {
				return errorf(http.StatusBadRequest, msgActionParameterValueTypeError(text(v), k, insertAction))
			}
			if !b {
				return errorf(http.StatusBadRequest, msgActionParameterValueNotInList("false", k, insertAction))
			}
		case "TransferProtocolType":
			if p, ok := jsonString(v); !ok || p != strings.ToUpper(scheme) {
				return errorf(http.StatusBadRequest, msgActionParameterValueNotInList(text(v), k, insertAction))
			}
		case "TransferMethod":
			if m, ok := jsonString(v); !ok || m != "Stream" {
				return errorf(http.StatusBadRequest, msgActionParameterValueNotInList(text(v), k, insertAction))
			}
		case "UserName", "Password":
			// Credentials for the image server are not supported; empty ones are harmless.
			if str, ok := jsonString(v); (!ok || str != "") && !isNull(v) {
				return errorf(http.StatusBadRequest, msgActionParameterNotSupported(k, insertAction))
			}
		default:
			return errorf(http.StatusBadRequest, msgActionParameterUnknown(insertAction, k))
		}
	}
	return s.insert(req, image)
}

func (s *Service) insert(req *request, image string) error {
	if err := s.Backend.InsertMedia(req.ctx, req.id, image, req.user); err != nil {
		return err
	}
	s.Log.V(1).Info("Redfish virtual media inserted", "system", req.id, "user", req.user, "image", image)
	return nil
}

func (s *Service) eject(req *request) error {
	if err := s.Backend.EjectMedia(req.ctx, req.id, req.user); err != nil {
		return err
	}
	s.Log.V(1).Info("Redfish virtual media ejected", "system", req.id, "user", req.user)
	return nil
}

func (s *Service) postEjectMedia(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	if len(body) > 0 {
		return errorf(http.StatusBadRequest, msgActionParameterUnknown(ejectAction, body.keys()[0]))
	}
	return s.eject(req)
}

// patchMedia is the other way some clients attach media: a PATCH of Image (with Inserted and
// WriteProtected true) inserts it, a PATCH of Image to null or "" (or Inserted to false) ejects.
func (s *Service) patchMedia(req *request) error {
	body, err := readBody(req)
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return errorf(http.StatusBadRequest, msgEmptyJSON())
	}
	var image string
	var eject bool
	if raw, ok := body["Image"]; ok {
		if v, ok := jsonString(raw); ok {
			image = v
		} else if !isNull(raw) {
			return errorf(http.StatusBadRequest, msgPropertyValueTypeError(text(raw), "Image"))
		}
		eject = image == ""
	}
	var msgs []message
	for _, k := range body.keys() {
		v := body[k]
		switch k {
		case "Image":
			if _, ok := checkImageURL(image); !eject && !ok {
				msgs = append(msgs, msgPropertyValueFormatError(image, "Image"))
			}
		case "Inserted", "WriteProtected":
			b, ok := jsonBool(v)
			switch {
			case !ok:
				msgs = append(msgs, msgPropertyValueTypeError(text(v), k))
			case k == "Inserted" && !b:
				if image != "" {
					msgs = append(msgs, msgPropertyValueConflict("Inserted", "Image"))
				}
				eject = true
			case k == "Inserted" && b && eject:
				msgs = append(msgs, msgPropertyValueConflict("Inserted", "Image"))
			case k == "WriteProtected" && !b && !eject:
				msgs = append(msgs, msgPropertyValueNotInList("false", k))
			}
		case "Id", "Name", "MediaTypes", "ImageName", "ConnectedVia", "TransferMethod", "Actions", "@odata.id", "@odata.type":
			msgs = append(msgs, msgPropertyNotWritable(k))
		default:
			msgs = append(msgs, msgPropertyUnknown(k))
		}
	}
	switch {
	case len(msgs) > 0:
		return &apiError{status: http.StatusBadRequest, msgs: msgs}
	case eject:
		return s.eject(req)
	case image == "":
		return errorf(http.StatusBadRequest, msgPropertyMissing("Image"))
	}
	return s.insert(req, image)
}
