package uplink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitLimit = 15 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, waitLimit, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startBroker(t *testing.T) *embedmqtt.Broker {
	t.Helper()
	b, err := embedmqtt.New(embedmqtt.Config{Addr: "127.0.0.1:0"}, embedmqtt.Deps{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

func connect(t *testing.T, url, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(250) })
	return c
}

func publish(t *testing.T, c mqtt.Client, topic string, retained bool, payload []byte) {
	t.Helper()
	if tok := c.Publish(topic, 1, retained, payload); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

func subscribe(t *testing.T, c mqtt.Client, filter string, h mqtt.MessageHandler) {
	t.Helper()
	if tok := c.Subscribe(filter, 1, h); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("subscribe to %s: %v", filter, tok.Error())
	}
}

// acker plays the cloud: it reads every vehicle's telemetry, decodes each
// batch and, while acking is on, answers with an Ack covering it, as the
// bridge does once Kafka holds the batch.
type acker struct {
	t      *testing.T
	client mqtt.Client

	mu       sync.Mutex
	acking   bool
	arrivals map[wire.Identity][]time.Time
	order    []wire.Identity // every arrival, in order
	bad      []string
}

func startAcker(t *testing.T, url string, acking bool) *acker {
	t.Helper()
	a := &acker{t: t, acking: acking, arrivals: map[wire.Identity][]time.Time{}}
	a.client = connect(t, url, "acker")
	subscribe(t, a.client, topics.TelemetryFilter, a.onBatch)
	return a
}

func (a *acker) onBatch(_ mqtt.Client, msg mqtt.Message) {
	b, err := wire.Decode(msg.Payload(), wire.Limits{})
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.bad = append(a.bad, fmt.Sprintf("%s: %v", msg.Topic(), err))
		return
	}
	if topics.Telemetry(b.VehicleID) != msg.Topic() {
		a.bad = append(a.bad, fmt.Sprintf("batch of %s on %s", b.VehicleID, msg.Topic()))
	}
	a.arrivals[b.Identity] = append(a.arrivals[b.Identity], time.Now())
	a.order = append(a.order, b.Identity)
	if a.acking {
		a.ackLocked(b.VehicleID, &pb.SeqRange{Epoch: b.Epoch, First: b.Seq, Last: b.Seq})
	}
}

// ackLocked publishes without waiting: paho calls handlers one at a time,
// and waiting for a PUBACK in one would stall the client.
func (a *acker) ackLocked(vehicle string, ranges ...*pb.SeqRange) {
	data, err := proto.Marshal(&pb.Ack{VehicleId: vehicle, Ranges: ranges})
	if err != nil {
		a.bad = append(a.bad, err.Error())
		return
	}
	a.client.Publish(topics.Ack(vehicle), 1, false, data)
}

func (a *acker) count(id wire.Identity) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.arrivals[id])
}

func (a *acker) times(id wire.Identity) []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Time(nil), a.arrivals[id]...)
}

func (a *acker) problems() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.bad...)
}

// ack publishes an Ack on vehicle's ack topic and waits for the broker.
func ack(t *testing.T, c mqtt.Client, vehicle string, ackFor string, ranges ...*pb.SeqRange) {
	t.Helper()
	data, err := proto.Marshal(&pb.Ack{VehicleId: ackFor, Ranges: ranges})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, c, topics.Ack(vehicle), false, data)
}

// freed records what OnAcked reports.
type freed struct {
	mu  sync.Mutex
	ids []wire.Identity
}

func (f *freed) add(id wire.Identity) {
	f.mu.Lock()
	f.ids = append(f.ids, id)
	f.mu.Unlock()
}

func (f *freed) list() []wire.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wire.Identity(nil), f.ids...)
}

// started is an uplink whose Run is going.
type started struct {
	*Uplink
	reg    *prometheus.Registry
	freed  *freed
	cancel context.CancelFunc
	errc   chan error
}

func newUplink(t *testing.T, url, vehicle string, ackTimeout time.Duration) *started {
	t.Helper()
	mc := mqttconn.Config{URL: url, ClientID: vehicle, KeepAlive: 30 * time.Second}
	reg := prometheus.NewRegistry()
	f := &freed{}
	u, err := New(Config{VehicleID: vehicle, AgentVersion: "9.9.9", MQTT: mc, AckTimeout: ackTimeout, OnAcked: f.add},
		Deps{Logger: testLogger(t), Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	return &started{Uplink: u, reg: reg, freed: f}
}

// run starts Run; the test's end stops it and requires it to return nil.
func (s *started) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.errc = cancel, make(chan error, 1)
	go func() { s.errc <- s.Run(ctx) }()
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func (s *started) stop() error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.errc:
		return err
	case <-time.After(waitLimit):
		return errors.New("Run did not return after cancel")
	}
}

// counter reads a counter of the uplink metrics.
func (s *started) counter(t *testing.T, name, state string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" && l.GetValue() == state {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func encode(t *testing.T, id wire.Identity) []byte {
	t.Helper()
	ts := time.Date(2025, 6, 2, 7, 30, 0, 0, time.UTC).Add(time.Duration(id.Seq) * time.Second).UnixNano()
	data, err := wire.Encode(&wire.Batch{Identity: id, BaseTime: ts, AgentVersion: "9.9.9",
		Readings: []wire.Reading{{Signal: "vehicle.speed", Unit: "km/h", Time: ts, Value: wire.Float(float64(id.Seq))}}},
		wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestResendsUntilAcked(t *testing.T) {
	broker := startBroker(t)
	cloud := startAcker(t, broker.URL(), false)
	const ackTimeout = 300 * time.Millisecond
	u := newUplink(t, broker.URL(), "veh-1", ackTimeout)
	u.run(t)

	first := wire.Identity{VehicleID: "veh-1", Epoch: 3, Seq: 1}
	u.Send(first, encode(t, first))
	if n := u.Pending(); n != 1 {
		t.Fatalf("Pending = %d after one Send, want 1", n)
	}
	eventually(t, "the unacked batch published again", func() error {
		if n := cloud.count(first); n < 2 {
			return fmt.Errorf("seen %d times", n)
		}
		return nil
	})
	ts := cloud.times(first)
	if gap := ts[1].Sub(ts[0]); gap < ackTimeout*3/4 {
		t.Errorf("re-published %v after the first copy; want no sooner than the ack timeout %v", gap, ackTimeout)
	}
	if u.Pending() != 1 {
		t.Errorf("Pending = %d before the ack, want 1", u.Pending())
	}

	ack(t, cloud.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: 3, First: 1, Last: 1})
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := u.WaitAcked(ctx); err != nil {
		t.Fatal(err)
	}
	if n := u.Pending(); n != 0 {
		t.Errorf("Pending = %d after the ack, want 0", n)
	}
	if got := u.freed.list(); len(got) != 1 || got[0] != first {
		t.Errorf("OnAcked got %v, want [%v]", got, first)
	}

	// A second batch, never acked: by the time it has been re-published,
	// the acked one would have been too if it were still kept.
	second := wire.Identity{VehicleID: "veh-1", Epoch: 3, Seq: 2}
	u.Send(second, encode(t, second))
	eventually(t, "the second batch published", func() error {
		if cloud.count(second) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	seenFirst := cloud.count(first) // publishes of it before the second are in already
	eventually(t, "the second batch published again", func() error {
		if n := cloud.count(second); n < 2 {
			return fmt.Errorf("seen %d times", n)
		}
		return nil
	})
	if n := cloud.count(first); n != seenFirst {
		t.Errorf("the acked batch was published %d more times after its ack", n-seenFirst)
	}
	if got := u.counter(t, "fleet_agent_batches_total", "resent"); got < 2 {
		t.Errorf(`fleet_agent_batches_total{state="resent"} = %v, want at least 2`, got)
	}
	if got := u.counter(t, "fleet_agent_batches_total", "acked"); got != 1 {
		t.Errorf(`fleet_agent_batches_total{state="acked"} = %v, want 1`, got)
	}
	for _, p := range cloud.problems() {
		t.Error(p)
	}
}

func TestIgnoresAcksNotForIt(t *testing.T) {
	broker := startBroker(t)
	cloud := startAcker(t, broker.URL(), false)
	u := newUplink(t, broker.URL(), "veh-1", time.Minute)
	u.run(t)
	ids := []wire.Identity{{VehicleID: "veh-1", Epoch: 8, Seq: 1}, {VehicleID: "veh-1", Epoch: 8, Seq: 2}, {VehicleID: "veh-1", Epoch: 8, Seq: 3}}
	for _, id := range ids {
		u.Send(id, encode(t, id))
	}
	eventually(t, "the batches published", func() error {
		for _, id := range ids {
			if cloud.count(id) == 0 {
				return fmt.Errorf("%v not seen", id)
			}
		}
		return nil
	})

	// None of these may free anything.
	publish(t, cloud.client, topics.Ack("veh-1"), false, []byte("\xff\xff not an ack"))
	ack(t, cloud.client, "veh-1", "veh-2", &pb.SeqRange{Epoch: 8, First: 1, Last: 3})         // another vehicle's
	ack(t, cloud.client, "veh-2", "veh-1", &pb.SeqRange{Epoch: 8, First: 1, Last: 3})         // on another vehicle's topic
	ack(t, cloud.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: 9, First: 1, Last: 3})         // another epoch
	ack(t, cloud.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: 8, First: 3, Last: 1})         // reversed
	ack(t, cloud.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: 8, First: 4, Last: 1<<63 + 1}) // absurdly long
	// This one frees seq 2 only; acks are handled in order, so once it has
	// taken effect the ones above have been handled too.
	ack(t, cloud.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: 8, First: 2, Last: 2})
	eventually(t, "seq 2 freed", func() error {
		if u.Pending() != 2 {
			return fmt.Errorf("pending %d", u.Pending())
		}
		return nil
	})
	if got := u.freed.list(); len(got) != 1 || got[0] != ids[1] {
		t.Errorf("freed %v, want only %v", got, ids[1])
	}

	// WaitAcked waits for the rest, and says what is missing when its
	// context ends first.
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := u.WaitAcked(short)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "veh-1") || !strings.Contains(err.Error(), "2 batches") {
		t.Errorf("WaitAcked with batches pending = %v; want a deadline error naming veh-1 and 2 batches", err)
	}
	waited := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		waited <- u.WaitAcked(ctx)
	}()
	ack(t, cloud.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: 8, First: 1, Last: 1}, &pb.SeqRange{Epoch: 8, First: 3, Last: 3})
	if err := <-waited; err != nil {
		t.Errorf("WaitAcked after the last acks: %v", err)
	}
	if u.Pending() != 0 {
		t.Errorf("Pending = %d, want 0", u.Pending())
	}
}

func TestWaitAckedWithNothingSent(t *testing.T) {
	broker := startBroker(t)
	u := newUplink(t, broker.URL(), "veh-1", time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // even a dead context: nothing is pending
	if err := u.WaitAcked(ctx); err != nil {
		t.Errorf("WaitAcked = %v with nothing sent", err)
	}
	if u.Pending() != 0 {
		t.Errorf("Pending = %d", u.Pending())
	}
}

// TestSendsWhatWasQueuedOnConnect: a batch sent before the connection is
// up is published as soon as it is, not after the ack timeout.
func TestSendsWhatWasQueuedOnConnect(t *testing.T) {
	broker := startBroker(t)
	cloud := startAcker(t, broker.URL(), true)
	u := newUplink(t, broker.URL(), "veh-1", time.Hour)
	id := wire.Identity{VehicleID: "veh-1", Epoch: 1, Seq: 1}
	u.Send(id, encode(t, id))
	u.run(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := u.WaitAcked(ctx); err != nil {
		t.Fatal(err)
	}
	if n := cloud.count(id); n != 1 {
		t.Errorf("published %d times, want once", n)
	}
}

func TestStatus(t *testing.T) {
	broker := startBroker(t)
	watcher := connect(t, broker.URL(), "watcher")
	statuses := make(chan *pb.Status, 10)
	subscribe(t, watcher, topics.Status("veh-1"), func(_ mqtt.Client, msg mqtt.Message) {
		if msg.Retained() {
			return // live changes only; the retained one is checked below
		}
		s := &pb.Status{}
		if err := proto.Unmarshal(msg.Payload(), s); err != nil {
			t.Errorf("status payload: %v", err)
			return
		}
		statuses <- s
	})
	next := func() *pb.Status {
		t.Helper()
		select {
		case s := <-statuses:
			return s
		case <-time.After(waitLimit):
			t.Fatal("no status message")
			return nil
		}
	}

	u := newUplink(t, broker.URL(), "veh-1", time.Second)
	u.run(t)
	if s := next(); !s.GetOnline() || s.GetVehicleId() != "veh-1" || s.GetAgentVersion() != "9.9.9" || s.GetTimeUnixNano() == 0 {
		t.Errorf("status while running: %v", s)
	}
	if err := u.stop(); err != nil {
		t.Fatal(err)
	}
	if s := next(); s.GetOnline() {
		t.Errorf("status after Run returned: %v", s)
	}

	// It is retained: a dashboard that connects later sees the car offline.
	late := connect(t, broker.URL(), "late-watcher")
	retained := make(chan *pb.Status, 1)
	subscribe(t, late, topics.Status("veh-1"), func(_ mqtt.Client, msg mqtt.Message) {
		s := &pb.Status{}
		if proto.Unmarshal(msg.Payload(), s) == nil && msg.Retained() {
			select {
			case retained <- s:
			default:
			}
		}
	})
	select {
	case s := <-retained:
		if s.GetOnline() {
			t.Errorf("retained status %v, want offline", s)
		}
	case <-time.After(waitLimit):
		t.Fatal("no retained status")
	}
}
