// Package relay moves telemetry batches from MQTT to Kafka without losing
// any: it takes vehicles' batches from an MQTT shared subscription, checks
// each one, produces it to Kafka keyed by vehicle ID (idempotent producer,
// acks=all, Kafka's murmur2 partitioning), and tells each vehicle, on
// fleet/v1/{vehicle_id}/ack, which (epoch, seq) ranges Kafka holds, so the
// agent can free its spool. The end-to-end ack is the only promise the
// bridge makes; the agent re-sends whatever is not acked in time.
//
// # Flow and backpressure
//
// A replica keeps --mqtt-connections connections, each a member of the
// shared subscription with a clean session (a replica that dies leaves no
// session hoarding its share of the traffic). A connection's reader checks
// each message (wire.Check: checksum, limits, structure, catalog, vehicle
// ID against the topic, timestamps) without building its readings, and
// hands it to the producer without waiting. At most --max-inflight
// messages (--max-inflight-bytes) are in flight; past that the readers
// stop reading and the broker holds the rest.
//
// Each message is settled on its own, in whatever order Kafka answers, and
// acknowledged to the broker (PUBACK) as soon as it is settled: produced,
// dead-lettered, or abandoned. A message is never left unacknowledged, as
// that would hold one of the broker's in-flight slots for the connection's
// lifetime. A produce that fails retriably is made again after a backoff
// (100 ms doubling to 5 s), for as long as the bridge runs: the message
// keeps its in-flight room, and nothing else waits for it. A batch whose
// catalog the replica has not read yet waits for the catalog topic off the
// reader (up to --catalog-wait); if the catalog topic cannot be read it is
// abandoned: acknowledged to the broker, not to the vehicle, whose agent
// then re-sends it.
//
// # What goes to the dead-letter topic
//
// A payload that fails its checks goes to the DLQ with headers `error`
// (what is wrong) and `reason`, one of: corrupt (checksum mismatch),
// no_checksum (with --require-checksum), too_large, malformed,
// unsupported, unknown_catalog, vehicle_mismatch (payload vehicle ID not
// the topic's), bad_topic, time (with --time-policy dlq), kafka_rejected
// (Kafka refused the record for good, e.g. over the topic's
// max.message.bytes) and catalog_invalid. The MQTT message is acknowledged
// once the DLQ holds it.
//
// # Order
//
// Kafka keeps records of one partition in the order they were produced;
// all of a vehicle's batches go to one partition (its key). The bridge
// does not keep a vehicle's batches in their MQTT order: with one replica
// and one connection two batches of a vehicle can still reach Kafka out
// of order when the first needs a retry or waits for its catalog; with
// several connections or replicas the broker spreads a vehicle's messages
// over them one message at a time, so they race. An agent's re-sent batch
// lands after batches sent later, and the at-least-once hops leave
// duplicates. What a consumer may rely on is each batch's identity
// (vehicle_id, epoch, seq): order by seq within an epoch, drop a batch
// whose identity it has seen. The consumers in this repository do exactly
// that and nothing more.
//
// Vehicles register signal catalogs on fleet/v1/{vehicle_id}/catalog (see
// wire.Catalog); the bridge checks each, stores it in the compacted
// catalog topic keyed by its id, and lists it in the vehicle's next ack.
//
// Metrics (namespace fleet_bridge):
//
//	fleet_bridge_messages_total{result="produced|dlq|abandoned"} MQTT messages settled
//	fleet_bridge_dlq_total{reason}                    payloads dead-lettered, by reason
//	fleet_bridge_catalogs_total{result}               catalog messages handled
//	fleet_bridge_produce_retries_total                produce attempts made again
//	fleet_bridge_unchecked_batches_total              batches without a checksum (old agents)
//	fleet_bridge_time_flagged_total{direction}        batches with times beyond the bounds
//	fleet_bridge_readings_total, fleet_bridge_bytes_total  what was produced
//	fleet_bridge_inflight, fleet_bridge_inflight_bytes     messages and bytes in flight
//	fleet_bridge_backpressure_seconds_total          readers' waits for in-flight room
//	fleet_bridge_produce_seconds                      Kafka produce latency
//	fleet_bridge_mqtt_to_kafka_seconds                MQTT receipt to Kafka acknowledgement
//	fleet_bridge_acks_published_total, fleet_bridge_acked_batches_total  end-to-end acks
//	fleet_bridge_mqtt_connected, fleet_bridge_mqtt_connects_total, fleet_bridge_mqtt_connections_lost_total
//
// plus the franz-go client metrics under fleet_kafka_*.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/mqttlite"
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
	cfg      Config
	logger   *slog.Logger
	m        *metrics
	kafka    *kgo.Client // the producer, made by Run
	setup    *kgo.Client // topic set-up and health
	kopts    []kgo.Opt
	conns    []*mqttlite.Client
	admin    *admin.Server
	catalogs *catalogstore.Store
	lim      wire.Limits
	bridgeID []byte

	limit *limiter
	acks  *ackBook
	jobs  sync.Pool // of *job
	// checks bounds the wire.Check calls running at once (readers and
	// catalog waits), and with them the memory checking can take.
	checks chan struct{}
	// readCtx ends when the bridge starts draining: readers waiting for
	// room give up. produceCtx ends when draining gives up on Kafka.
	readCtx       context.Context
	stopReading   context.CancelFunc
	produceCtx    context.Context
	produceCancel context.CancelFunc
	aborted       atomic.Bool
	retries       sync.WaitGroup
	// topicLimit is the telemetry topic's max.message.bytes (0: unknown):
	// a record over it is dead-lettered before it is produced, as Kafka
	// would refuse the whole record batch it travelled in, neighbours and
	// all. limitRead is when it was last read (unix nanos).
	topicLimit atomic.Int64
	limitRead  atomic.Int64
	batchMax   int // the producer's largest record batch
}

// New builds the bridge: the Kafka producer, the MQTT clients and the
// admin server (whose port is bound here). Nothing connects until Run.
func New(cfg Config, deps Deps) (*Bridge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Bridge{cfg: cfg, logger: deps.Logger, lim: cfg.limits(), bridgeID: []byte(cfg.BridgeID),
		limit: newLimiter(cfg.MaxInflight, cfg.MaxInflightBytes), acks: newAckBook(cfg.AckInterval, cfg.AckBatches),
		checks: make(chan struct{}, cfg.Connections+1)}
	b.m = newMetrics(deps.Registerer, b.connectedCount, b.limit.load)
	b.readCtx, b.stopReading = context.WithCancel(context.Background())
	b.produceCtx, b.produceCancel = context.WithCancel(context.Background())

	// The producer is made in Run, once the topics' limits are known; this
	// client sets the topics up and answers /readyz.
	setupOpts, err := cfg.Kafka.Opts(deps.Logger, nil)
	if err != nil {
		return nil, err
	}
	if b.kopts, err = cfg.Kafka.Opts(deps.Logger, deps.Registerer); err != nil {
		return nil, err
	}
	if b.setup, err = kgo.NewClient(setupOpts...); err != nil {
		return nil, fmt.Errorf("bridge: kafka client: %w", err)
	}
	fail := func(err error) (*Bridge, error) {
		b.setup.Close()
		if b.catalogs != nil {
			b.catalogs.Close()
		}
		return nil, err
	}
	tlsConfig, err := cfg.MQTT.TLSConfig()
	if err != nil {
		return fail(err)
	}
	coalesce := cfg.Coalesce
	if coalesce == 0 {
		coalesce = -1 // mqttlite: none
	}
	for i := range cfg.Connections {
		c, err := mqttlite.New(mqttlite.Config{
			URL: cfg.MQTT.URL, ClientID: cfg.MQTT.ClientID + "-" + strconv.Itoa(i), Username: cfg.MQTT.Username, Password: cfg.MQTT.Password,
			TLS: tlsConfig, CleanSession: true, KeepAlive: cfg.MQTT.KeepAlive, ConnectTimeout: cfg.MQTT.ConnectTimeout,
			Subscriptions: []mqttlite.Subscription{
				{Filter: topics.SharedTelemetryFilter(cfg.ShareGroup), QoS: 1},
				{Filter: topics.SharedCatalogFilter(cfg.ShareGroup), QoS: 1},
			},
			MaxPayloadBytes: cfg.MaxBatchBytes,
			Coalesce:        coalesce,
			OnMessage:       b.onMessage,
			OnConnect: func() {
				b.m.connects.Inc()
				b.logger.Info("subscribed", "connection", i)
			},
			OnLost: func(err error) { b.m.connectionsLost.Inc() },
		}, mqttlite.Deps{Logger: deps.Logger})
		if err != nil {
			return fail(err)
		}
		b.conns = append(b.conns, c)
	}
	if b.catalogs, err = catalogstore.New(cfg.Kafka, cfg.CatalogTopic, deps.Logger); err != nil {
		return fail(err)
	}
	b.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: deps.Logger, Gatherer: deps.Gatherer})
	if err != nil {
		return fail(err)
	}
	b.admin.AddReadyCheck("mqtt", func(context.Context) error {
		if b.connectedCount() == 0 {
			return errors.New("no connection to the MQTT broker")
		}
		return nil
	})
	b.admin.AddReadyCheck("kafka", func(ctx context.Context) error { return b.setup.Ping(ctx) })
	return b, nil
}

func (b *Bridge) connectedCount() float64 {
	n := 0
	for _, c := range b.conns {
		if c.Connected() {
			n++
		}
	}
	return float64(n)
}

// AdminURL is the URL of the metrics and health endpoints.
func (b *Bridge) AdminURL() string { return b.admin.URL() }

// Inflight is the number of messages received and not yet settled.
func (b *Bridge) Inflight() int {
	n, _ := b.limit.load()
	return n
}

// Run relays until ctx is cancelled. It then unsubscribes, waits up to the
// drain timeout for in-flight batches to settle (acknowledging them to the
// broker and the vehicles), and disconnects. Batches still in flight after
// the timeout are left to the agents to re-send.
func (b *Bridge) Run(ctx context.Context) error {
	defer b.setup.Close()
	defer b.catalogs.Close()
	if b.cfg.CreateTopics {
		if err := b.createTopics(ctx); err != nil {
			return err
		}
	}
	batchMax, err := b.checkTopics(ctx)
	if err != nil {
		return err
	}
	b.batchMax = batchMax
	b.kafka, err = kgo.NewClient(append(b.kopts,
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // murmur2, as Kafka's own clients
		kgo.ProducerLinger(b.cfg.Linger),
		kgo.ProducerBatchCompression(kgo.NoCompression()), // payloads are compact already
		// Kafka refuses a whole record batch over the topic's
		// max.message.bytes: never build one.
		kgo.ProducerBatchMaxBytes(int32(b.batchMax)),
		kgo.MaxBufferedRecords(b.cfg.MaxInflight+1024), // the limiter is the bound: Produce never blocks
		kgo.RecordDeliveryTimeout(b.cfg.ProduceTimeout),
	)...)
	if err != nil {
		return fmt.Errorf("bridge: kafka producer: %w", err)
	}
	defer b.kafka.Close()
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	g, gctx := errgroup.WithContext(adminCtx)
	g.Go(func() error { return b.admin.Run(gctx) })

	b.logger.Info("bridge starting", "mqtt", b.cfg.MQTT.URL, "connections", len(b.conns), "kafka", b.cfg.Kafka.Brokers.String(),
		"topic", b.cfg.Topic, "subscription", topics.SharedTelemetryFilter(b.cfg.ShareGroup), "admin", b.admin.URL())
	mqttCtx, stopMQTT := context.WithCancel(context.Background())
	defer stopMQTT()
	var clients sync.WaitGroup
	for _, c := range b.conns {
		clients.Go(func() { _ = c.Run(mqttCtx) })
	}
	ackCtx, stopAcks := context.WithCancel(context.Background())
	ackDone := make(chan struct{})
	go func() { defer close(ackDone); b.publishAcksEvery(ackCtx) }()

	<-ctx.Done()
	b.logger.Info("bridge draining")
	for _, c := range b.conns {
		_ = c.Unsubscribe(topics.SharedTelemetryFilter(b.cfg.ShareGroup), topics.SharedCatalogFilter(b.cfg.ShareGroup))
	}
	b.limit.close()
	b.stopReading()
	if !b.limit.waitEmpty(b.cfg.DrainTimeout) {
		n, _ := b.limit.load()
		b.logger.Warn("drain timed out; the agents re-send what is still in flight", "inflight", n)
		b.aborted.Store(true)
		b.produceCancel()
		b.limit.waitEmpty(5 * time.Second)
	}
	b.retries.Wait()
	stopAcks()
	<-ackDone
	b.publishLastAcks()
	stopMQTT()
	clients.Wait()
	b.produceCancel()
	stopAdmin()
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	b.logger.Info("bridge stopped")
	return nil
}

// publishAcksEvery sends the acks that are due: at once when the book
// signals one (a vehicle's first news in an interval, AckBatches batches
// waiting, a catalog), and on a tick of an eighth of the interval for
// vehicles whose interval since their last ack has passed.
func (b *Bridge) publishAcksEvery(ctx context.Context) {
	tick := time.NewTicker(max(b.cfg.AckInterval/8, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.acks.wake:
		case <-tick.C:
		}
		b.publishAcks(false)
	}
}

// publishAcks sends the acks that are due, or every vehicle's when all is
// set. Acks are best effort: an agent that misses one re-sends the batch,
// and the duplicate is dropped downstream by batch identity. With no
// connection up the news is kept and tried again an interval later.
func (b *Bridge) publishAcks(all bool) {
	for _, a := range b.acks.take(time.Now(), all) {
		if !b.publishAck(a, byte(b.cfg.AckQoS), nil) {
			b.acks.putBack(a.vehicle, a.news, time.Now())
		}
	}
}

// publishLastAcks sends every ack still waiting and waits (up to 2 s) for
// the broker to acknowledge every publish: a broker may drop a publish
// whose client is gone before it could answer.
func (b *Bridge) publishLastAcks() {
	b.publishAcks(true)
	deadline := time.Now().Add(2 * time.Second)
	for _, c := range b.conns {
		if !c.WaitAcked(time.Until(deadline)) {
			b.logger.Warn("the broker did not confirm the last acks; the agents re-send those batches")
			return
		}
	}
}

func (b *Bridge) publishAck(a vehicleAck, qos byte, done func(error)) bool {
	topic := topics.Ack(a.vehicle)
	start := b.acks.home(a.vehicle, len(b.conns))
	for i := range b.conns {
		c := b.conns[(start+i)%len(b.conns)]
		if c.Publish(topic, qos, a.payload, done) == nil {
			b.m.acksPublished.Inc()
			b.m.batchesAcked.Add(float64(a.batches))
			return true
		}
	}
	return false
}
