// Package mqtttest is what tests of MQTT clients share: an in-process
// broker for the test's lifetime, a plain paho client, and a helper that
// waits on a condition with a deadline.
package mqtttest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
)

// WaitLimit is how long Eventually and the client helpers wait.
const WaitLimit = 15 * time.Second

// Logger logs to the test's output.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// StartBroker runs an embedded broker on a free loopback port until the
// test ends.
func StartBroker(t testing.TB) *embedmqtt.Broker {
	t.Helper()
	b, err := embedmqtt.New(embedmqtt.Config{Addr: "127.0.0.1:0"}, embedmqtt.Deps{Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

// Connect returns a connected client (no auto-reconnect), disconnected when
// the test ends.
func Connect(t testing.TB, url, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(WaitLimit) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(250) })
	return c
}

// Eventually polls cond until it returns nil, failing the test with cond's
// last error once WaitLimit passes.
func Eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(WaitLimit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, WaitLimit, err)
		}
		<-tick.C
	}
}

// PahoDisconnect is the goroutine paho's Disconnect leaves behind, bounded
// by its quiesce time or by a connect attempt in flight (paho documents that
// Disconnect may return first); pass it to goleak.IgnoreTopFunction.
const PahoDisconnect = "github.com/eclipse/paho%2emqtt%2egolang.(*client).Disconnect.func1"
