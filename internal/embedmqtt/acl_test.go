package embedmqtt_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/mqttlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(mqtttest.PahoDisconnect))
}

func startACLBroker(t *testing.T) string {
	t.Helper()
	b, err := embedmqtt.New(embedmqtt.Config{Addr: "127.0.0.1:0", FleetACL: true, Services: map[string]string{"fleet-bridge": "s3cret"}},
		embedmqtt.Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return b.URL()
}

func connect(url, id, user, pass string) (mqtt.Client, error) {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).SetAutoReconnect(false))
	tok := c.Connect()
	if !tok.WaitTimeout(mqtttest.WaitLimit) {
		return nil, fmt.Errorf("connect %s: timeout", id)
	}
	return c, tok.Error()
}

// The embedded broker enforces the fleet's rule: a vehicle publishes and
// reads only under its own ID, the bridge's account reads every vehicle's
// telemetry and writes acks, and a wrong service password is refused.
func TestFleetACL(t *testing.T) {
	url := startACLBroker(t)
	var mu sync.Mutex
	var got []string
	bridge, err := mqttlite.New(mqttlite.Config{URL: url, ClientID: "bridge-0", Username: "fleet-bridge", Password: "s3cret", CleanSession: true,
		Subscriptions: []mqttlite.Subscription{{Filter: "$share/g/fleet/v1/+/telemetry", QoS: 1}},
		OnMessage: func(m *mqttlite.Message) {
			mu.Lock()
			got = append(got, m.Topic+" "+string(m.Payload))
			mu.Unlock()
			m.Ack()
		}}, mqttlite.Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = bridge.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	mqtttest.Eventually(t, "the bridge account subscribed", func() error {
		if !bridge.Connected() {
			return fmt.Errorf("not connected")
		}
		return nil
	})

	if _, err := connect(url, "impostor", "fleet-bridge", "guess"); err == nil {
		t.Error("a wrong service password was accepted")
	}
	if _, err := connect(url, "not a vehicle id/", "", ""); err == nil {
		t.Error("a client whose identity is no vehicle ID was accepted")
	}

	a, err := connect(url, "veh-a", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Disconnect(100)
	if tok := a.Publish("fleet/v1/veh-a/telemetry", 1, false, "own"); !tok.WaitTimeout(mqtttest.WaitLimit) || tok.Error() != nil {
		t.Fatalf("own telemetry: %v", tok.Error())
	}
	sub := a.Subscribe("fleet/v1/veh-b/ack", 1, func(mqtt.Client, mqtt.Message) {})
	sub.WaitTimeout(mqtttest.WaitLimit)
	if r := sub.(*mqtt.SubscribeToken).Result()["fleet/v1/veh-b/ack"]; r != 0x80 {
		t.Errorf("subscribing to another vehicle's ack: granted %#x, want 0x80", r)
	}
	own := a.Subscribe("fleet/v1/veh-a/ack", 1, func(mqtt.Client, mqtt.Message) {})
	own.WaitTimeout(mqtttest.WaitLimit)
	if r := own.(*mqtt.SubscribeToken).Result()["fleet/v1/veh-a/ack"]; r != 1 {
		t.Errorf("subscribing to its own ack: granted %#x, want 1", r)
	}
	// Publishing as another vehicle: the broker drops it (and the
	// connection). Once the connection is gone the broker has dealt with
	// the forged publish, so had it been delivered it would reach the
	// bridge before anything published after this point.
	a.Publish("fleet/v1/veh-b/telemetry", 1, false, "forged")
	mqtttest.Eventually(t, "the forger's connection closed by the broker", func() error {
		if a.IsConnectionOpen() {
			return fmt.Errorf("still open")
		}
		return nil
	})
	// Username identity: a client ID that is not the vehicle's is fine.
	b, err := connect(url, "some-session", "veh-b", "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Disconnect(100)
	if tok := b.Publish("fleet/v1/veh-b/telemetry", 1, false, "own-b"); !tok.WaitTimeout(mqtttest.WaitLimit) || tok.Error() != nil {
		t.Fatalf("veh-b's own telemetry: %v", tok.Error())
	}
	mqtttest.Eventually(t, "both vehicles' own telemetry", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) < 2 {
			return fmt.Errorf("%v", got)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for _, m := range got {
		if m == "fleet/v1/veh-b/telemetry forged" {
			t.Errorf("the forged publish reached the bridge")
		}
	}
	if len(got) != 2 {
		t.Errorf("the bridge got %v, want only the two vehicles' own", got)
	}
}
