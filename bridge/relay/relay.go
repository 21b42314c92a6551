// Package relay moves telemetry batches from MQTT to Kafka without losing
// any: it takes vehicles' batches from an MQTT shared subscription, validates
// each one, produces it to Kafka keyed by vehicle ID (idempotent producer,
// acks=all, Kafka's murmur2 partitioning), and acknowledges the MQTT message
// only once Kafka holds the record. It then tells each vehicle, on
// fleet/v1/{vehicle_id}/ack, which (epoch, seq) ranges Kafka holds, so the
// agent can free its spool.
//
// A payload that fails validation (too large, undecodable, or carrying a
// vehicle ID other than its topic's) goes to the dead-letter topic with an
// `error` header and is then acknowledged. A batch Kafka did not take is not
// acknowledged, so the broker delivers it again.
//
// Vehicles register signal catalogs on fleet/v1/{vehicle_id}/catalog (see
// wire.Catalog); the bridge checks each, stores it in the compacted catalog
// topic keyed by its id, and lists it in the vehicle's next ack, after which
// the vehicle's batches may refer to it. Batches that do are validated
// against the catalog topic (internal/catalogstore).
//
// Metrics (namespace fleet_bridge):
//
//	fleet_bridge_messages_total{result="produced|dlq|failed"}  MQTT messages handled (batches and catalogs)
//	fleet_bridge_catalogs_total{result="registered|dlq|failed"} MQTT catalog messages handled
//	fleet_bridge_readings_total                               readings in produced batches
//	fleet_bridge_bytes_total                                  payload bytes produced
//	fleet_bridge_inflight                                     messages awaiting Kafka
//	fleet_bridge_produce_seconds                              MQTT receipt to Kafka ack
//	fleet_bridge_acks_published_total                         end-to-end ack messages sent
//	fleet_bridge_mqtt_connected                               1 while connected to the broker
//	fleet_bridge_mqtt_connects_total                          successful (re)connections
//
// plus the franz-go client metrics under fleet_kafka_*.
package relay

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Deps are the bridge's dependencies.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Bridge relays batches from MQTT to Kafka. Build it with New, run it with
// Run; a Bridge runs once.
type Bridge struct {
	cfg    Config
	logger *slog.Logger
	m      *metrics
	kafka  *kgo.Client
	mqtt   mqtt.Client
	admin  *admin.Server
	// catalogs resolves the catalogs batches refer to.
	catalogs *catalogstore.Store

	order    ackQueue
	e2e      vehicleAcks
	inflight sync.WaitGroup
	// produceCtx is cancelled when shutdown gives up waiting for Kafka.
	produceCtx    context.Context
	produceCancel context.CancelFunc
	connected     atomic.Bool
	// draining, set under drainMu when Run starts waiting for inflight,
	// makes onMessage leave later messages unacknowledged for redelivery,
	// so inflight.Add never races inflight.Wait.
	drainMu  sync.Mutex
	draining bool
}

// New builds the bridge: the Kafka producer, the MQTT client and the admin
// server (whose port is bound here). Nothing connects until Run.
func New(cfg Config, deps Deps) (*Bridge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Bridge{cfg: cfg, logger: deps.Logger, m: newMetrics(deps.Registerer)}
	b.produceCtx, b.produceCancel = context.WithCancel(context.Background())

	kopts, err := cfg.Kafka.Opts(deps.Logger, deps.Registerer)
	if err != nil {
		return nil, err
	}
	kopts = append(kopts,
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // murmur2, as Kafka's own clients
		kgo.ProducerLinger(cfg.Linger),
		kgo.ProducerBatchCompression(kgo.NoCompression()), // payloads are zstd already
		kgo.ProducerBatchMaxBytes(int32(max(cfg.MaxBatchBytes*2, 1<<20))),
	)
	if b.kafka, err = kgo.NewClient(kopts...); err != nil {
		return nil, fmt.Errorf("bridge: kafka client: %w", err)
	}

	mopts, err := cfg.MQTT.ClientOptions()
	if err != nil {
		b.kafka.Close()
		return nil, err
	}
	mopts.SetAutoAckDisabled(true) // ack only after Kafka holds the batch
	mopts.SetOrderMatters(true)    // handler sees messages in arrival order
	mopts.SetOnConnectHandler(b.onConnect)
	mopts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		b.connected.Store(false)
		b.m.connected.Set(0)
		b.logger.Warn("mqtt connection lost", "err", err)
	})
	b.mqtt = mqtt.NewClient(mopts)

	if b.catalogs, err = catalogstore.New(cfg.Kafka, cfg.CatalogTopic, deps.Logger); err != nil {
		b.kafka.Close()
		return nil, err
	}

	b.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: deps.Logger, Gatherer: deps.Gatherer})
	if err != nil {
		b.kafka.Close()
		b.catalogs.Close()
		return nil, err
	}
	b.admin.AddReadyCheck("mqtt", func(context.Context) error {
		if !b.connected.Load() {
			return errors.New("not connected to the MQTT broker")
		}
		return nil
	})
	b.admin.AddReadyCheck("kafka", func(ctx context.Context) error { return b.kafka.Ping(ctx) })
	return b, nil
}

// AdminURL is the URL of the metrics and health endpoints.
func (b *Bridge) AdminURL() string { return b.admin.URL() }

// Run relays until ctx is cancelled. It then stops taking messages, waits
// up to the drain timeout for in-flight batches to reach Kafka (acking them
// over MQTT and to the vehicles), and disconnects.
func (b *Bridge) Run(ctx context.Context) error {
	defer b.kafka.Close()
	defer b.catalogs.Close()
	if b.cfg.CreateTopics {
		if err := b.createTopics(ctx); err != nil {
			return err
		}
	}
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	g, gctx := errgroup.WithContext(adminCtx)
	g.Go(func() error { return b.admin.Run(gctx) })

	b.logger.Info("bridge starting", "mqtt", b.cfg.MQTT.URL, "kafka", b.cfg.Kafka.Brokers.String(),
		"topic", b.cfg.Topic, "subscription", topics.SharedTelemetryFilter(b.cfg.ShareGroup), "admin", b.admin.URL())
	b.mqtt.Connect() // retries in the background until connected or Disconnect

	ackCtx, stopAcks := context.WithCancel(context.Background())
	ackDone := make(chan struct{})
	go func() { defer close(ackDone); b.publishAcksEvery(ackCtx) }()

	<-ctx.Done()
	b.logger.Info("bridge draining")
	if b.mqtt.IsConnectionOpen() {
		t := b.mqtt.Unsubscribe(topics.SharedTelemetryFilter(b.cfg.ShareGroup), topics.SharedCatalogFilter(b.cfg.ShareGroup))
		t.WaitTimeout(2 * time.Second)
	}
	b.drainMu.Lock()
	b.draining = true
	b.drainMu.Unlock()
	if !waitTimeout(&b.inflight, b.cfg.DrainTimeout) {
		b.logger.Warn("drain timed out; unacknowledged batches will be redelivered by the broker")
		b.produceCancel()
		b.inflight.Wait()
	}
	stopAcks()
	<-ackDone
	// The last ones: wait for their PUBACKs, or Disconnect may close the
	// connection before paho has written them.
	deadline := time.Now().Add(2 * time.Second)
	for _, t := range b.publishAcks() {
		t.WaitTimeout(time.Until(deadline))
	}
	b.mqtt.Disconnect(500)
	b.produceCancel()
	stopAdmin()
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	b.logger.Info("bridge stopped")
	return nil
}

func (b *Bridge) createTopics(ctx context.Context) error {
	compact := "compact"
	specs := []kafkaio.TopicSpec{
		{Name: b.cfg.Topic, Partitions: int32(b.cfg.Partitions), Replication: int16(b.cfg.Replication)},
		{Name: b.cfg.DLQTopic, Partitions: int32(b.cfg.Partitions), Replication: int16(b.cfg.Replication)},
		// Catalogs are few and small: one partition, kept forever by key.
		{Name: b.cfg.CatalogTopic, Partitions: 1, Replication: int16(b.cfg.Replication), Configs: map[string]*string{"cleanup.policy": &compact}},
	}
	for delay := 500 * time.Millisecond; ; delay = min(delay*2, 10*time.Second) {
		err := kafkaio.EnsureTopics(ctx, b.kafka, specs...)
		if err == nil {
			// The topic may have existed before, made by hand or by a
			// broker that auto-creates topics: say loudly if it would
			// forget catalogs that old batches need.
			if cerr := kafkaio.CheckCompacted(ctx, b.kafka, b.cfg.CatalogTopic); cerr != nil {
				b.logger.Error("catalog topic misconfigured: batches referring to expired catalogs become undecodable", "err", cerr)
			}
			return nil
		}
		b.logger.Warn("cannot create topics yet; retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (b *Bridge) onConnect(c mqtt.Client) {
	b.connected.Store(true)
	b.m.connected.Set(1)
	b.m.connects.Inc()
	filters := map[string]byte{topics.SharedTelemetryFilter(b.cfg.ShareGroup): 1, topics.SharedCatalogFilter(b.cfg.ShareGroup): 1}
	t := c.SubscribeMultiple(filters, b.route)
	go func() {
		if t.WaitTimeout(10*time.Second) && t.Error() == nil {
			b.logger.Info("subscribed", "filters", slices.Sorted(maps.Keys(filters)))
			return
		}
		b.logger.Error("subscribe failed", "filters", slices.Sorted(maps.Keys(filters)), "err", t.Error())
	}()
}

// route hands a message to the handler of its topic.
func (b *Bridge) route(c mqtt.Client, msg mqtt.Message) {
	if _, ok := topics.VehicleFromCatalog(msg.Topic()); ok {
		b.onCatalog(msg)
		return
	}
	b.onMessage(c, msg)
}

// begin registers a message as in flight and returns the function that
// completes it (acking it over MQTT, in arrival order, if ack), or false if
// the bridge is draining and the message must be left for redelivery.
func (b *Bridge) begin(msg mqtt.Message) (finish func(ack bool), ok bool) {
	b.drainMu.Lock()
	if b.draining {
		b.drainMu.Unlock()
		return nil, false
	}
	b.inflight.Add(1)
	b.drainMu.Unlock()
	slot := b.order.push(msg)
	b.m.inflight.Inc()
	return func(ack bool) {
		b.order.complete(slot, ack)
		b.m.inflight.Dec()
		b.inflight.Done()
	}, true
}

// recordHeaders are the headers of every record the bridge produces for an
// MQTT message of topic received at received.
func (b *Bridge) recordHeaders(topic string, received time.Time) []kgo.RecordHeader {
	return []kgo.RecordHeader{
		{Key: kafkaio.HeaderSourceTopic, Value: []byte(topic)},
		{Key: kafkaio.HeaderReceivedAt, Value: []byte(received.UTC().Format(time.RFC3339Nano))},
		{Key: kafkaio.HeaderBridgeID, Value: []byte(b.cfg.BridgeID)},
	}
}

// onCatalog registers a vehicle's catalog: checked, stored in the catalog
// topic under its id, then acked to the vehicle.
func (b *Bridge) onCatalog(msg mqtt.Message) {
	finish, ok := b.begin(msg)
	if !ok {
		return
	}
	vehicleID, _ := topics.VehicleFromCatalog(msg.Topic())
	payload := msg.Payload()
	headers := b.recordHeaders(msg.Topic(), time.Now())
	cat, err := wire.ParseCatalog(payload, wire.Limits{MaxBodyBytes: b.cfg.MaxBatchBytes})
	if err == nil && !wire.ValidVehicleID(vehicleID) {
		err = fmt.Errorf("vehicle id %q in the topic is not valid", vehicleID)
	}
	if err != nil {
		b.m.catalogs.WithLabelValues("dlq").Inc()
		b.deadLetter([]byte(vehicleID), payload, headers, fmt.Errorf("catalog: %w", err), finish)
		return
	}
	id := cat.ID()
	if _, known := b.catalogs.Catalog(id); known {
		// Kafka holds it already (another car of the model registered it,
		// or this one before a restart): ack without a new record.
		b.m.catalogs.WithLabelValues("registered").Inc()
		b.e2e.addCatalog(vehicleID, id)
		finish(true)
		return
	}
	rec := &kgo.Record{Topic: b.cfg.CatalogTopic, Key: []byte(hex.EncodeToString(id)), Value: payload, Headers: headers}
	b.kafka.Produce(b.produceCtx, rec, func(_ *kgo.Record, err error) {
		if err != nil {
			b.m.catalogs.WithLabelValues("failed").Inc()
			b.logger.Warn("catalog not produced; leaving it unacknowledged for redelivery", "vehicle", vehicleID, "err", err)
			finish(false)
			return
		}
		b.m.catalogs.WithLabelValues("registered").Inc()
		b.logger.Info("catalog registered", "vehicle", vehicleID, "catalog", hex.EncodeToString(id), "signals", cat.Len())
		b.e2e.addCatalog(vehicleID, id)
		finish(true)
	})
}

// onMessage is called by paho for each message, one at a time in arrival
// order. It must not block for long: the produce is asynchronous.
func (b *Bridge) onMessage(_ mqtt.Client, msg mqtt.Message) {
	finish, ok := b.begin(msg)
	if !ok {
		return // not acknowledged: the broker delivers it again
	}
	received := time.Now()

	payload := msg.Payload()
	vehicleID, ok := topics.VehicleFromTelemetry(msg.Topic())
	headers := b.recordHeaders(msg.Topic(), received)
	if !ok {
		b.deadLetter(nil, payload, headers, fmt.Errorf("topic %q is not fleet/v1/{vehicle_id}/telemetry", msg.Topic()), finish)
		return
	}
	lim := wire.Limits{MaxBatchBytes: b.cfg.MaxBatchBytes, Catalogs: b.catalogs}
	batch, err := wire.Decode(payload, lim)
	if errors.Is(err, wire.ErrUnknownCatalog) {
		// A catalog registered through another replica, or just now: read
		// the catalog topic, off paho's goroutine (the ack order is kept
		// by the slot taken above).
		go func() {
			ctx, cancel := context.WithTimeout(b.produceCtx, catalogWait)
			defer cancel()
			batch, err := b.catalogs.Decode(ctx, payload, lim)
			b.relay(vehicleID, payload, headers, batch, err, received, finish)
		}()
		return
	}
	b.relay(vehicleID, payload, headers, batch, err, received, finish)
}

// catalogWait bounds the catch-up with the catalog topic for one batch.
const catalogWait = 30 * time.Second

// relay produces a decoded batch, or dead-letters one that failed
// validation. A batch that could not be checked (the catalog topic out of
// reach) is left unacknowledged for redelivery.
func (b *Bridge) relay(vehicleID string, payload []byte, headers []kgo.RecordHeader, batch *wire.Batch, err error,
	received time.Time, finish func(bool)) {
	if err != nil && !wire.IsInvalid(err) {
		b.m.messages.WithLabelValues("failed").Inc()
		b.logger.Warn("batch not checked; leaving it unacknowledged for redelivery", "vehicle", vehicleID, "err", err)
		finish(false)
		return
	}
	if err != nil {
		b.deadLetter([]byte(vehicleID), payload, headers, err, finish)
		return
	}
	if batch.VehicleID != vehicleID {
		b.deadLetter([]byte(vehicleID), payload, headers,
			fmt.Errorf("payload vehicle_id %q does not match topic vehicle %q", batch.VehicleID, vehicleID), finish)
		return
	}
	readings := len(batch.Readings) + len(batch.Fixes)
	rec := &kgo.Record{Topic: b.cfg.Topic, Key: []byte(vehicleID), Value: payload, Headers: headers}
	b.kafka.Produce(b.produceCtx, rec, func(_ *kgo.Record, err error) {
		if err != nil {
			if permanent(err) {
				b.deadLetter([]byte(vehicleID), payload, headers, fmt.Errorf("kafka refused the batch: %w", err), finish)
				return
			}
			b.m.messages.WithLabelValues("failed").Inc()
			b.logger.Warn("batch not produced; leaving it unacknowledged for redelivery", "batch", batch.Identity, "err", err)
			finish(false)
			return
		}
		b.m.messages.WithLabelValues("produced").Inc()
		b.m.readings.Add(float64(readings))
		b.m.bytes.Add(float64(len(payload)))
		b.m.produceSeconds.Observe(time.Since(received).Seconds())
		b.e2e.add(batch.Identity)
		finish(true)
	})
}

// permanent reports whether a produce error will not go away by retrying
// the same record (franz-go has already retried the retriable ones).
func permanent(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, kgo.ErrClientClosed) ||
		errors.Is(err, kgo.ErrRecordTimeout) || errors.Is(err, kgo.ErrRecordRetries) {
		return false
	}
	var ke *kerr.Error
	return errors.As(err, &ke) && !ke.Retriable
}

// deadLetter sends a rejected payload to the DLQ, acknowledging the MQTT
// message once Kafka holds it.
func (b *Bridge) deadLetter(key, payload []byte, headers []kgo.RecordHeader, reason error, finish func(bool)) {
	b.logger.Warn("rejecting payload to the DLQ", "key", string(key), "bytes", len(payload), "reason", reason)
	if len(payload) > b.cfg.MaxBatchBytes {
		payload = payload[:b.cfg.MaxBatchBytes] // keep the DLQ record producible; the error says it was cut
		reason = fmt.Errorf("%w (payload truncated to %d bytes)", reason, b.cfg.MaxBatchBytes)
	}
	hs := append(append([]kgo.RecordHeader(nil), headers...), kgo.RecordHeader{Key: kafkaio.HeaderError, Value: []byte(reason.Error())})
	rec := &kgo.Record{Topic: b.cfg.DLQTopic, Key: key, Value: payload, Headers: hs}
	b.kafka.Produce(b.produceCtx, rec, func(_ *kgo.Record, err error) {
		if err != nil {
			b.m.messages.WithLabelValues("failed").Inc()
			b.logger.Error("DLQ produce failed; leaving the message unacknowledged", "err", err)
			finish(false)
			return
		}
		b.m.messages.WithLabelValues("dlq").Inc()
		finish(true)
	})
}

func (b *Bridge) publishAcksEvery(ctx context.Context) {
	t := time.NewTicker(b.cfg.AckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.publishAcks()
		}
	}
}

// publishAcks sends each vehicle the ranges Kafka took since the last call.
// Acks are best effort: an agent that misses one re-sends the batch, and
// the duplicate is dropped downstream by batch identity. It returns the
// publish tokens for a caller that must know the broker has them.
func (b *Bridge) publishAcks() []mqtt.Token {
	var toks []mqtt.Token
	for vehicleID, payload := range b.e2e.drain() {
		toks = append(toks, b.mqtt.Publish(topics.Ack(vehicleID), 1, false, payload)) // paho delivers it; no need to wait
		b.m.acksPublished.Inc()
	}
	return toks
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
