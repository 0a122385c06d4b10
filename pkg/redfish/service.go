package redfish

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/go-logr/logr"
)

// Service is an http.Handler that serves Redfish over a Backend (see the package documentation
// for the resources). The zero value is not usable: Backend must be set.
type Service struct {
	// Backend is the datacenter the service drives.
	Backend Backend
	// UUID is the service root's UUID; empty means a fixed one.
	UUID string
	// Log receives server-side errors (a Backend error that became a 500) and, at V(1), every
	// change a client made. The zero Logger discards.
	Log logr.Logger
}

// Paths and names the resources use.
const (
	root         = "/redfish/v1"
	systemsPath  = root + "/Systems"
	managersPath = root + "/Managers"
	sessionsPath = root + "/SessionService/Sessions"
	sessionSvc   = root + "/SessionService"
	realm        = `Basic realm="Stargate BMC", charset="UTF-8"`
	mediaID      = "Cd"
	resetAction  = "ComputerSystem.Reset"
	insertAction = "VirtualMedia.InsertMedia"
	ejectAction  = "VirtualMedia.EjectMedia"
	defaultUUID  = "2a7e5f3c-0b1d-5e4f-9a6b-5374617267e1"
	redfishVer   = "1.11.0"
	maxImageURL  = 2048
	nicIDPrefix  = "nic"
	kindSystem   = "ComputerSystem"
	kindManager  = "Manager"
	kindResource = "Resource"
	contentType  = "application/json; charset=utf-8"
)

// segmentPattern is what a URL path segment may be: ids (see ValidID) and action names such as
// "ComputerSystem.Reset". Anything else — "..", percent-escapes, empty segments — is a 404.
var segmentPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// request is one request being served: who asked, on which system, and how to answer.
type request struct {
	w    http.ResponseWriter
	r    *http.Request
	ctx  context.Context
	user string
	// id is the System (and Manager) the path names; empty on service-wide resources.
	id string
	// base is the path of the resource the sub-path hangs off: a System or a Manager.
	base string
}

// endpoint is a resource: what each method does on it. A nil func is a method the resource does
// not allow.
type endpoint struct {
	get   func(*Service, *request) (any, error)
	patch func(*Service, *request) error
	post  func(*Service, *request) error
}

// handles reports whether the resource allows the method.
func (e endpoint) handles(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead:
		return e.get != nil
	case http.MethodPatch:
		return e.patch != nil
	case http.MethodPost:
		return e.post != nil
	}
	return false
}

// allow is the resource's Allow header.
func (e endpoint) allow() string {
	methods := []string{}
	if e.get != nil {
		methods = append(methods, "GET", "HEAD")
	}
	if e.patch != nil {
		methods = append(methods, "PATCH")
	}
	if e.post != nil {
		methods = append(methods, "POST")
	}
	return strings.Join(methods, ", ")
}

// ServeHTTP serves one Redfish request.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("OData-Version", "4.0")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	req := &request{w: w, r: r, ctx: r.Context()}

	segs, ok := splitPath(r.URL.EscapedPath())
	if !ok {
		s.fail(req, errorf(http.StatusNotFound, msgResourceNotFound(kindResource, r.URL.EscapedPath())))
		return
	}
	switch {
	case len(segs) == 1 && segs[0] == "redfish":
		s.serve(req, endpoint{get: func(*Service, *request) (any, error) { return map[string]string{"v1": root + "/"}, nil }})
	case len(segs) < 2 || segs[0] != "redfish" || segs[1] != "v1":
		s.fail(req, errorf(http.StatusNotFound, msgResourceNotFound(kindResource, r.URL.EscapedPath())))
	case len(segs) == 2:
		// The service root is the one resource served without credentials, as on real BMCs.
		s.serve(req, endpoint{get: (*Service).getRoot})
	default:
		s.route(req, segs[2:])
	}
}

// splitPath splits an escaped URL path into its segments, dropping one trailing slash. It refuses
// (ok false) any path with a segment that segmentPattern does not accept, so that no escaped
// slash, dot-segment or empty segment reaches the routes.
func splitPath(p string) (segs []string, ok bool) {
	if !strings.HasPrefix(p, "/") {
		return nil, false
	}
	p = strings.TrimSuffix(p[1:], "/")
	if p == "" {
		return nil, true
	}
	segs = strings.Split(p, "/")
	for _, seg := range segs {
		if !segmentPattern.MatchString(seg) {
			return nil, false
		}
	}
	return segs, true
}

// route serves the resources below /redfish/v1.
func (s *Service) route(req *request, segs []string) {
	notFound := errorf(http.StatusNotFound, msgResourceNotFound(kindResource, req.r.URL.EscapedPath()))
	switch segs[0] {
	case "Systems", "Managers":
		if len(segs) == 1 {
			get := (*Service).getSystems
			if segs[0] == "Managers" {
				get = (*Service).getManagers
			}
			s.serveAny(req, endpoint{get: get})
			return
		}
		id := segs[1]
		kind := kindSystem
		if segs[0] == "Managers" {
			kind = kindManager
		}
		if !ValidID(id) {
			s.fail(req, errorf(http.StatusNotFound, msgResourceNotFound(kind, id)))
			return
		}
		if !s.authorize(req, id) {
			return
		}
		req.id = id
		req.base = root + "/" + segs[0] + "/" + id
		if !s.admit(req) {
			return
		}
		var ep endpoint
		var found bool
		if kind == kindSystem {
			ep, found = systemEndpoint(segs[2:])
		} else {
			ep, found = managerEndpoint(segs[2:])
		}
		if !found {
			s.fail(req, notFound)
			return
		}
		s.serve(req, ep)
	case "SessionService":
		var ep endpoint
		switch {
		case len(segs) == 1:
			ep = endpoint{get: (*Service).getSessionService}
		case len(segs) == 2 && segs[1] == "Sessions":
			// Sessions are not offered: clients (sushy's default "auto" authentication among them)
			// see their POST refused with 405 and fall back to basic auth.
			ep = endpoint{get: (*Service).getSessions}
		default:
			s.fail(req, notFound)
			return
		}
		s.serveAny(req, ep)
	default:
		s.fail(req, notFound)
	}
}

// systemEndpoint finds the resource at rest below a System.
func systemEndpoint(rest []string) (endpoint, bool) {
	switch {
	case len(rest) == 0:
		return endpoint{get: (*Service).getSystem, patch: (*Service).patchSystem}, true
	case len(rest) == 2 && rest[0] == "Actions" && rest[1] == resetAction:
		return endpoint{post: (*Service).postReset}, true
	case len(rest) == 1 && rest[0] == "EthernetInterfaces":
		return endpoint{get: (*Service).getNICs}, true
	case len(rest) == 2 && rest[0] == "EthernetInterfaces":
		nic := rest[1]
		return endpoint{get: func(s *Service, req *request) (any, error) { return s.getNIC(req, nic) }}, true
	case len(rest) >= 1 && rest[0] == "VirtualMedia":
		return mediaEndpoint(rest[1:])
	}
	return endpoint{}, false
}

// managerEndpoint finds the resource at rest below a Manager.
func managerEndpoint(rest []string) (endpoint, bool) {
	switch {
	case len(rest) == 0:
		return endpoint{get: (*Service).getManager}, true
	case len(rest) >= 1 && rest[0] == "VirtualMedia":
		return mediaEndpoint(rest[1:])
	}
	return endpoint{}, false
}

// mediaEndpoint finds the resource at rest below a VirtualMedia collection (of a System or a
// Manager: both serve the same drive).
func mediaEndpoint(rest []string) (endpoint, bool) {
	switch {
	case len(rest) == 0:
		return endpoint{get: (*Service).getMediaCollection}, true
	case rest[0] != mediaID:
		return endpoint{}, false
	case len(rest) == 1:
		return endpoint{get: (*Service).getMedia, patch: (*Service).patchMedia}, true
	case len(rest) == 3 && rest[1] == "Actions" && rest[2] == insertAction:
		return endpoint{post: (*Service).postInsertMedia}, true
	case len(rest) == 3 && rest[1] == "Actions" && rest[2] == ejectAction:
		return endpoint{post: (*Service).postEjectMedia}, true
	}
	return endpoint{}, false
}

// serve runs the endpoint's handler for the request's method.
func (s *Service) serve(req *request, ep endpoint) {
	var err error
	switch m := req.r.Method; {
	case !ep.handles(m):
		req.w.Header().Set("Allow", ep.allow())
		err = errorf(http.StatusMethodNotAllowed, msgOperationNotAllowed())
	case m == http.MethodPatch:
		err = ep.patch(s, req)
	case m == http.MethodPost:
		err = ep.post(s, req)
	default:
		var body any
		if body, err = ep.get(s, req); err == nil {
			writeJSON(req.w, http.StatusOK, body)
			return
		}
	}
	if err != nil {
		s.fail(req, err)
		return
	}
	req.w.WriteHeader(http.StatusNoContent)
}

// serveAny serves a service-wide resource: one anyone with credentials for some system may read.
// A method it does not allow is refused before credentials are checked, as a client logging in
// (POST to Sessions) sends none.
func (s *Service) serveAny(req *request, ep endpoint) {
	if !ep.handles(req.r.Method) {
		s.serve(req, ep) // answers 405
		return
	}
	if s.authorizeAny(req) {
		s.serve(req, ep)
	}
}

// authorize checks the request's basic-auth credentials against the system's; without valid
// ones it answers 401 and reports false.
func (s *Service) authorize(req *request, id string) bool {
	user, password, ok := req.r.BasicAuth()
	if ok && user != "" && s.Backend.Authorize(req.ctx, id, user, password) {
		req.user = user
		return true
	}
	s.unauthorized(req)
	return false
}

// authorizeAny lets a request through to a service-wide resource when its credentials are valid
// for at least one system; otherwise it answers 401 and reports false.
func (s *Service) authorizeAny(req *request) bool {
	user, password, ok := req.r.BasicAuth()
	if ok && user != "" {
		ids, err := s.Backend.Systems(req.ctx)
		if err != nil {
			s.fail(req, err)
			return false
		}
		for _, id := range ids {
			if ValidID(id) && s.Backend.Authorize(req.ctx, id, user, password) {
				req.user = user
				return true
			}
		}
	}
	s.unauthorized(req)
	return false
}

func (s *Service) unauthorized(req *request) {
	req.w.Header().Set("WWW-Authenticate", realm)
	s.fail(req, errorf(http.StatusUnauthorized, msgNoValidSession()))
}

// authorizedIDs returns the ids of the systems the request's credentials may act on, in the
// Backend's order.
func (s *Service) authorizedIDs(req *request) ([]string, error) {
	user, password, _ := req.r.BasicAuth()
	all, err := s.Backend.Systems(req.ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(all))
	for _, id := range all {
		if ValidID(id) && s.Backend.Authorize(req.ctx, id, user, password) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// fail answers the request with err: an *apiError as it is, a Backend's error mapped to its
// Redfish status, anything else as a 500 whose cause is logged, not sent.
func (s *Service) fail(req *request, err error) {
	var api *apiError
	var bad *BadRequestError
	var svc *ServiceError
	switch {
	case errors.As(err, &api):
	case errors.As(err, &svc):
		api = svc.apiError()
	case errors.As(err, &bad):
		api = errorf(http.StatusBadRequest, msgGeneralError(bad.Message))
	case errors.Is(err, ErrNotFound):
		api = errorf(http.StatusNotFound, msgResourceNotFound(kindSystem, req.id))
	case errors.Is(err, ErrConflict):
		api = errorf(http.StatusConflict, msgResourceInUse())
	default:
		s.Log.Error(err, "Redfish request failed", "method", req.r.Method, "path", req.r.URL.EscapedPath(), "user", req.user)
		api = errorf(http.StatusInternalServerError, msgInternalError())
	}
	if api.retryAfter != "" {
		req.w.Header().Set("Retry-After", api.retryAfter)
	}
	writeJSON(req.w, api.status, api.body())
}

// system loads the request's system from the Backend.
func (s *Service) system(req *request) (System, error) {
	sys, err := s.Backend.System(req.ctx, req.id)
	if err != nil {
		return System{}, err
	}
	if sys.ID != req.id {
		return System{}, fmt.Errorf("backend returned system %q for %q", sys.ID, req.id)
	}
	return sys, nil
}

// derivedUUID makes a stable UUID (version 5 layout) from a name, for resources that have no UUID
// of their own, such as a system's Manager.
func derivedUUID(name string) string {
	sum := sha256.Sum256([]byte("stargate.io/redfish:" + name))
	sum[6] = sum[6]&0x0f | 0x50
	sum[8] = sum[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
}
