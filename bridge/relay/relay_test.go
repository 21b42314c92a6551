package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/cli/clitest"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(mqtttest.PahoDisconnect))
}

const (
	partitions = 4
	bridgeID   = "bridge-under-test"
	waitLimit  = mqtttest.WaitLimit
)

// env is an embedded MQTT broker and a kfake cluster with the telemetry and
// DLQ topics, both stopped when the test ends.
type env struct {
	t       *testing.T
	broker  *embedmqtt.Broker
	cluster *kfake.Cluster
}

func newEnv(t *testing.T) *env {
	t.Helper()
	broker := mqtttest.StartBroker(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics.KafkaTelemetry, topics.KafkaDLQ))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return &env{t: t, broker: broker, cluster: cluster}
}

// config is a bridge configuration for the environment: quick acks, a small
// payload limit, the admin server on a free port.
func (e *env) config() Config {
	cfg := DefaultConfig()
	cfg.MQTT.URL = e.broker.URL()
	cfg.MQTT.ClientID = "bridge-test"
	cfg.Kafka.Brokers = e.cluster.ListenAddrs()
	cfg.Partitions = partitions
	cfg.BridgeID = bridgeID
	cfg.Listen = "127.0.0.1:0"
	cfg.MaxBatchBytes = 4096
	cfg.Linger = time.Millisecond
	cfg.AckInterval = 20 * time.Millisecond
	cfg.DrainTimeout = 10 * time.Second
	return cfg
}

// running is a bridge whose Run is going.
type running struct {
	*Bridge
	cancel     context.CancelFunc
	errc       chan error
	subscribed chan struct{}
	stopped    bool
}

// startBridge runs a bridge and stops it (requiring Run to return nil) when
// the test ends, unless the test stopped it itself.
func (e *env) startBridge(cfg Config) *running {
	t := e.t
	t.Helper()
	watch := &logWatch{Handler: mqtttest.Logger(t).Handler(), message: "subscribed", once: new(sync.Once), seen: make(chan struct{})}
	reg := prometheus.NewRegistry()
	b, err := New(cfg, Deps{Logger: slog.New(watch), Registerer: reg, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Bridge: b, cancel: cancel, errc: make(chan error, 1), subscribed: watch.seen}
	go func() { r.errc <- b.Run(ctx) }()
	t.Cleanup(func() {
		if !r.stopped {
			if err := r.stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	})
	return r
}

// waitSubscribed waits until the bridge's shared subscription is in place
// (the broker drops what is published to a topic nobody subscribes to).
func (r *running) waitSubscribed(t *testing.T) {
	t.Helper()
	select {
	case <-r.subscribed:
	case err := <-r.errc:
		t.Fatalf("Run returned before subscribing: %v", err)
	case <-time.After(waitLimit):
		t.Fatal("bridge did not subscribe")
	}
}

// stop cancels Run and returns its result; it fails if Run hangs.
func (r *running) stop() error {
	r.stopped = true
	r.cancel()
	select {
	case err := <-r.errc:
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("Run did not return within 30s of cancel")
	}
}

// logWatch passes records on and closes seen at the first one whose
// message is message.
type logWatch struct {
	slog.Handler
	message string
	once    *sync.Once
	seen    chan struct{}
}

func (w *logWatch) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == w.message {
		w.once.Do(func() { close(w.seen) })
	}
	return w.Handler.Handle(ctx, r)
}

func (w *logWatch) WithAttrs(as []slog.Attr) slog.Handler {
	return &logWatch{Handler: w.Handler.WithAttrs(as), message: w.message, once: w.once, seen: w.seen}
}

func (w *logWatch) WithGroup(name string) slog.Handler {
	return &logWatch{Handler: w.Handler.WithGroup(name), message: w.message, once: w.once, seen: w.seen}
}

// client connects a paho client to the broker, disconnected at test end.
func (e *env) client(id string) mqtt.Client {
	t := e.t
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(e.broker.URL()).SetClientID(id).SetCleanSession(true).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(250) })
	return c
}

func publish(t *testing.T, c mqtt.Client, topic string, payload []byte) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

func subscribe(t *testing.T, c mqtt.Client, filter string, h mqtt.MessageHandler) {
	t.Helper()
	if tok := c.Subscribe(filter, 1, h); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("subscribe to %s: %v", filter, tok.Error())
	}
}

// consumer reads both topics from the start.
func (e *env) consumer() *kgo.Client {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cluster.ListenAddrs()...),
		kgo.ConsumeTopics(topics.KafkaTelemetry, topics.KafkaDLQ),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(cl.Close)
	return cl
}

// records keeps what a consumer has read so far.
type records struct {
	cl   *kgo.Client
	recs []*kgo.Record
}

// until polls Kafka until done accepts what was read.
func (rs *records) until(t *testing.T, what string, done func(telemetry, dlq []*kgo.Record) error) (telemetry, dlq []*kgo.Record) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		telemetry, dlq = nil, nil
		for _, r := range rs.recs {
			if r.Topic == topics.KafkaDLQ {
				dlq = append(dlq, r)
			} else {
				telemetry = append(telemetry, r)
			}
		}
		err := done(telemetry, dlq)
		if err == nil {
			return telemetry, dlq
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, waitLimit, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		fs := rs.cl.PollFetches(ctx)
		cancel()
		for _, fe := range fs.Errors() {
			if fe.Err != context.DeadlineExceeded {
				t.Fatalf("fetch %s/%d: %v", fe.Topic, fe.Partition, fe.Err)
			}
		}
		rs.recs = append(rs.recs, fs.Records()...)
	}
}

// endOffsets returns the sum of a topic's end offsets: how many records it
// holds in all.
func (e *env) endOffsets(topic string) int64 {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cluster.ListenAddrs()...))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		e.t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// batch encodes a small but realistic batch of one vehicle.
func batch(t *testing.T, vehicle string, epoch, seq uint64) []byte {
	t.Helper()
	base := time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Second).UnixNano()
	b := &wire.Batch{
		Identity: wire.Identity{VehicleID: vehicle, Epoch: epoch, Seq: seq},
		BaseTime: base, AgentVersion: "test", Decoder: "test:v1",
		Readings: []wire.Reading{
			{Signal: "vehicle.speed", Unit: "km/h", Time: base, Value: wire.Float(float64(seq))},
			{Signal: "status", Time: base, Value: wire.String("available")},
		},
		Fixes: []wire.Fix{{Time: base, Lat: 37.98, Lon: 23.72, Alt: 70, Speed: 8, Heading: 90, Accuracy: math.NaN()}},
	}
	data, err := wire.Encode(b, wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// murmur2 is Kafka's Utils.murmur2, written out from the Java source so the
// test does not trust the partitioner the bridge itself uses.
func murmur2(data []byte) int32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(data))
	n := len(data) / 4
	for i := 0; i < n; i++ {
		k := binary.LittleEndian.Uint32(data[4*i:])
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[4*n:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// kafkaPartition is the partition Kafka's default partitioner (and Kafka
// Streams) picks for a key.
func kafkaPartition(key string, n int32) int32 {
	return (murmur2([]byte(key)) & 0x7fffffff) % n
}

// TestMurmur2Vectors pins murmur2 to the vectors of Kafka's UtilsTest.
func TestMurmur2Vectors(t *testing.T) {
	for in, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		if got := murmur2([]byte(in)); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestRelaysBatchesToKafka(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	// One connection: with several, the broker spreads a vehicle's
	// messages over them and they race (see the package comment on order).
	cfg.Connections = 1
	br := e.startBridge(cfg)
	br.waitSubscribed(t)

	vehicles := []string{"veh-0001", "veh-0002", "veh-0003", "veh-0004", "veh-0005", "veh-0006"}
	spread := map[int32]bool{}
	for _, v := range vehicles {
		spread[kafkaPartition(v, partitions)] = true
	}
	if len(spread) < 2 {
		t.Fatalf("test vehicles all hash to one partition; pick others")
	}

	car := e.client("car")
	sent := map[wire.Identity][]byte{}
	before := time.Now()
	const perVehicle = 5
	for seq := uint64(1); seq <= perVehicle; seq++ {
		for _, v := range vehicles {
			payload := batch(t, v, 7, seq)
			sent[wire.Identity{VehicleID: v, Epoch: 7, Seq: seq}] = payload
			publish(t, car, topics.Telemetry(v), payload)
		}
	}

	rs := &records{cl: e.consumer()}
	telemetry, dlq := rs.until(t, "every batch in Kafka", func(tel, _ []*kgo.Record) error {
		if len(tel) < len(sent) {
			return fmt.Errorf("%d of %d batches", len(tel), len(sent))
		}
		return nil
	})
	after := time.Now()
	if len(dlq) != 0 {
		t.Errorf("%d good batches went to the DLQ; first error header: %q", len(dlq), dlq[0].Headers)
	}

	lastSeq := map[string]uint64{}
	seen := map[wire.Identity]bool{}
	for _, r := range telemetry {
		id, err := wire.DecodeIdentity(r.Value, wire.Limits{})
		if err != nil {
			t.Fatalf("record at %d/%d does not decode: %v", r.Partition, r.Offset, err)
		}
		want, ok := sent[id]
		if !ok {
			t.Fatalf("record %v was never sent", id)
		}
		if seen[id] {
			t.Errorf("batch %v in Kafka twice", id)
		}
		seen[id] = true
		if !bytes.Equal(r.Value, want) {
			t.Errorf("batch %v: value differs from the payload sent (%d vs %d bytes)", id, len(r.Value), len(want))
		}
		if string(r.Key) != id.VehicleID {
			t.Errorf("batch %v: key %q, want the vehicle id", id, r.Key)
		}
		if p := kafkaPartition(id.VehicleID, partitions); r.Partition != p {
			t.Errorf("batch %v on partition %d; Kafka's murmur2 partitioner puts key %q on %d", id, r.Partition, id.VehicleID, p)
		}
		if src, _ := header(r, kafkaio.HeaderSourceTopic); src != topics.Telemetry(id.VehicleID) {
			t.Errorf("batch %v: source_topic header %q", id, src)
		}
		if got, _ := header(r, kafkaio.HeaderBridgeID); got != bridgeID {
			t.Errorf("batch %v: bridge_id header %q, want %q", id, got, bridgeID)
		}
		at, _ := header(r, kafkaio.HeaderReceivedAt)
		ts, err := time.Parse(time.RFC3339Nano, at)
		if err != nil || ts.Before(before.Add(-time.Second)) || ts.After(after.Add(time.Second)) {
			t.Errorf("batch %v: received_at header %q (%v) is not the time it was relayed (%v to %v)", id, at, err, before, after)
		}
		// One vehicle's batches sit on one partition, so offset order is
		// their order: through one connection, with no retries, it is the
		// order they were sent in.
		if id.Seq <= lastSeq[id.VehicleID] {
			t.Errorf("%s: seq %d after %d", id.VehicleID, id.Seq, lastSeq[id.VehicleID])
		}
		lastSeq[id.VehicleID] = id.Seq
	}
}

// ackLog collects the Acks published to vehicles.
type ackLog struct {
	mu   sync.Mutex
	acks []*pb.Ack
	errs []string
}

func (l *ackLog) handler(_ mqtt.Client, msg mqtt.Message) {
	ack := &pb.Ack{}
	err := proto.Unmarshal(msg.Payload(), ack)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs = append(l.errs, fmt.Sprintf("%s: undecodable ack: %v", msg.Topic(), err))
		return
	}
	if topics.Ack(ack.GetVehicleId()) != msg.Topic() {
		l.errs = append(l.errs, fmt.Sprintf("ack for %q published on %s", ack.GetVehicleId(), msg.Topic()))
	}
	l.acks = append(l.acks, ack)
}

// acked returns every acked identity with how often it was acked, and
// problems with the form of the acks: ranges must be sorted, disjoint and
// merged (no two adjacent ranges of one epoch).
func (l *ackLog) acked() (map[wire.Identity]int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[wire.Identity]int{}
	problems := slices.Clone(l.errs)
	for _, a := range l.acks {
		var prev *pb.SeqRange
		for _, r := range a.GetRanges() {
			if r.GetLast() < r.GetFirst() {
				problems = append(problems, fmt.Sprintf("%s: range %v is reversed", a.GetVehicleId(), r))
			}
			if prev != nil && (r.GetEpoch() < prev.GetEpoch() || r.GetEpoch() == prev.GetEpoch() && r.GetFirst() <= prev.GetLast()+1) {
				problems = append(problems, fmt.Sprintf("%s: range %v after %v is not sorted, disjoint and merged", a.GetVehicleId(), r, prev))
			}
			prev = r
			for s := r.GetFirst(); s <= r.GetLast() && s-r.GetFirst() < 1<<16; s++ {
				out[wire.Identity{VehicleID: a.GetVehicleId(), Epoch: r.GetEpoch(), Seq: s}]++
			}
		}
	}
	return out, problems
}

func TestAcksVehiclesExactlyWhatKafkaHolds(t *testing.T) {
	e := newEnv(t)
	br := e.startBridge(e.config())
	br.waitSubscribed(t)

	var log ackLog
	cloud := e.client("ack-watcher")
	subscribe(t, cloud, "fleet/v1/+/ack", log.handler)

	// A gap (seq 4) and two epochs: the acks must say exactly this.
	want := map[wire.Identity]bool{}
	car := e.client("car")
	for _, id := range []wire.Identity{
		{VehicleID: "veh-a", Epoch: 11, Seq: 1}, {VehicleID: "veh-a", Epoch: 11, Seq: 2}, {VehicleID: "veh-a", Epoch: 11, Seq: 3},
		{VehicleID: "veh-a", Epoch: 11, Seq: 5}, {VehicleID: "veh-a", Epoch: 11, Seq: 6}, {VehicleID: "veh-a", Epoch: 12, Seq: 1},
		{VehicleID: "veh-b", Epoch: 11, Seq: 1}, {VehicleID: "veh-b", Epoch: 11, Seq: 2},
	} {
		want[id] = true
		publish(t, car, topics.Telemetry(id.VehicleID), batch(t, id.VehicleID, id.Epoch, id.Seq))
	}

	mqtttest.Eventually(t, "acks for every batch", func() error {
		got, _ := log.acked()
		if len(got) < len(want) {
			return fmt.Errorf("%d of %d batches acked", len(got), len(want))
		}
		return nil
	})
	got, problems := log.acked()
	for _, p := range problems {
		t.Error(p)
	}
	for id, n := range got {
		if !want[id] {
			t.Errorf("ack covers %v, which was never sent", id)
		}
		if n > 1 {
			t.Errorf("%v acked %d times", id, n)
		}
	}

	// Every acked batch is in Kafka: the ack is the agent's licence to
	// delete its copy.
	rs := &records{cl: e.consumer()}
	rs.until(t, "acked batches in Kafka", func(tel, _ []*kgo.Record) error {
		have := map[wire.Identity]bool{}
		for _, r := range tel {
			id, err := wire.DecodeIdentity(r.Value, wire.Limits{})
			if err != nil {
				return err
			}
			have[id] = true
		}
		for id := range got {
			if !have[id] {
				return fmt.Errorf("%v acked but not in Kafka", id)
			}
		}
		return nil
	})
}

// TestAckThrottleLeadingEdge: a vehicle that had no ack within the ack
// interval hears about its batch at once (it must not wait out the
// interval, here an hour: the agent would sit on a full spool and re-send);
// after that its acks wait for the interval or for AckBatches batches, and
// shutdown sends what still waits.
func TestAckThrottleLeadingEdge(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.AckInterval = time.Hour
	cfg.AckBatches = 3
	br := e.startBridge(cfg)
	br.waitSubscribed(t)
	var log ackLog
	subscribe(t, e.client("ack-watcher"), "fleet/v1/+/ack", log.handler)
	car := e.client("car")
	const vehicle = "veh-quiet"
	send := func(seqs ...uint64) {
		for _, q := range seqs {
			publish(t, car, topics.Telemetry(vehicle), batch(t, vehicle, 7, q))
		}
	}
	// waitAcks waits for the nth ack message and checks that it covers
	// exactly seqs first..last.
	waitAcks := func(n int, first, last uint64) {
		t.Helper()
		mqtttest.Eventually(t, fmt.Sprintf("ack message %d", n), func() error {
			log.mu.Lock()
			defer log.mu.Unlock()
			if len(log.acks) < n {
				return fmt.Errorf("%d ack messages", len(log.acks))
			}
			return nil
		})
		log.mu.Lock()
		defer log.mu.Unlock()
		if len(log.acks) != n {
			t.Fatalf("%d ack messages, want %d: %v", len(log.acks), n, log.acks)
		}
		rs := log.acks[n-1].GetRanges()
		if len(rs) != 1 || rs[0].GetEpoch() != 7 || rs[0].GetFirst() != first || rs[0].GetLast() != last {
			t.Fatalf("ack %d covers %v, want 7/%d..%d", n, rs, first, last)
		}
	}
	send(1)
	waitAcks(1, 1, 1) // at once: the first news in an interval
	send(2, 3, 4)
	waitAcks(2, 2, 4) // throttled: together, once AckBatches wait
	send(5)
	rs := &records{cl: e.consumer()}
	rs.until(t, "batch 5 in Kafka", func(tel, _ []*kgo.Record) error {
		if len(tel) < 5 {
			return fmt.Errorf("%d records", len(tel))
		}
		return nil
	})
	if err := br.stop(); err != nil {
		t.Fatal(err)
	}
	waitAcks(3, 5, 5) // the interval has not passed: it went at shutdown
}

// TestAckBookTiming drives the book's clock by hand: at once, throttled,
// due after the interval, and forgotten once quiet for an interval.
func TestAckBookTiming(t *testing.T) {
	book := newAckBook(time.Second, 32)
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	vehicles := func(acks []vehicleAck) []string {
		var out []string
		for _, a := range acks {
			out = append(out, fmt.Sprintf("%s:%d", a.vehicle, a.batches))
		}
		slices.Sort(out)
		return out
	}
	book.add(wire.Identity{VehicleID: "a", Epoch: 1, Seq: 1}, at(0))
	if got := vehicles(book.take(at(0), false)); !slices.Equal(got, []string{"a:1"}) {
		t.Fatalf("first news: took %v, want a at once", got)
	}
	book.add(wire.Identity{VehicleID: "a", Epoch: 1, Seq: 2}, at(100*time.Millisecond))
	book.add(wire.Identity{VehicleID: "a", Epoch: 1, Seq: 3}, at(200*time.Millisecond))
	if got := book.take(at(500*time.Millisecond), false); len(got) != 0 {
		t.Fatalf("within the interval: took %v", vehicles(got))
	}
	if got := vehicles(book.take(at(time.Second), false)); !slices.Equal(got, []string{"a:2"}) {
		t.Fatalf("after the interval: took %v, want a's two batches", got)
	}
	if got := book.take(at(2*time.Second), false); len(got) != 0 {
		t.Fatalf("quiet: took %v", vehicles(got))
	}
	for i := range book.shards {
		if n := len(book.shards[i].news); n != 0 {
			t.Fatalf("a vehicle quiet for an interval is still in the book (%d entries)", n)
		}
	}
	book.add(wire.Identity{VehicleID: "a", Epoch: 1, Seq: 4}, at(2*time.Second))
	if got := vehicles(book.take(at(2*time.Second), false)); !slices.Equal(got, []string{"a:1"}) {
		t.Fatalf("after a quiet interval: took %v, want a at once", got)
	}
}

func TestSeqRanges(t *testing.T) {
	r := func(first, last uint64) *pb.SeqRange { return &pb.SeqRange{Epoch: 9, First: first, Last: last} }
	for _, c := range []struct {
		seqs []uint64
		want []*pb.SeqRange
	}{
		{nil, nil},
		{[]uint64{4}, []*pb.SeqRange{r(4, 4)}},
		{[]uint64{1, 2, 3}, []*pb.SeqRange{r(1, 3)}},
		{[]uint64{3, 1, 2}, []*pb.SeqRange{r(1, 3)}},
		{[]uint64{1, 2, 2, 3, 3}, []*pb.SeqRange{r(1, 3)}},
		{[]uint64{1, 2, 4, 5, 9}, []*pb.SeqRange{r(1, 2), r(4, 5), r(9, 9)}},
		{[]uint64{0, math.MaxUint64}, []*pb.SeqRange{r(0, 0), r(math.MaxUint64, math.MaxUint64)}},
		{[]uint64{math.MaxUint64 - 1, math.MaxUint64}, []*pb.SeqRange{r(math.MaxUint64-1, math.MaxUint64)}},
	} {
		in := slices.Clone(c.seqs)
		got := SeqRanges(9, c.seqs)
		if len(got) != len(c.want) {
			t.Errorf("SeqRanges(%v) = %v, want %v", in, got, c.want)
			continue
		}
		for i := range got {
			if !proto.Equal(got[i], c.want[i]) {
				t.Errorf("SeqRanges(%v) = %v, want %v", in, got, c.want)
				break
			}
		}
		if !slices.Equal(in, c.seqs) {
			t.Errorf("SeqRanges modified its input: %v became %v", in, c.seqs)
		}
	}
}

// sysWatch follows a $SYS topic of the broker, keeping the values
// published after it subscribed (not the retained one).
type sysWatch struct {
	mu     sync.Mutex
	values []string
}

func (w *sysWatch) handler(_ mqtt.Client, msg mqtt.Message) {
	if msg.Retained() {
		return
	}
	w.mu.Lock()
	w.values = append(w.values, string(msg.Payload()))
	w.mu.Unlock()
}

func (w *sysWatch) last() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.values) == 0 {
		return ""
	}
	return w.values[len(w.values)-1]
}

func TestRejectsToDLQAndAcknowledges(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	br := e.startBridge(cfg)
	br.waitSubscribed(t)

	// A valid batch larger than the limit (random strings do not compress).
	rng := rand.New(rand.NewPCG(1, 2))
	big := &wire.Batch{Identity: wire.Identity{VehicleID: "veh-big", Epoch: 1, Seq: 1}, BaseTime: 1e18}
	for i := 0; i < 200; i++ {
		s := make([]byte, 32)
		for j := range s {
			s[j] = byte('a' + rng.IntN(26))
		}
		big.Readings = append(big.Readings, wire.Reading{Signal: "note", Time: 1e18 + int64(i)*1e6, Value: wire.String(string(s))})
	}
	oversized, err := wire.Encode(big, wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(oversized) <= cfg.MaxBatchBytes {
		t.Fatalf("oversized batch is only %d bytes", len(oversized))
	}
	garbage := []byte("\xff\xff\xff\xffthis is not a telemetry batch")
	if _, err := wire.Decode(garbage, wire.Limits{}); err == nil {
		t.Fatal("garbage decodes")
	}

	flipped := batch(t, "veh-flipped", 1, 1)
	flipped[len(flipped)/2] ^= 0x10
	// An amplification payload: a small batch whose body claims to
	// decompress to far more than any real one.
	env := &pb.Batch{}
	if err := proto.Unmarshal(batch(t, "veh-bomb", 1, 1), env); err != nil {
		t.Fatal(err)
	}
	env.Compression, env.UncompressedSize = pb.Compression_COMPRESSION_ZSTD, 1<<30
	bomb, err := wire.Seal(env)
	if err != nil {
		t.Fatal(err)
	}

	cases := map[string]struct {
		payload   []byte
		value     []byte // what the DLQ record holds
		wantError []string
		reason    string
	}{
		"veh-garbage": {garbage, garbage, []string{"malformed"}, ReasonMalformed},
		"veh-big":     {oversized, oversized[:cfg.MaxBatchBytes], []string{"too large", fmt.Sprint(len(oversized)), "truncated"}, ReasonTooLarge},
		"veh-honest":  {batch(t, "veh-liar", 1, 1), nil, []string{`"veh-liar"`, `"veh-honest"`, "does not match"}, ReasonVehicleMismatch},
		"veh-flipped": {flipped, nil, []string{"checksum"}, ReasonCorrupt},
		"veh-bomb":    {bomb, nil, []string{"too large", "claims"}, ReasonTooLarge},
	}
	car := e.client("car")
	for vehicle, c := range cases {
		publish(t, car, topics.Telemetry(vehicle), c.payload)
	}

	rs := &records{cl: e.consumer()}
	_, dlq := rs.until(t, "a DLQ record per bad payload", func(_, dlq []*kgo.Record) error {
		if len(dlq) < len(cases) {
			return fmt.Errorf("%d of %d", len(dlq), len(cases))
		}
		return nil
	})
	for _, r := range dlq {
		c, ok := cases[string(r.Key)]
		if !ok {
			t.Errorf("DLQ record with key %q", r.Key)
			continue
		}
		delete(cases, string(r.Key))
		want := c.value
		if want == nil {
			want = c.payload
		}
		if !bytes.Equal(r.Value, want) {
			t.Errorf("%s: DLQ value is %d bytes, want the %d rejected bytes", r.Key, len(r.Value), len(want))
		}
		reason, ok := header(r, kafkaio.HeaderError)
		if !ok {
			t.Errorf("%s: DLQ record has no error header", r.Key)
		}
		for _, w := range c.wantError {
			if !strings.Contains(reason, w) {
				t.Errorf("%s: error header %q does not say %q", r.Key, reason, w)
			}
		}
		if got, _ := header(r, kafkaio.HeaderReason); got != c.reason {
			t.Errorf("%s: reason header %q, want %q", r.Key, got, c.reason)
		}
		// Counted once Kafka has acknowledged the DLQ record to the
		// bridge, which may come just after a consumer can read it.
		mqtttest.Eventually(t, fmt.Sprintf("%s counted in fleet_bridge_dlq_total{reason=%q}", r.Key, c.reason), func() error {
			if v := metricValue(t, br.AdminURL(), `fleet_bridge_dlq_total{reason="`+c.reason+`"}`); v == "" || v == "0" {
				return fmt.Errorf("%q", v)
			}
			return nil
		})
		if src, _ := header(r, kafkaio.HeaderSourceTopic); src != topics.Telemetry(string(r.Key)) {
			t.Errorf("%s: source_topic header %q", r.Key, src)
		}
		if got, _ := header(r, kafkaio.HeaderBridgeID); got != bridgeID {
			t.Errorf("%s: bridge_id header %q", r.Key, got)
		}
	}
	for vehicle := range cases {
		t.Errorf("no DLQ record for %s", vehicle)
	}

	// The broker holds no unacknowledged message: the bridge acked the
	// rejected ones, so nothing will be delivered again. The broker reports
	// its in-flight count on $SYS every second.
	var inflight sysWatch
	subscribe(t, e.client("operator"), "$SYS/broker/messages/inflight", inflight.handler)
	mqtttest.Eventually(t, "the broker's in-flight count to reach 0", func() error {
		if v := inflight.last(); v != "0" {
			return fmt.Errorf("in flight: %q", v)
		}
		return nil
	})
	if n := e.endOffsets(topics.KafkaTelemetry); n != 0 {
		t.Errorf("%d records in the telemetry topic; want none", n)
	}
	if n := e.endOffsets(topics.KafkaDLQ); n != 5 {
		t.Errorf("%d records in the DLQ; want 5 (nothing redelivered)", n)
	}
	if v := metricValue(t, br.AdminURL(), `fleet_bridge_messages_total{result="dlq"}`); v != "5" {
		t.Errorf(`fleet_bridge_messages_total{result="dlq"} = %q, want 5`, v)
	}
}

// httpGet does one request without keeping the connection (no idle
// connection goroutines outlive the test).
func httpGet(url string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func metricValue(t *testing.T, adminURL, series string) string {
	t.Helper()
	code, body, err := httpGet(adminURL + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

func TestReadyz(t *testing.T) {
	t.Run("connected", func(t *testing.T) {
		e := newEnv(t)
		br := e.startBridge(e.config())
		mqtttest.Eventually(t, "/readyz 200", func() error {
			code, body, err := httpGet(br.AdminURL() + "/readyz")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%d %s %v", code, body, err)
			}
			var ready struct{ Ready bool }
			if err := json.Unmarshal([]byte(body), &ready); err != nil || !ready.Ready {
				return fmt.Errorf("body %q", body)
			}
			return nil
		})
		if code, _, err := httpGet(br.AdminURL() + "/healthz"); err != nil || code != http.StatusOK {
			t.Errorf("/healthz: %d %v", code, err)
		}
		mqtttest.Eventually(t, "every connection up", func() error {
			if v, want := metricValue(t, br.AdminURL(), "fleet_bridge_mqtt_connected"), fmt.Sprint(e.config().Connections); v != want {
				return fmt.Errorf("fleet_bridge_mqtt_connected = %q, want %s", v, want)
			}
			return nil
		})
	})
	t.Run("no broker", func(t *testing.T) {
		e := newEnv(t)
		closed := "tcp://" + testenv.FreeAddr(t) // nothing listens there
		cfg := e.config()
		cfg.MQTT.URL = closed
		br := e.startBridge(cfg)
		mqtttest.Eventually(t, "/readyz 503 naming mqtt", func() error {
			code, body, err := httpGet(br.AdminURL() + "/readyz")
			if err != nil {
				return err
			}
			var ready struct {
				Ready   bool
				Failing map[string]string
			}
			if code != http.StatusServiceUnavailable || json.Unmarshal([]byte(body), &ready) != nil || ready.Ready || ready.Failing["mqtt"] == "" {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
		if err := br.stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// paho's Disconnect returns before its goroutine gives up the
		// connection attempt in progress; that goroutine must still end.
		mqtttest.Eventually(t, "paho's goroutines to end", func() error {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			for _, g := range strings.Split(stacks, "\n\n") {
				if strings.Contains(g, "eclipse/paho") {
					return fmt.Errorf("a paho goroutine is still running:\n%s", g)
				}
			}
			return nil
		})
	})
}

func TestShutdownDrainsInFlightBatches(t *testing.T) {
	// Registered first, so it runs after every other cleanup. Goroutines
	// of earlier tests still winding down are not this test's.
	earlier := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, earlier) })
	e := newEnv(t)
	cfg := e.config()
	// Records wait for the linger, so when Run is cancelled every batch is
	// still on its way to Kafka.
	cfg.Linger = 300 * time.Millisecond
	cfg.AckInterval = time.Hour // only the final acks at shutdown
	br := e.startBridge(cfg)
	br.waitSubscribed(t)

	var log ackLog
	subscribe(t, e.client("ack-watcher"), "fleet/v1/+/ack", log.handler)
	car := e.client("car")
	want := map[wire.Identity]bool{}
	var toks []mqtt.Token
	for seq := uint64(1); seq <= 50; seq++ {
		for _, v := range []string{"veh-x", "veh-y", "veh-z"} {
			want[wire.Identity{VehicleID: v, Epoch: 5, Seq: seq}] = true
			toks = append(toks, car.Publish(topics.Telemetry(v), 1, false, batch(t, v, 5, seq)))
		}
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	// Another car keeps publishing while the bridge shuts down.
	late := e.client("late-car")
	var lateBatches [][]byte
	for seq := uint64(1); seq <= 200; seq++ {
		lateBatches = append(lateBatches, batch(t, "veh-late", 5, seq))
	}
	lateDone := make(chan struct{})
	go func() {
		defer close(lateDone)
		for _, b := range lateBatches {
			late.Publish(topics.Telemetry("veh-late"), 1, false, b).WaitTimeout(time.Second)
		}
	}()
	if err := br.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	<-lateDone

	// What reached Kafka before Run returned was acked to the vehicles,
	// and nothing was acked that Kafka does not hold.
	inKafka := map[wire.Identity]bool{}
	total := e.endOffsets(topics.KafkaTelemetry)
	rs := &records{cl: e.consumer()}
	tel, _ := rs.until(t, "the drained batches", func(tel, _ []*kgo.Record) error {
		if int64(len(tel)) < total {
			return fmt.Errorf("read %d of %d", len(tel), total)
		}
		return nil
	})
	for _, r := range tel {
		id, err := wire.DecodeIdentity(r.Value, wire.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		inKafka[id] = true
	}
	if len(inKafka) == 0 {
		t.Fatal("nothing reached Kafka during the drain")
	}
	mqtttest.Eventually(t, "acks for every drained batch", func() error {
		got, _ := log.acked()
		for id := range inKafka {
			if got[id] == 0 {
				return fmt.Errorf("%v is in Kafka but was not acked (%d acked, %d in Kafka, %d ack messages)", id, len(got), len(inKafka), len(log.acks))
			}
		}
		return nil
	})
	got, problems := log.acked()
	for _, p := range problems {
		t.Error(p)
	}
	for id := range got {
		if !inKafka[id] {
			t.Errorf("%v acked but not in Kafka", id)
		}
	}

	// Whatever the first bridge did not ack, the agent sends again (here,
	// the test does): a new bridge relays it, so nothing is lost.
	br2 := e.startBridge(cfg)
	br2.waitSubscribed(t)
	resendUnacked(t, car, &log, want)
	rs.until(t, "every batch in Kafka after a restart", func(tel, _ []*kgo.Record) error {
		return holdsAll(tel, want)
	})
	if err := br2.stop(); err != nil {
		t.Fatalf("second Run: %v", err)
	}
}

// resendUnacked publishes again, as an agent does after its ack timeout,
// every batch of want not acked yet.
func resendUnacked(t *testing.T, car mqtt.Client, log *ackLog, want map[wire.Identity]bool) {
	t.Helper()
	got, _ := log.acked()
	for id := range want {
		if got[id] == 0 {
			publish(t, car, topics.Telemetry(id.VehicleID), batch(t, id.VehicleID, id.Epoch, id.Seq))
		}
	}
}

// holdsAll says which batch of want the records lack, if any.
func holdsAll(tel []*kgo.Record, want map[wire.Identity]bool) error {
	have := map[wire.Identity]bool{}
	for _, r := range tel {
		id, err := wire.DecodeIdentity(r.Value, wire.Limits{})
		if err != nil {
			return err
		}
		have[id] = true
	}
	for id := range want {
		if !have[id] {
			return fmt.Errorf("%v missing (%d of %d there)", id, len(have), len(want))
		}
	}
	return nil
}

// TestUnreachableKafkaLosesNothing: batches Kafka does not take stay in
// flight (retried), are never acked to the vehicle, and are given up at
// shutdown; the agent's re-send then brings them in through a bridge that
// reaches Kafka.
func TestUnreachableKafkaLosesNothing(t *testing.T) {
	e := newEnv(t)
	nowhere := testenv.FreeAddr(t) // nothing listens there
	down := e.config()
	down.Kafka.Brokers = []string{nowhere}
	down.CreateTopics = false
	down.DrainTimeout = 300 * time.Millisecond
	br := e.startBridge(down)
	br.waitSubscribed(t)

	var log ackLog
	subscribe(t, e.client("ack-watcher"), "fleet/v1/+/ack", log.handler)
	car := e.client("car")
	want := map[wire.Identity]bool{}
	for seq := uint64(1); seq <= 10; seq++ {
		want[wire.Identity{VehicleID: "veh-k", Epoch: 2, Seq: seq}] = true
		publish(t, car, topics.Telemetry("veh-k"), batch(t, "veh-k", 2, seq))
	}
	mqtttest.Eventually(t, "the bridge to hold the batches", func() error {
		if v := metricValue(t, br.AdminURL(), "fleet_bridge_inflight"); v != "10" {
			return fmt.Errorf("fleet_bridge_inflight %q", v)
		}
		return nil
	})
	if err := br.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, _ := log.acked(); len(got) != 0 {
		t.Fatalf("vehicle acked for %d batches Kafka never had", len(got))
	}

	e.startBridge(e.config()).waitSubscribed(t)
	resendUnacked(t, car, &log, want)
	rs := &records{cl: e.consumer()}
	rs.until(t, "the batches in Kafka after the re-send", func(tel, _ []*kgo.Record) error {
		return holdsAll(tel, want)
	})
	mqtttest.Eventually(t, "acks for them", func() error {
		got, _ := log.acked()
		for id := range want {
			if got[id] == 0 {
				return fmt.Errorf("%v not acked", id)
			}
		}
		return nil
	})
}

// bridgeProgram is how the bridge binary parses its configuration.
var bridgeProgram = cli.Program{Name: "bridge", EnvPrefix: "FLEET_BRIDGE"}

func configDir() string { return filepath.Join(testenv.RepoRoot(), "testdata", "config", "bridge") }

// TestConfigFiles parses every testdata/config/bridge file as
// `bridge --config FILE` does.
func TestConfigFiles(t *testing.T) {
	clitest.ConfigFiles(t, bridgeProgram, configDir(), func() *Config { return &Config{} }, nil, 2, 6)
}

// TestConfigFileValues checks a file's settings land in the Config, and
// that flags override the file.
func TestConfigFileValues(t *testing.T) {
	var cfg Config
	file := filepath.Join(configDir(), "full.good.yaml")
	if _, err := cli.Parse(bridgeProgram, &cfg, []string{"--config", file, "--linger", "20ms"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.MQTT.URL = "ssl://mqtt.fleet.example:8883"
	want.MQTT.ClientID = "fleet-bridge-eu-1"
	want.MQTT.Username = "bridge"
	want.MQTT.Password = "s3cret"
	want.MQTT.KeepAlive = 45 * time.Second
	want.Kafka.Brokers = cli.StringList{"kafka-0:9092", "kafka-1:9092", "kafka-2:9092"}
	want.Kafka.ClientID = "fleet-bridge-eu-1"
	want.Kafka.SASLMechanism = "scram-sha-512"
	want.Kafka.SASLUser = "bridge"
	want.Kafka.SASLPassword = "s3cret"
	want.Kafka.TLS = true
	want.ShareGroup = "bridges-eu"
	want.Topic = "fleet.telemetry.eu.v1"
	want.DLQTopic = "fleet.telemetry.eu.dlq.v1"
	want.CreateTopics = false
	want.Partitions = 24
	want.Replication = 3
	want.BridgeID = "eu-1"
	want.Listen = "0.0.0.0:9101"
	want.MaxBatchBytes = 262144
	want.Linger = 20 * time.Millisecond // the flag wins over the file's 10ms
	want.AckInterval = 250 * time.Millisecond
	want.DrainTimeout = 30 * time.Second
	if fmt.Sprintf("%+v", cfg) != fmt.Sprintf("%+v", want) {
		t.Errorf("config\n got %+v\nwant %+v", cfg, want)
	}
}

// catalogBatch encodes a batch that refers to cat instead of naming its
// signals.
func catalogBatch(t *testing.T, cat *wire.Catalog, vehicle string, seq uint64) []byte {
	t.Helper()
	base := time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Second).UnixNano()
	b := &wire.Batch{Identity: wire.Identity{VehicleID: vehicle, Epoch: 1, Seq: seq}, BaseTime: base, AgentVersion: "test", Decoder: "test:v1"}
	for i := int64(0); i < 10; i++ {
		b.Readings = append(b.Readings, wire.Reading{Signal: "ENGINE.RPM", Unit: "rpm", Time: base + i*1e7,
			Value: wire.Float(wire.Physical(3000+i, 0.25, 0)), Scale: 0.25, Raw: 3000 + i})
	}
	data, err := wire.Encode(b, wire.EncodeOptions{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestRegistersCatalogs(t *testing.T) {
	e := newEnv(t)
	br := e.startBridge(e.config())
	br.waitSubscribed(t)

	var log ackLog
	cloud := e.client("ack-watcher")
	subscribe(t, cloud, "fleet/v1/+/ack", log.handler)
	cat, err := wire.NewCatalog([]wire.SignalSpec{{Name: "ENGINE.RPM", Unit: "rpm", Kind: wire.KindDouble, Scale: 0.25}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := wire.NewCatalog([]wire.SignalSpec{{Name: "ENGINE.RPM", Unit: "rpm", Kind: wire.KindDouble, Scale: 0.5}})
	if err != nil {
		t.Fatal(err)
	}

	car := e.client("car")
	publish(t, car, topics.Catalog("veh-c"), []byte("\xff\xff not a catalog"))
	publish(t, car, topics.Catalog("veh-c"), cat.Bytes())
	mqtttest.Eventually(t, "the catalog acked to the vehicle", func() error {
		log.mu.Lock()
		defer log.mu.Unlock()
		named := 0
		for _, a := range log.acks {
			for _, id := range a.GetCatalogs() {
				if a.GetVehicleId() != "veh-c" || !bytes.Equal(id, cat.ID()) {
					return fmt.Errorf("ack for %s names catalog %x, want only %x", a.GetVehicleId(), id, cat.ID())
				}
				named++
			}
		}
		if named == 0 {
			return errors.New("no ack names a catalog yet")
		}
		return nil
	})

	// The ack came after Kafka held it, under its id.
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cluster.ListenAddrs()...), kgo.ConsumeTopics(topics.KafkaCatalog),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	recs := cl.PollFetches(ctx).Records()
	if len(recs) != 1 || string(recs[0].Key) != hex.EncodeToString(cat.ID()) || !bytes.Equal(recs[0].Value, cat.Bytes()) {
		t.Fatalf("catalog topic holds %d records (first key %q), want the one catalog under its id", len(recs), func() string {
			if len(recs) == 0 {
				return ""
			}
			return string(recs[0].Key)
		}())
	}

	// Batches referring to it are relayed; one referring to a catalog
	// nobody registered goes to the DLQ, as does the unreadable catalog.
	publish(t, car, topics.Telemetry("veh-c"), catalogBatch(t, cat, "veh-c", 1))
	publish(t, car, topics.Telemetry("veh-c"), catalogBatch(t, other, "veh-c", 2))
	publish(t, car, topics.Telemetry("veh-c"), catalogBatch(t, cat, "veh-c", 3))
	rs := &records{cl: e.consumer()}
	tel, dlq := rs.until(t, "two batches relayed, two payloads dead-lettered", func(tel, dlq []*kgo.Record) error {
		if len(tel) < 2 || len(dlq) < 2 {
			return fmt.Errorf("%d relayed, %d dead-lettered", len(tel), len(dlq))
		}
		return nil
	})
	for _, r := range tel {
		id, err := wire.DecodeIdentity(r.Value, wire.Limits{})
		if err != nil || id.Seq == 2 {
			t.Errorf("relayed %v (%v); seq 2 refers to an unregistered catalog", id, err)
		}
	}
	reasons := []string{}
	for _, r := range dlq {
		msg, _ := header(r, kafkaio.HeaderError)
		reasons = append(reasons, msg)
	}
	slices.Sort(reasons)
	if len(reasons) != 2 || !strings.Contains(reasons[0], "catalog: malformed") || !strings.Contains(reasons[1], "unknown catalog") {
		t.Errorf("DLQ reasons %q, want an unreadable catalog and an unknown one", reasons)
	}
	if got := metricValue(t, br.AdminURL(), `fleet_bridge_catalogs_total{result="registered"}`); got != "1" {
		t.Errorf("catalogs registered metric = %s, want 1", got)
	}
}
