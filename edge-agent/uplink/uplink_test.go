package uplink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(mqtttest.PahoDisconnect))
}

const waitLimit = mqtttest.WaitLimit

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
	a.client = mqtttest.Connect(t, url, "acker")
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

// started is an uplink over its own spool, with Run going.
type started struct {
	*Uplink
	spool  *spool.Spool
	id     string
	cancel context.CancelFunc
	errc   chan error
}

func newUplink(t *testing.T, url, vehicle string, cfg Config, sp *spool.Spool) *started {
	t.Helper()
	if sp == nil {
		sp = openSpool(t, t.TempDir())
	}
	cfg.VehicleID, cfg.AgentVersion = vehicle, "9.9.9"
	cfg.MQTT = mqttconn.Config{URL: url, ClientID: vehicle, KeepAlive: 30 * time.Second, ConnectTimeout: 2 * time.Second}
	if cfg.ReconnectMin == 0 {
		cfg.ReconnectMin, cfg.ReconnectMax = 20*time.Millisecond, 200*time.Millisecond
	}
	u, err := New(cfg, sp, Deps{Logger: mqtttest.Logger(t), Metrics: NewMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st := &started{Uplink: u, spool: sp, id: vehicle, cancel: cancel, errc: make(chan error, 1)}
	go func() { st.errc <- u.Run(ctx) }()
	t.Cleanup(st.stop)
	return st
}

func (s *started) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	<-s.errc
}

func openSpool(t *testing.T, dir string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(spool.Config{Dir: dir, Fsync: spool.FsyncNever}, spool.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

// spoolBatch encodes a one-reading batch under the spool's next seq and
// appends it, as the agent does.
func spoolBatch(t *testing.T, sp *spool.Spool, vehicle string) wire.Identity {
	t.Helper()
	return spoolBatchOf(t, sp, vehicle, spool.Bulk)
}

// spoolBatchOf is spoolBatch in a given spool class.
func spoolBatchOf(t *testing.T, sp *spool.Spool, vehicle string, class spool.Class) wire.Identity {
	t.Helper()
	seq, err := sp.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	id := wire.Identity{VehicleID: vehicle, Epoch: sp.Epoch(), Seq: seq}
	data, err := wire.Encode(&wire.Batch{Identity: id, BaseTime: time.Now().UnixNano(),
		Readings: []wire.Reading{{Signal: "x", Time: time.Now().UnixNano(), Value: wire.Int(int64(seq))}}}, wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Append(seq, data, spool.Meta{Class: class, Readings: 1, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestLiveBatchIsAckedAndFreed(t *testing.T) {
	b := mqtttest.StartBroker(t)
	a := startAcker(t, b.URL(), true)
	u := newUplink(t, b.URL(), "veh-1", Config{AckTimeout: 5 * time.Second}, nil)
	id := spoolBatch(t, u.spool, "veh-1")
	u.Live(id.Seq)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := u.WaitAcked(ctx); err != nil {
		t.Fatal(err)
	}
	if n := a.count(id); n != 1 {
		t.Errorf("the cloud got %v %d times, want once", id, n)
	}
	if p := u.Pending(); p != 0 {
		t.Errorf("Pending = %d after the ack", p)
	}
	if p := a.problems(); len(p) > 0 {
		t.Errorf("acker saw: %v", p)
	}
}

func TestResendUntilAcked(t *testing.T) {
	b := mqtttest.StartBroker(t)
	a := startAcker(t, b.URL(), false)
	u := newUplink(t, b.URL(), "veh-1", Config{AckTimeout: 200 * time.Millisecond}, nil)
	id := spoolBatch(t, u.spool, "veh-1")
	u.Live(id.Seq)
	mqtttest.Eventually(t, "a re-send after the ack timeout", func() error {
		if n := a.count(id); n < 2 {
			return fmt.Errorf("sent %d times", n)
		}
		return nil
	})
	if u.Pending() != 1 {
		t.Fatalf("Pending = %d, want 1: the PUBACK must not free the batch", u.Pending())
	}
	ack(t, a.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: id.Epoch, First: id.Seq, Last: id.Seq})
	mqtttest.Eventually(t, "the ack to free the batch", func() error {
		if p := u.Pending(); p != 0 {
			return fmt.Errorf("pending %d", p)
		}
		return nil
	})
	// Once freed, it is not sent again: wait for a later batch to make the
	// round trip, then check the first one's count stopped growing.
	after := a.count(id)
	a.mu.Lock()
	a.acking = true
	a.mu.Unlock()
	id2 := spoolBatch(t, u.spool, "veh-1")
	u.Live(id2.Seq)
	mqtttest.Eventually(t, "a later batch to be acked", func() error {
		if u.Pending() != 0 {
			return errors.New("pending")
		}
		return nil
	})
	if n := a.count(id); n > after+1 {
		t.Errorf("freed batch sent %d more times", n-after)
	}
}

// TestLiveFirstWhileTheBacklogDrains is a reboot after an outage: the spool
// holds a backlog; it drains oldest first at the backlog rate while a new
// batch goes out at once.
func TestLiveFirstWhileTheBacklogDrains(t *testing.T) {
	b := mqtttest.StartBroker(t)
	a := startAcker(t, b.URL(), true)
	sp := openSpool(t, t.TempDir())
	var backlog []wire.Identity
	for range 12 {
		backlog = append(backlog, spoolBatch(t, sp, "veh-1"))
	}
	// 2 batches/s: the backlog takes about 5 s, time enough for the test
	// to add its live batch on a loaded machine.
	u := newUplink(t, b.URL(), "veh-1", Config{AckTimeout: 5 * time.Second, BacklogRate: 2}, sp)
	mqtttest.Eventually(t, "the backlog to start draining", func() error {
		if a.count(backlog[0]) == 0 {
			return errors.New("nothing yet")
		}
		return nil
	})
	live := spoolBatch(t, sp, "veh-1")
	u.Live(live.Seq)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := u.WaitAcked(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	order := append([]wire.Identity(nil), a.order...)
	a.mu.Unlock()
	pos := map[wire.Identity]int{}
	for i, id := range order {
		if _, ok := pos[id]; !ok {
			pos[id] = i
		}
	}
	if pos[live] > pos[backlog[len(backlog)-1]] {
		t.Errorf("the live batch arrived after the whole backlog (order %v)", order)
	}
	for i := 1; i < len(backlog); i++ {
		if pos[backlog[i]] < pos[backlog[i-1]] {
			t.Errorf("backlog out of order: %v before %v", backlog[i], backlog[i-1])
		}
	}
	for _, id := range append(backlog, live) {
		if a.count(id) == 0 {
			t.Errorf("%v never arrived", id)
		}
	}
}

// TestCaptureWindowsGoBeforeTheBacklog: after an outage, the batches of
// high-priority capture windows go before the older backlog.
func TestCaptureWindowsGoBeforeTheBacklog(t *testing.T) {
	b := mqtttest.StartBroker(t)
	a := startAcker(t, b.URL(), true)
	sp := openSpool(t, t.TempDir())
	var backlog, captures []wire.Identity
	for i := range 10 {
		class := spool.Bulk
		if i%3 == 0 {
			class = spool.High
		}
		backlog = append(backlog, spoolBatchOf(t, sp, "veh-1", class))
	}
	for range 3 {
		captures = append(captures, spoolBatchOf(t, sp, "veh-1", spool.Capture))
	}
	u := newUplink(t, b.URL(), "veh-1", Config{AckTimeout: 5 * time.Second, BacklogRate: 5}, sp)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := u.WaitAcked(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	order := append([]wire.Identity(nil), a.order...)
	a.mu.Unlock()
	pos := map[wire.Identity]int{}
	for i, id := range order {
		if _, ok := pos[id]; !ok {
			pos[id] = i
		}
	}
	for _, c := range captures {
		if pos[c] > pos[backlog[0]] {
			t.Errorf("capture batch %v arrived after the oldest backlog batch (order %v)", c, order)
		}
	}
	for i := 1; i < len(backlog); i++ {
		if pos[backlog[i]] < pos[backlog[i-1]] {
			t.Errorf("backlog out of order: %v before %v", backlog[i], backlog[i-1])
		}
	}
}

func TestIgnoresForeignAndMalformedAcks(t *testing.T) {
	b := mqtttest.StartBroker(t)
	a := startAcker(t, b.URL(), false)
	u := newUplink(t, b.URL(), "veh-1", Config{AckTimeout: 5 * time.Second}, nil)
	id, id2 := spoolBatch(t, u.spool, "veh-1"), spoolBatch(t, u.spool, "veh-1")
	u.Live(id.Seq)
	u.Live(id2.Seq)
	mqtttest.Eventually(t, "the batches to arrive", func() error {
		if a.count(id) == 0 || a.count(id2) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	r := &pb.SeqRange{Epoch: id.Epoch, First: id.Seq, Last: id.Seq}
	ack(t, a.client, "veh-1", "veh-2", r)                                                              // names another vehicle
	ack(t, a.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: id.Epoch + 1, First: id.Seq, Last: id.Seq}) // another epoch
	ack(t, a.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: id.Epoch, First: id.Seq, Last: id.Seq - 1}) // empty range
	publish(t, a.client, topics.Ack("veh-1"), false, []byte("garbage"))
	ack(t, a.client, "veh-2", "veh-2", r) // another vehicle's topic
	// Acks are applied in arrival order: once this valid one for id2 took
	// effect, the ones before it have been handled.
	ack(t, a.client, "veh-1", "veh-1", &pb.SeqRange{Epoch: id2.Epoch, First: id2.Seq, Last: id2.Seq})
	mqtttest.Eventually(t, "the valid ack to free its batch", func() error {
		if _, err := u.spool.Get(id2.Seq); err == nil {
			return errors.New("still pending")
		}
		return nil
	})
	if _, err := u.spool.Get(id.Seq); err != nil {
		t.Fatalf("a foreign or malformed ack freed %v: %v", id, err)
	}
}

func TestDeliversAfterTheBrokerComesBack(t *testing.T) {
	// A port below the ephemeral range: nothing else takes it while the
	// broker is away, and the second broker binds it again.
	b, err := embedmqtt.New(embedmqtt.Config{Addr: testenv.FreeAddr(t)}, embedmqtt.Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	bctx, stopBroker := context.WithCancel(context.Background())
	bdone := make(chan struct{})
	go func() { defer close(bdone); _ = b.Run(bctx) }()
	addr := strings.TrimPrefix(b.URL(), "tcp://")
	u := newUplink(t, b.URL(), "veh-1", Config{AckTimeout: time.Second}, nil)
	// Stop the uplink before the second broker's cleanup closes it, or the
	// uplink reconnects into a closing broker and the close waits for it.
	defer u.stop()
	mqtttest.Eventually(t, "the first connection", func() error {
		if !u.connected.Load() {
			return errors.New("not connected")
		}
		return nil
	})
	stopBroker()
	<-bdone
	mqtttest.Eventually(t, "the uplink to notice", func() error {
		if u.connected.Load() {
			return errors.New("still connected")
		}
		return nil
	})
	var ids []wire.Identity
	for range 5 {
		id := spoolBatch(t, u.spool, "veh-1")
		u.Live(id.Seq)
		ids = append(ids, id)
	}
	b2, err := embedmqtt.New(embedmqtt.Config{Addr: addr}, embedmqtt.Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b2.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	a := startAcker(t, b2.URL(), true)
	wctx, wcancel := context.WithTimeout(context.Background(), waitLimit)
	defer wcancel()
	if err := u.WaitAcked(wctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if a.count(id) == 0 {
			t.Errorf("%v spooled while the broker was down never arrived", id)
		}
	}
}

// TestSilentBrokerCostsOnlyTheConnectTimeout: a connection that is accepted
// and never answered (a broker dying as it accepts, a black-holed cellular
// path) must not hold the uplink up past --mqtt-connect-timeout; the next
// attempt reaches the broker.
func TestSilentBrokerCostsOnlyTheConnectTimeout(t *testing.T) {
	b := mqtttest.StartBroker(t)
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn // the first connection: accepted, never answered
	var mu sync.Mutex
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = front.Close()
		mu.Lock()
		for _, c := range held {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := front.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			first := len(held) == 0
			held = append(held, c)
			mu.Unlock()
			if first {
				continue
			}
			up, err := net.Dial("tcp", strings.TrimPrefix(b.URL(), "tcp://"))
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, up)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
	// newUplink's connect timeout is 2s; paho's own default (30s) is
	// longer than Eventually waits.
	u := newUplink(t, "tcp://"+front.Addr().String(), "veh-1", Config{}, nil)
	mqtttest.Eventually(t, "a connection past the silent one", func() error {
		if !u.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
	mu.Lock()
	n := len(held)
	mu.Unlock()
	if n < 2 {
		t.Fatalf("connected through %d connections; the silent one should have been given up", n)
	}
}

func TestStatusOnlineThenOffline(t *testing.T) {
	b := mqtttest.StartBroker(t)
	watcher := mqtttest.Connect(t, b.URL(), "watcher")
	var mu sync.Mutex
	var last *pb.Status
	subscribe(t, watcher, topics.Status("veh-1"), func(_ mqtt.Client, m mqtt.Message) {
		st := &pb.Status{}
		if proto.Unmarshal(m.Payload(), st) == nil {
			mu.Lock()
			last = st
			mu.Unlock()
		}
	})
	u := newUplink(t, b.URL(), "veh-1", Config{}, nil)
	state := func() (bool, bool) {
		mu.Lock()
		defer mu.Unlock()
		return last != nil, last != nil && last.Online
	}
	mqtttest.Eventually(t, "status online", func() error {
		if seen, on := state(); !seen || !on {
			return errors.New("not online")
		}
		return nil
	})
	u.stop()
	mqtttest.Eventually(t, "status offline after stopping", func() error {
		if _, on := state(); on {
			return errors.New("still online")
		}
		return nil
	})
	if last.GetAgentVersion() != "9.9.9" || last.GetVehicleId() != "veh-1" {
		t.Errorf("status %+v", last)
	}
}

// TestRegistersTheCatalog: the catalog goes out on connecting, again after
// the ack timeout while nobody acks it, and CatalogRegistered turns true
// only when an ack for this vehicle lists its id.
func TestRegistersTheCatalog(t *testing.T) {
	b := mqtttest.StartBroker(t)
	cat, err := wire.NewCatalog([]wire.SignalSpec{{Name: "x", Kind: wire.KindInt}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got [][]byte
	cloud := mqtttest.Connect(t, b.URL(), "cloud")
	subscribe(t, cloud, topics.CatalogFilter, func(_ mqtt.Client, msg mqtt.Message) {
		mu.Lock()
		defer mu.Unlock()
		if msg.Topic() == topics.Catalog("veh-1") {
			got = append(got, append([]byte(nil), msg.Payload()...))
		}
	})
	sent := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	u := newUplink(t, b.URL(), "veh-1", Config{AckTimeout: 200 * time.Millisecond, Catalog: cat.Bytes(), CatalogID: cat.ID()}, nil)
	mqtttest.Eventually(t, "the catalog published twice (once re-sent, unacked)", func() error {
		if n := sent(); n < 2 {
			return fmt.Errorf("published %d times", n)
		}
		return nil
	})
	mu.Lock()
	if !bytes.Equal(got[0], cat.Bytes()) {
		t.Errorf("published %d bytes, not the catalog", len(got[0]))
	}
	mu.Unlock()
	if u.CatalogRegistered() {
		t.Fatal("registered before any ack")
	}

	// Acks for another vehicle, or naming another catalog, do not count.
	other, err := wire.NewCatalog([]wire.SignalSpec{{Name: "y", Kind: wire.KindInt}})
	if err != nil {
		t.Fatal(err)
	}
	ackCatalog := func(topicVehicle, ackVehicle string, id []byte) {
		data, err := proto.Marshal(&pb.Ack{VehicleId: ackVehicle, Catalogs: [][]byte{id}})
		if err != nil {
			t.Fatal(err)
		}
		publish(t, cloud, topics.Ack(topicVehicle), false, data)
	}
	ackCatalog("veh-1", "veh-1", other.ID())
	ackCatalog("veh-2", "veh-2", cat.ID())
	ackCatalog("veh-1", "veh-1", cat.ID())
	mqtttest.Eventually(t, "the catalog registered", func() error {
		if !u.CatalogRegistered() {
			return errors.New("not registered")
		}
		return nil
	})
	// Registered: no more re-sends. Let two ack timeouts pass, measured by
	// a batch round trip that takes at least that long.
	n := sent()
	a := startAcker(t, b.URL(), false)
	id := spoolBatch(t, u.spool, "veh-1")
	u.Live(id.Seq)
	mqtttest.Eventually(t, "a batch re-sent twice (two ack timeouts)", func() error {
		if c := a.count(id); c < 3 {
			return fmt.Errorf("sent %d times", c)
		}
		return nil
	})
	if m := sent(); m > n+1 { // one may have been in flight when the ack came
		t.Errorf("catalog published %d more times after it was registered", m-n)
	}
}

// TestLossDuringSetupIsNotConnected is the race a real link can hit: the
// connection drops while the on-connect handler is still subscribing. The
// uplink must not then call itself connected, or it never reconnects.
func TestLossDuringSetupIsNotConnected(t *testing.T) {
	u, err := New(Config{VehicleID: "veh-1", AgentVersion: "9.9.9",
		MQTT: mqttconn.Config{URL: "tcp://127.0.0.1:1", ClientID: "veh-1", KeepAlive: 30 * time.Second}},
		openSpool(t, t.TempDir()), Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	u.lossesAtConnect = u.losses // an attempt begins
	u.onLost(errors.New("link dropped"))
	u.onConnect(u.client) // the handler of that attempt finishes after the loss
	if u.connected.Load() {
		t.Fatal("connected after the connection was lost during its set-up")
	}
	// A later attempt that is not interrupted connects.
	u.lossesAtConnect = u.losses
	u.onConnect(u.client)
	if !u.connected.Load() {
		t.Fatal("not connected after an uninterrupted set-up")
	}
}
