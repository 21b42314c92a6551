package mqttlite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(mqtttest.PahoDisconnect))
}

// brokers runs fn against the embedded broker and the real Mosquitto.
func brokers(t *testing.T, fn func(t *testing.T, url string)) {
	t.Run("mochi", func(t *testing.T) { fn(t, mqtttest.StartBroker(t).URL()) })
	t.Run("mosquitto", func(t *testing.T) { fn(t, testenv.MQTT(t)) })
}

// inbox collects received messages.
type inbox struct {
	mu   sync.Mutex
	msgs []*Message
	hold chan struct{} // when set, the handler waits on it
}

func (in *inbox) handle(m *Message) {
	if in.hold != nil {
		<-in.hold
	}
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	in.mu.Unlock()
}

func (in *inbox) take() []*Message {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := in.msgs
	in.msgs = nil
	return out
}

func (in *inbox) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.msgs)
}

// start runs a client until the test ends.
func start(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg, Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	mqtttest.Eventually(t, "connected and subscribed", func() error {
		if !c.Connected() {
			return errors.New("not yet")
		}
		return nil
	})
	return c
}

func publishAll(t *testing.T, c mqtt.Client, topic string, n int) {
	t.Helper()
	for i := range n {
		tok := c.Publish(topic, 1, false, fmt.Appendf(nil, "m%03d", i))
		if !tok.WaitTimeout(mqtttest.WaitLimit) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
}

// Messages acknowledged in any order are gone for good; the ones left
// unacknowledged come back, and only they, on the session's next
// connection.
func TestOutOfOrderAcksAndRedelivery(t *testing.T) {
	brokers(t, func(t *testing.T, url string) {
		id := fmt.Sprintf("lite-%d", time.Now().UnixNano())
		topic := "test/lite/" + id
		in := &inbox{}
		cfg := Config{URL: url, ClientID: id, Subscriptions: []Subscription{{Filter: topic, QoS: 1}}, OnMessage: in.handle}
		c, err := New(cfg, Deps{Logger: mqtttest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(ctx) }()
		mqtttest.Eventually(t, "subscribed", func() error {
			if !c.Connected() {
				return errors.New("not yet")
			}
			return nil
		})
		pub := mqtttest.Connect(t, url, id+"-pub")
		publishAll(t, pub, topic, 10)
		mqtttest.Eventually(t, "10 messages", func() error {
			if n := in.count(); n < 10 {
				return fmt.Errorf("%d", n)
			}
			return nil
		})
		msgs := in.take()
		// Ack the even ones, newest first; leave the odd ones.
		for i := len(msgs) - 1; i >= 0; i-- {
			if i%2 == 0 {
				msgs[i].Ack()
			}
		}
		// Run's DISCONNECT follows the acks on the same connection, after
		// them: the broker has them before the session ends.
		cancel()
		<-done

		// The same session again: only the five unacknowledged come back.
		in2 := &inbox{}
		cfg.OnMessage = in2.handle
		start(t, cfg)
		// A message published now comes after every redelivery (a broker
		// resends a session's messages before new ones, in order): once it
		// is here, nothing old can follow.
		if tok := pub.Publish(topic, 1, false, "end"); !tok.WaitTimeout(mqtttest.WaitLimit) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		mqtttest.Eventually(t, "redelivery, then the new message", func() error {
			in2.mu.Lock()
			defer in2.mu.Unlock()
			if n := len(in2.msgs); n == 0 || string(in2.msgs[n-1].Payload) != "end" {
				return fmt.Errorf("%d so far, the new message not yet", n)
			}
			return nil
		})
		got := in2.take()
		got = got[:len(got)-1]
		if len(got) != 5 {
			t.Fatalf("%d redelivered, want the 5 unacknowledged", len(got))
		}
		for _, m := range got {
			var n int
			if _, err := fmt.Sscanf(string(m.Payload), "m%03d", &n); err != nil || n%2 == 0 {
				t.Errorf("redelivered %q, which was acknowledged", m.Payload)
			}
			m.Ack()
		}
	})
}

// A handler that blocks holds back its connection, not the keepalive:
// the connection survives a stall longer than the keepalive, and then
// delivers everything.
func TestBackpressureKeepsTheConnection(t *testing.T) {
	brokers(t, func(t *testing.T, url string) {
		id := fmt.Sprintf("lite-bp-%d", time.Now().UnixNano())
		topic := "test/lite/" + id
		in := &inbox{hold: make(chan struct{})}
		c := start(t, Config{URL: url, ClientID: id, CleanSession: true, KeepAlive: 2 * time.Second,
			Subscriptions: []Subscription{{Filter: topic, QoS: 1}}, OnMessage: in.handle})
		pub := mqtttest.Connect(t, url, id+"-pub")
		publishAll(t, pub, topic, 20)
		time.Sleep(5 * time.Second) // the handler holds the first message all along
		close(in.hold)
		mqtttest.Eventually(t, "all 20", func() error {
			if n := in.count(); n < 20 {
				return fmt.Errorf("%d", n)
			}
			return nil
		})
		for _, m := range in.take() {
			m.Ack()
		}
		if n := c.Connects(); n != 1 {
			t.Errorf("%d connections, want 1: the stall cost the connection", n)
		}
	})
}

// Publish at QoS 1 reports the broker's acknowledgement; QoS 0 goes out too.
func TestPublish(t *testing.T) {
	brokers(t, func(t *testing.T, url string) {
		id := fmt.Sprintf("lite-pub-%d", time.Now().UnixNano())
		topic := "test/lite/" + id
		in := &inbox{}
		start(t, Config{URL: url, ClientID: id + "-sub", CleanSession: true, Subscriptions: []Subscription{{Filter: topic, QoS: 1}}, OnMessage: in.handle})
		p := start(t, Config{URL: url, ClientID: id, CleanSession: true})
		acked := make(chan error, 100)
		for i := range 50 {
			if err := p.Publish(topic, 1, fmt.Appendf(nil, "q1-%d", i), func(err error) { acked <- err }); err != nil {
				t.Fatal(err)
			}
			if err := p.Publish(topic, 0, fmt.Appendf(nil, "q0-%d", i), nil); err != nil {
				t.Fatal(err)
			}
		}
		for range 50 {
			select {
			case err := <-acked:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(mqtttest.WaitLimit):
				t.Fatal("no PUBACK")
			}
		}
		mqtttest.Eventually(t, "100 messages", func() error {
			if n := in.count(); n < 100 {
				return fmt.Errorf("%d", n)
			}
			return nil
		})
		for _, m := range in.take() {
			m.Ack()
		}
	})
}

// A payload over the limit is delivered truncated (and can be acked);
// the stream stays in sync for the messages after it.
func TestTruncatesLargePayloads(t *testing.T) {
	brokers(t, func(t *testing.T, url string) {
		id := fmt.Sprintf("lite-big-%d", time.Now().UnixNano())
		topic := "test/lite/" + id
		in := &inbox{}
		start(t, Config{URL: url, ClientID: id, CleanSession: true, MaxPayloadBytes: 1000,
			Subscriptions: []Subscription{{Filter: topic, QoS: 1}}, OnMessage: in.handle})
		pub := mqtttest.Connect(t, url, id+"-pub")
		big := bytes.Repeat([]byte("x"), 100_000)
		for _, p := range [][]byte{[]byte("before"), big, []byte("after")} {
			if tok := pub.Publish(topic, 1, false, p); !tok.WaitTimeout(mqtttest.WaitLimit) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
		}
		mqtttest.Eventually(t, "3 messages", func() error {
			if n := in.count(); n < 3 {
				return fmt.Errorf("%d", n)
			}
			return nil
		})
		got := in.take()
		if string(got[0].Payload) != "before" || string(got[2].Payload) != "after" || got[0].Truncated || got[2].Truncated {
			t.Errorf("neighbours: %q %q", got[0].Payload, got[2].Payload)
		}
		if !got[1].Truncated || got[1].Size != len(big) || len(got[1].Payload) != 1000 || got[1].Topic != topic {
			t.Errorf("big one: truncated %v, size %d, kept %d, topic %q", got[1].Truncated, got[1].Size, len(got[1].Payload), got[1].Topic)
		}
		for _, m := range got {
			m.Ack()
		}
	})
}

// runBroker runs an embedded broker on addr until stop is called.
func runBroker(t *testing.T, addr string) (url string, stop func()) {
	t.Helper()
	b, err := embedmqtt.New(embedmqtt.Config{Addr: addr}, embedmqtt.Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return b.URL(), stop
}

// A client comes back by itself after its broker restarts.
func TestReconnects(t *testing.T) {
	url, stop := runBroker(t, "127.0.0.1:0")
	in := &inbox{}
	c := start(t, Config{URL: url, ClientID: "lite-re", CleanSession: true,
		Subscriptions: []Subscription{{Filter: "t/#", QoS: 1}}, OnMessage: in.handle})
	stop()
	mqtttest.Eventually(t, "connection lost", func() error {
		if c.Connected() {
			return errors.New("still connected")
		}
		return nil
	})
	runBroker(t, url[len("tcp://"):])
	mqtttest.Eventually(t, "reconnected", func() error {
		if !c.Connected() {
			return errors.New("not yet")
		}
		return nil
	})
	pub := mqtttest.Connect(t, url, "lite-re-pub")
	publishAll(t, pub, "t/x", 1)
	mqtttest.Eventually(t, "a message after the restart", func() error {
		if in.count() < 1 {
			return errors.New("none")
		}
		return nil
	})
	for _, m := range in.take() {
		m.Ack()
	}
}
