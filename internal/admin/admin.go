// Package admin serves the operational endpoints of a service: Prometheus
// metrics on /metrics, liveness on /healthz and readiness on /readyz, plus
// whatever handlers the service adds (an API, a dashboard).
//
// /debug/pprof/ serves Go's profiles (net/http/pprof).
//
// /healthz answers 200 while the process serves HTTP. /readyz answers 200
// when every registered readiness check passes and 503 with a JSON body
// naming the failing checks otherwise.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config says where to listen.
type Config struct {
	Addr string // e.g. ":9100"; "127.0.0.1:0" picks a free port
}

// Deps are the server's dependencies.
type Deps struct {
	Logger   *slog.Logger
	Gatherer prometheus.Gatherer
}

// Server is the admin HTTP server. Handle and AddReadyCheck must be called
// before Run; the rest is safe for concurrent use.
type Server struct {
	mux    *http.ServeMux
	ln     net.Listener
	logger *slog.Logger

	mu     sync.Mutex
	checks map[string]func(context.Context) error
}

// New binds the listener, so Addr is known before Run.
func New(cfg Config, deps Deps) (*Server, error) {
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen on %s: %w", cfg.Addr, err)
	}
	s := &Server{mux: http.NewServeMux(), ln: ln, logger: deps.Logger, checks: map[string]func(context.Context) error{}}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(deps.Gatherer, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	// Go profiles, for when a service or an agent uses more CPU or memory
	// than it should. The admin port is for operators; don't expose it.
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is http://Addr, with a wildcard host shown as localhost.
func (s *Server) URL() string {
	host, port, _ := net.SplitHostPort(s.Addr())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Handle adds a handler, as http.ServeMux.Handle.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// AddReadyCheck adds a named readiness check; it should answer quickly.
func (s *Server) AddReadyCheck(name string, check func(context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = check
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	checks := s.checks
	s.mu.Unlock()
	sort.Strings(names)
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	failing := map[string]string{}
	for _, n := range names {
		if err := checks[n](ctx); err != nil {
			failing[n] = err.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if len(failing) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": false, "failing": failing})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": true})
}

// Run serves until ctx is cancelled, then shuts down, giving open requests
// (long-lived streams included) five seconds.
func (s *Server) Run(ctx context.Context) error {
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: %w", err)
	}
	return nil
}
