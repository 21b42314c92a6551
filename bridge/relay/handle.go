package relay

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/mqttlite"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// DLQ reasons (the `reason` header and fleet_bridge_dlq_total's label).
const (
	ReasonCorrupt         = "corrupt"
	ReasonNoChecksum      = "no_checksum"
	ReasonTooLarge        = "too_large"
	ReasonMalformed       = "malformed"
	ReasonUnsupported     = "unsupported"
	ReasonUnknownCatalog  = "unknown_catalog"
	ReasonVehicleMismatch = "vehicle_mismatch"
	ReasonBadTopic        = "bad_topic"
	ReasonTime            = "time"
	ReasonKafkaRejected   = "kafka_rejected"
	ReasonCatalogInvalid  = "catalog_invalid"
)

// reasonOf names a check error's DLQ reason.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, wire.ErrCorrupt):
		return ReasonCorrupt
	case errors.Is(err, wire.ErrNoChecksum):
		return ReasonNoChecksum
	case errors.Is(err, wire.ErrTooLarge):
		return ReasonTooLarge
	case errors.Is(err, wire.ErrUnsupported):
		return ReasonUnsupported
	case errors.Is(err, wire.ErrUnknownCatalog):
		return ReasonUnknownCatalog
	}
	return ReasonMalformed
}

// job is one MQTT message on its way to Kafka. Everything the record
// needs lives in it; jobs are pooled, so a message costs no allocation of
// the bridge's own besides the payload (see newJob and finish).
type job struct {
	// promise is the record's produce callback, made once per job.
	promise  func(*kgo.Record, error)
	msg      *mqttlite.Message
	vehicle  string // from the topic; "" when the topic names none
	received time.Time
	size     int
	catalog  []byte // catalog messages: the catalog's id
	id       wire.Identity
	readings int
	attempts int
	dlq      bool
	reason   string
	sent     time.Time // when the current produce attempt began
	rec      kgo.Record
	hdrs     [6]kgo.RecordHeader
	stamp    [40]byte
}

// onMessage is called by a connection's reader for every message. It
// waits for in-flight room (the backpressure), checks the message and
// hands it to the producer; only a catalog miss goes off the reader.
func (b *Bridge) onMessage(m *mqttlite.Message) {
	size := len(m.Payload)
	wait, ok := b.limit.acquire(b.readCtx, size)
	if wait > 0 {
		b.m.backpressure.Add(wait.Seconds())
	}
	if !ok {
		return // draining: unacknowledged, dropped with the clean session; the agent re-sends
	}
	j := b.newJob()
	j.msg, j.received, j.size = m, time.Now(), size
	j.rec.Value = m.Payload
	j.rec.Headers = j.hdrs[:0]
	j.rec.Headers = append(j.rec.Headers,
		kgo.RecordHeader{Key: kafkaio.HeaderSourceTopic, Value: m.TopicBytes()},
		kgo.RecordHeader{Key: kafkaio.HeaderReceivedAt, Value: j.received.UTC().AppendFormat(j.stamp[:0], time.RFC3339Nano)},
		kgo.RecordHeader{Key: kafkaio.HeaderBridgeID, Value: b.bridgeID})
	if v, ok := topics.VehicleFromTelemetry(m.Topic); ok {
		j.vehicle = v
		end := len(m.Topic) - len("/telemetry")
		j.rec.Key = m.TopicBytes()[end-len(v) : end] // the vehicle ID, without a copy
		b.telemetry(j)
		return
	}
	if v, ok := topics.VehicleFromCatalog(m.Topic); ok {
		j.vehicle = v
		j.rec.Key = []byte(v)
		b.registerCatalog(j)
		return
	}
	b.deadLetter(j, ReasonBadTopic, fmt.Errorf("topic %q is not fleet/v1/{vehicle_id}/telemetry or /catalog", m.Topic))
}

// check runs wire.Check within the bound on concurrent checks.
func (b *Bridge) check(ctx context.Context, payload []byte, catchUp bool) (wire.Summary, error) {
	b.checks <- struct{}{}
	defer func() { <-b.checks }()
	if catchUp {
		return b.catalogs.Check(ctx, payload, b.lim)
	}
	lim := b.lim
	lim.Catalogs = b.catalogs
	return wire.Check(payload, lim)
}

func (b *Bridge) telemetry(j *job) {
	if j.msg.Truncated {
		b.deadLetter(j, ReasonTooLarge, fmt.Errorf("%w: payload of %d bytes, limit %d (truncated to the limit here)", wire.ErrTooLarge, j.msg.Size, b.cfg.MaxBatchBytes))
		return
	}
	sum, err := b.check(context.Background(), j.msg.Payload, false)
	if errors.Is(err, wire.ErrUnknownCatalog) {
		// A catalog registered through another replica, or just now: read
		// the catalog topic off the reader, so nothing else waits.
		b.retries.Go(func() {
			ctx, cancel := context.WithTimeout(b.produceCtx, b.cfg.CatalogWait)
			defer cancel()
			sum, err := b.check(ctx, j.msg.Payload, true)
			b.checked(j, sum, err)
		})
		return
	}
	b.checked(j, sum, err)
}

// checked produces a checked batch, or dead-letters one that failed its
// checks. A batch that could not be checked (the catalog topic out of
// reach) is abandoned to the agent.
func (b *Bridge) checked(j *job, sum wire.Summary, err error) {
	switch {
	case err != nil && !wire.IsInvalid(err):
		b.logger.Warn("batch not checked (catalog topic out of reach); the agent re-sends it", "vehicle", j.vehicle, "err", err)
		b.abandon(j)
		return
	case err != nil:
		b.deadLetter(j, reasonOf(err), err)
		return
	case sum.VehicleID != j.vehicle:
		b.deadLetter(j, ReasonVehicleMismatch, fmt.Errorf("payload vehicle_id %q does not match topic vehicle %q", sum.VehicleID, j.vehicle))
		return
	}
	if flag := b.timeFlag(sum, j.received); flag != "" {
		b.m.timeFlagged.WithLabelValues(flag).Inc()
		switch b.cfg.TimePolicy {
		case TimeDLQ:
			b.deadLetter(j, ReasonTime, fmt.Errorf("batch times [%s, %s] are beyond --max-%s of the bridge's clock",
				time.Unix(0, sum.MinTime).UTC().Format(time.RFC3339), time.Unix(0, sum.MaxTime).UTC().Format(time.RFC3339), flag))
			return
		case TimeHeader:
			j.rec.Headers = append(j.rec.Headers, kgo.RecordHeader{Key: kafkaio.HeaderTimeFlag, Value: []byte(flag)})
		}
	}
	if !sum.Checked {
		b.m.unchecked.Inc()
	}
	j.id = sum.Identity
	j.readings = sum.Readings + sum.Fixes
	j.rec.Topic = b.cfg.Topic
	if limit := b.topicLimit.Load(); limit > 0 && int64(recordSize(&j.rec)) > limit {
		b.deadLetter(j, ReasonKafkaRejected, fmt.Errorf("a record of %d bytes is over topic %s's max.message.bytes (%d)", recordSize(&j.rec), j.rec.Topic, limit))
		return
	}
	b.produce(j)
}

// timeFlag says whether a batch's times lie beyond the bounds: "future",
// "past" or "".
func (b *Bridge) timeFlag(sum wire.Summary, now time.Time) string {
	switch {
	case sum.MaxTime > now.Add(b.cfg.MaxFuture).UnixNano():
		return "future"
	case sum.MinTime < now.Add(-b.cfg.MaxPast).UnixNano():
		return "past"
	}
	return ""
}

// registerCatalog checks a vehicle's catalog and stores it in the catalog
// topic under its id; the vehicle's next ack lists it.
func (b *Bridge) registerCatalog(j *job) {
	if j.msg.Truncated {
		b.deadLetter(j, ReasonTooLarge, fmt.Errorf("catalog of %d bytes, limit %d", j.msg.Size, b.cfg.MaxBatchBytes))
		return
	}
	cat, err := wire.ParseCatalog(j.msg.Payload, wire.Limits{MaxBodyBytes: b.cfg.MaxBatchBytes})
	if err == nil && !wire.ValidVehicleID(j.vehicle) {
		err = fmt.Errorf("vehicle id %q in the topic is not valid", j.vehicle)
	}
	if err != nil {
		b.m.catalogs.WithLabelValues("dlq").Inc()
		b.deadLetter(j, ReasonCatalogInvalid, fmt.Errorf("catalog: %w", err))
		return
	}
	j.catalog = cat.ID()
	if _, known := b.catalogs.Catalog(j.catalog); known {
		// Kafka holds it already (another car of the model registered it,
		// or this one before a restart): ack without a new record.
		b.settle(j)
		return
	}
	j.rec.Topic = b.cfg.CatalogTopic
	j.rec.Key = []byte(hex.EncodeToString(j.catalog))
	b.produce(j)
}

// produce hands the job's record to Kafka; its callback settles the job
// or retries it.
func (b *Bridge) produce(j *job) {
	j.sent = time.Now()
	b.kafka.Produce(b.produceCtx, &j.rec, j.promise)
}

func (b *Bridge) produced(j *job, err error) {
	if err == nil {
		b.m.produceSeconds.Observe(time.Since(j.sent).Seconds())
		b.settle(j)
		return
	}
	switch {
	case b.aborted.Load() || errors.Is(err, kgo.ErrClientClosed):
		b.abandon(j)
	case !permanent(err):
		b.retry(j, err)
	case errors.Is(err, kerr.MessageTooLarge) && recordSize(&j.rec) <= b.batchMax && j.attempts < 5:
		// Kafka refuses a whole record batch when one record in it is too
		// large: this record may be innocent. Try it again (the culprit is
		// caught before producing once the topic's limit is known).
		b.refreshLimit()
		b.retry(j, err)
	case j.dlq && len(j.rec.Value) > dlqCut:
		// The DLQ refuses the whole payload: keep its beginning.
		j.rec.Value = j.rec.Value[:dlqCut]
		j.rec.Headers = append(j.rec.Headers, kgo.RecordHeader{Key: kafkaio.HeaderError, Value: fmt.Appendf(nil, "payload cut to %d bytes: %v", dlqCut, err)})
		b.retry(j, err)
	case j.dlq:
		b.logger.Error("the dead-letter topic refuses the payload; dropping it", "vehicle", j.vehicle, "err", err)
		b.abandon(j)
	default:
		b.deadLetter(j, ReasonKafkaRejected, fmt.Errorf("kafka refused the batch: %w", err))
	}
}

// dlqCut is what is kept of a payload the DLQ refuses whole.
const dlqCut = 64 << 10

// retry produces the job again after a backoff, unless the bridge gave up.
func (b *Bridge) retry(j *job, err error) {
	j.attempts++
	b.m.retries.Inc()
	delay := min(100*time.Millisecond<<min(j.attempts-1, 6), 5*time.Second)
	if j.attempts == 1 || j.attempts%10 == 0 {
		b.logger.Warn("produce failed; retrying", "vehicle", j.vehicle, "topic", j.rec.Topic, "attempt", j.attempts, "in", delay, "err", err)
	}
	b.retries.Add(1)
	time.AfterFunc(delay, func() {
		defer b.retries.Done()
		if b.aborted.Load() {
			b.abandon(j)
			return
		}
		j.rec.Partition, j.rec.Offset, j.rec.Timestamp = 0, 0, time.Time{}
		b.produce(j)
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

// deadLetter sends the job's payload to the DLQ; the job settles once the
// DLQ holds it.
func (b *Bridge) deadLetter(j *job, reason string, cause error) {
	b.logger.Warn("rejecting payload to the DLQ", "vehicle", j.vehicle, "bytes", j.msg.Size, "reason", reason, "err", cause)
	j.dlq = true
	j.reason = reason
	j.rec.Topic = b.cfg.DLQTopic
	if j.vehicle == "" {
		j.rec.Key = nil
	}
	j.rec.Headers = append(j.rec.Headers,
		kgo.RecordHeader{Key: kafkaio.HeaderError, Value: []byte(cause.Error())},
		kgo.RecordHeader{Key: kafkaio.HeaderReason, Value: []byte(reason)})
	if over := recordSize(&j.rec) - (b.batchMax - 512); over > 0 && over < len(j.rec.Value) {
		// Over what the producer may send: keep the payload's beginning.
		j.rec.Value = j.rec.Value[:len(j.rec.Value)-over]
		j.rec.Headers = append(j.rec.Headers, kgo.RecordHeader{Key: kafkaio.HeaderError,
			Value: fmt.Appendf(nil, "payload truncated to %d of %d bytes to fit the topic", len(j.rec.Value), j.size)})
	}
	b.produce(j)
}

// settle finishes a job whose record Kafka holds (or needed none): the
// broker gets its PUBACK, the vehicle its end-to-end ack.
func (b *Bridge) settle(j *job) {
	now := time.Now()
	switch {
	case j.dlq:
		b.m.dlqd.Inc()
		b.m.dlq.WithLabelValues(j.reason).Inc()
	case j.catalog != nil:
		b.m.catalogs.WithLabelValues("registered").Inc()
		b.acks.addCatalog(j.vehicle, j.catalog)
	default:
		b.m.produced.Inc()
		b.m.readings.Add(float64(j.readings))
		b.m.bytes.Add(float64(j.size))
		b.m.relaySeconds.Observe(now.Sub(j.received).Seconds())
		b.acks.add(j.id, now)
	}
	b.finish(j)
}

// abandon gives a job up: acknowledged to the broker, so that it holds no
// in-flight slot there, but not to the vehicle, whose agent re-sends it.
func (b *Bridge) abandon(j *job) {
	b.m.abandoned.Inc()
	if j.catalog != nil {
		b.m.catalogs.WithLabelValues("abandoned").Inc()
	}
	b.finish(j)
}

// finish acknowledges the message to the broker, frees its in-flight
// room and returns the job to the pool: nothing may touch j after it (the
// producer is done with the record once its promise has run).
func (b *Bridge) finish(j *job) {
	j.msg.Ack()
	b.limit.release(j.size)
	*j = job{promise: j.promise}
	b.jobs.Put(j)
}

// newJob takes a job from the pool.
func (b *Bridge) newJob() *job {
	if j, ok := b.jobs.Get().(*job); ok {
		return j
	}
	j := &job{}
	j.promise = func(_ *kgo.Record, err error) { b.produced(j, err) }
	return j
}
