package redfish

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"net/http"
	"time"
)

// Server serves a Handler (usually a *Service) over HTTPS, or over plain HTTP when asked to, with
// timeouts that keep slow or idle clients from holding connections.
type Server struct {
	Handler http.Handler
	// Certificate is the server's TLS certificate (see EnsureCertificate). Without one the server
	// serves plain HTTP, which PlainHTTP must then allow.
	Certificate *tls.Certificate
	// PlainHTTP allows serving without TLS; credentials then cross the network in clear.
	PlainHTTP bool
	// ShutdownTimeout bounds how long requests in flight may finish once the context is done;
	// zero means 5 seconds.
	ShutdownTimeout time.Duration
	// ErrorLog receives the http.Server's own errors (e.g. failed TLS handshakes); nil means the
	// log package's standard logger.
	ErrorLog *log.Logger
}

// ListenAndServe listens on addr (host:port) and serves until ctx is done; see Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	if err := s.check(); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done, then stops accepting, lets requests in flight finish for
// at most ShutdownTimeout and returns nil. It closes ln. It returns an error if serving fails
// before that.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.check(); err != nil {
		_ = ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          s.ErrorLog,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if s.Certificate != nil {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*s.Certificate}}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	timeout := s.ShutdownTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

func (s *Server) check() error {
	switch {
	case s.Handler == nil:
		return errors.New("redfish server: no handler")
	case s.Certificate == nil && !s.PlainHTTP:
		return errors.New("redfish server: no TLS certificate, and plain HTTP not allowed")
	case s.Certificate != nil && s.PlainHTTP:
		return errors.New("redfish server: both a TLS certificate and plain HTTP given; serve each on its own Server")
	}
	return nil
}
