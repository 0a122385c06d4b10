package mockdc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"k8s.io/apimachinery/pkg/types"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
)

// statusError is an HTTP error answer of the mock datacenter.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

// Provider drives a mock datacenter over its HTTP API.
type Provider struct {
	// BaseURL of the API, e.g. http://127.0.0.1:8090.
	BaseURL string
	Client  *http.Client
}

var (
	_ controller.Provider      = (*Provider)(nil)
	_ controller.FaultInjector = (*Provider)(nil)
)

// SupportsFault reports the faults the mock datacenter makes real (see supportedFaults).
func (p *Provider) SupportsFault(t stargatev1.FaultType, at string) bool { return SupportsFault(t, at) }

func (p *Provider) url(server types.NamespacedName, action string) string {
	u := p.BaseURL + "/v1/servers/" + url.PathEscape(server.Namespace) + "/" + url.PathEscape(server.Name)
	if action != "" {
		u += "/" + action
	}
	return u
}

func (p *Provider) do(ctx context.Context, method, u string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	c := p.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("mock datacenter %s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &statusError{code: resp.StatusCode, msg: fmt.Sprintf("mock datacenter %s %s: %s: %s", method, u, resp.Status, bytes.TrimSpace(msg))}
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// Repave starts or continues a repave and converts the report.
func (p *Provider) Repave(ctx context.Context, req controller.RepaveRequest) (controller.RepaveStatus, error) {
	var rep ServerReport
	body := RepaveBody{InstanceID: req.InstanceID, UserData: string(req.UserData), MAC: req.MAC}
	for _, f := range req.Faults {
		fb := FaultBody{Type: string(f.Type), At: f.At}
		if f.FailedTries != nil {
			fb.FailedTries = *f.FailedTries
		}
		if f.Duration != nil {
			fb.Duration = f.Duration.Duration
		}
		body.Faults = append(body.Faults, fb)
	}
	if err := p.do(ctx, http.MethodPut, p.url(req.Server, "repave"), body, &rep); err != nil {
		return controller.RepaveStatus{}, err
	}
	st := controller.RepaveStatus{Done: rep.Done, Failed: rep.Failed, Message: rep.Message, IPAddress: rep.IP, MACAddress: rep.MAC}
	if rep.Failed {
		st.Reason = rep.Reason
		if st.Reason == "" {
			st.Reason = "MockFailure"
		}
	}
	for _, s := range rep.Steps {
		st.Steps = append(st.Steps, controller.Step{Type: s.Type, State: controller.StepState(s.State), Message: s.Message})
	}
	return st, nil
}

// Inspect reports the mock machine.
func (p *Provider) Inspect(ctx context.Context, server types.NamespacedName) (controller.ServerInfo, error) {
	var rep ServerReport
	if err := p.do(ctx, http.MethodGet, p.url(server, ""), nil, &rep); err != nil {
		return controller.ServerInfo{}, err
	}
	return controller.ServerInfo{Exists: rep.Exists, Running: rep.Running, InstanceID: rep.InstanceID, IPAddress: rep.IP, MACAddress: rep.MAC,
		Boot:  controller.BootOverride{Target: rep.Boot.Target, Enabled: rep.Boot.Enabled, Mode: rep.Boot.Mode},
		Media: controller.Media{Image: rep.Media.Image, Inserted: rep.Media.Inserted}}, nil
}

// PowerOff powers the mock machine off.
func (p *Provider) PowerOff(ctx context.Context, server types.NamespacedName) error {
	return p.do(ctx, http.MethodPost, p.url(server, "power-off"), nil, nil)
}

// Release forgets the mock machine.
func (p *Provider) Release(ctx context.Context, server types.NamespacedName) error {
	return p.do(ctx, http.MethodDelete, p.url(server, ""), nil, nil)
}

// Shutdown presses the mock machine's power button.
func (p *Provider) Shutdown(ctx context.Context, server types.NamespacedName) error {
	return p.do(ctx, http.MethodPost, p.url(server, "shutdown"), nil, nil)
}

// PowerOn boots the mock machine's installation again.
func (p *Provider) PowerOn(ctx context.Context, server types.NamespacedName) error {
	err := p.do(ctx, http.MethodPost, p.url(server, "power-on"), nil, nil)
	var status *statusError
	if errors.As(err, &status) && status.code == http.StatusConflict {
		return controller.ErrNotInstalled
	}
	return err
}

// SetBoot sets the mock machine's boot override.
func (p *Provider) SetBoot(ctx context.Context, server types.NamespacedName, boot controller.BootOverride) error {
	return p.do(ctx, http.MethodPut, p.url(server, "boot"), BootReport{Target: boot.Target, Enabled: boot.Enabled, Mode: boot.Mode}, nil)
}

// InsertMedia puts a virtual CD into the mock machine (the mock fetches nothing).
func (p *Provider) InsertMedia(ctx context.Context, server types.NamespacedName, imageURL string) error {
	return p.do(ctx, http.MethodPut, p.url(server, "media"), MediaReport{Image: imageURL}, nil)
}

// EjectMedia removes the mock machine's virtual CD.
func (p *Provider) EjectMedia(ctx context.Context, server types.NamespacedName) error {
	return p.do(ctx, http.MethodDelete, p.url(server, "media"), nil, nil)
}
