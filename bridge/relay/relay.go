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
// Metrics (namespace fleet_bridge):
//
//	fleet_bridge_messages_total{result="produced|dlq|failed"}  MQTT messages handled
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
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/internal/admin"
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

	b.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: deps.Logger, Gatherer: deps.Gatherer})
	if err != nil {
		b.kafka.Close()
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
		t := b.mqtt.Unsubscribe(topics.SharedTelemetryFilter(b.cfg.ShareGroup))
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
	specs := []kafkaio.TopicSpec{
		{Name: b.cfg.Topic, Partitions: int32(b.cfg.Partitions), Replication: int16(b.cfg.Replication)},
		{Name: b.cfg.DLQTopic, Partitions: int32(b.cfg.Partitions), Replication: int16(b.cfg.Replication)},
	}
	for delay := 500 * time.Millisecond; ; delay = min(delay*2, 10*time.Second) {
		err := kafkaio.EnsureTopics(ctx, b.kafka, specs...)
		if err == nil {
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
	filter := topics.SharedTelemetryFilter(b.cfg.ShareGroup)
	t := c.Subscribe(filter, 1, b.onMessage)
	go func() {
		if t.WaitTimeout(10*time.Second) && t.Error() == nil {
			b.logger.Info("subscribed", "filter", filter)
			return
		}
		b.logger.Error("subscribe failed", "filter", filter, "err", t.Error())
	}()
}

// onMessage is called by paho for each message, one at a time in arrival
// order. It must not block for long: the produce is asynchronous.
func (b *Bridge) onMessage(_ mqtt.Client, msg mqtt.Message) {
	b.drainMu.Lock()
	if b.draining {
		b.drainMu.Unlock()
		return // not acknowledged: the broker delivers it again
	}
	b.inflight.Add(1)
	b.drainMu.Unlock()
	received := time.Now()
	slot := b.order.push(msg)
	b.m.inflight.Inc()
	finish := func(ack bool) {
		b.order.complete(slot, ack)
		b.m.inflight.Dec()
		b.inflight.Done()
	}

	payload := msg.Payload()
	vehicleID, ok := topics.VehicleFromTelemetry(msg.Topic())
	headers := []kgo.RecordHeader{
		{Key: kafkaio.HeaderSourceTopic, Value: []byte(msg.Topic())},
		{Key: kafkaio.HeaderReceivedAt, Value: []byte(received.UTC().Format(time.RFC3339Nano))},
		{Key: kafkaio.HeaderBridgeID, Value: []byte(b.cfg.BridgeID)},
	}
	if !ok {
		b.deadLetter(nil, payload, headers, fmt.Errorf("topic %q is not fleet/v1/{vehicle_id}/telemetry", msg.Topic()), finish)
		return
	}
	batch, err := wire.Decode(payload, wire.Limits{MaxBatchBytes: b.cfg.MaxBatchBytes})
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
