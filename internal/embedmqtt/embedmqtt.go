// Package embedmqtt runs an in-process MQTT broker (mochi-mqtt) for the
// one-process embedded stack and for fast tests. It speaks real MQTT over
// TCP, so clients use the same paho code paths as against Mosquitto.
//
// By default the broker allows every client (no authentication), for
// tests on loopback; with Config.FleetACL it enforces the fleet's rule
// (acl.go): each vehicle publishes and reads only its own topics.
package embedmqtt

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Config says where the broker listens.
type Config struct {
	Addr string // e.g. "127.0.0.1:1883"; "127.0.0.1:0" picks a free port
	// FleetACL enforces the fleet's rule: vehicles act only under their
	// own vehicle ID; the Services accounts (username -> password) have
	// the bridge's rights.
	FleetACL bool
	Services map[string]string
}

// Deps are the broker's dependencies.
type Deps struct {
	Logger *slog.Logger
}

// Broker is an in-process MQTT broker.
type Broker struct {
	server *mqtt.Server
	ln     net.Listener
	logs   *logGate
}

// New binds the listener (so URL is known before Run) and builds the broker.
func New(cfg Config, deps Deps) (*Broker, error) {
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded mqtt: listen on %s: %w", cfg.Addr, err)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumInflight = 1024
	caps.ReceiveMaximum = 1024
	logs := &logGate{}
	logger := slog.New(gatedHandler{gate: logs, h: deps.Logger.Handler()}).With("component", "mochi-mqtt")
	s := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: logger})
	var hook mqtt.Hook = new(auth.AllowHook)
	if cfg.FleetACL {
		hook = &fleetACL{services: cfg.Services}
	}
	if err := s.AddHook(hook, nil); err != nil {
		ln.Close()
		return nil, err
	}
	if err := s.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		ln.Close()
		return nil, err
	}
	return &Broker{server: s, ln: ln, logs: logs}, nil
}

// URL is the broker's tcp:// URL.
func (b *Broker) URL() string { return "tcp://" + b.ln.Addr().String() }

// Run serves until ctx is cancelled, then closes every connection. The
// broker logs nothing after Run returns.
func (b *Broker) Run(ctx context.Context) error {
	defer b.logs.close()
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("embedded mqtt: %w", err)
	}
	<-ctx.Done()
	return b.server.Close()
}

// logGate silences the broker's logger once Run has returned: mochi's
// per-connection goroutines are not waited for by Server.Close and can
// log after it (a connection refused at that moment, say), when the
// logger's owner (a finished test, a process writing its last lines) no
// longer expects anything.
type logGate struct {
	mu     sync.RWMutex
	closed bool
}

func (g *logGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

type gatedHandler struct {
	gate *logGate
	h    slog.Handler
}

func (g gatedHandler) Enabled(ctx context.Context, l slog.Level) bool { return g.h.Enabled(ctx, l) }

func (g gatedHandler) Handle(ctx context.Context, r slog.Record) error {
	g.gate.mu.RLock()
	defer g.gate.mu.RUnlock()
	if g.gate.closed {
		return nil
	}
	return g.h.Handle(ctx, r)
}

func (g gatedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return gatedHandler{gate: g.gate, h: g.h.WithAttrs(as)}
}

func (g gatedHandler) WithGroup(name string) slog.Handler {
	return gatedHandler{gate: g.gate, h: g.h.WithGroup(name)}
}
