package livelocation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// consume reads the telemetry topic into the store until ctx is done.
func (s *Service) consume(ctx context.Context, cl *kgo.Client, startMilli int64, start time.Time) error {
	var track *catchUp
	err := retry(ctx, s.log, "list the telemetry offsets", func(ctx context.Context) error {
		var err error
		track, err = listCatchUp(ctx, kadm.NewClient(cl), s.cfg.Topic, func(ctx context.Context, adm *kadm.Client) (kadm.ListedOffsets, error) {
			return adm.ListOffsetsAfterMilli(ctx, startMilli, s.cfg.Topic)
		})
		return err
	})
	if err != nil {
		return nil // cancelled
	}
	s.noteCatchUp(track, start)
	for {
		fetches := cl.PollRecords(ctx, 10_000)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				s.log.Warn("fetch failed; retrying", "topic", topic, "partition", p, "err", err)
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			if !r.Attrs.IsControl() {
				s.applyTelemetry(ctx, r)
			}
			track.advance(r.Partition, r.Offset)
		})
		if !s.caughtUp.Load() {
			s.noteCatchUp(track, start)
		}
	}
}

func (s *Service) noteCatchUp(track *catchUp, start time.Time) {
	n := track.behind()
	s.behind.Store(int64(n))
	s.m.telemetryBehind.Set(float64(n))
	if n == 0 && !s.caughtUp.Load() {
		s.caughtUp.Store(true)
		s.m.caughtUp.Set(1)
		s.log.Info("telemetry caught up", "vehicles", s.store.Len(), "took", time.Since(start).Round(time.Millisecond))
	}
}

func (s *Service) applyTelemetry(ctx context.Context, r *kgo.Record) {
	// A batch referring to a catalog waits for the catalog topic: the
	// positions it carries are what the live map is for.
	b, err := s.catalogs.Decode(ctx, r.Value, wire.Limits{})
	if err != nil {
		s.m.records.WithLabelValues("telemetry", "undecodable").Inc()
		s.log.Debug("undecodable telemetry record", "partition", r.Partition, "offset", r.Offset, "key", string(r.Key), "err", err)
		return
	}
	s.m.records.WithLabelValues("telemetry", "ok").Inc()
	s.m.observe(s.store.ApplyBatch(b))
}

// locations creates the location topic if needed, then bootstraps from it
// and publishes to it until ctx is done.
func (s *Service) locations(ctx context.Context, cl *kgo.Client, pub *fleetstate.Subscription) error {
	compact := "compact"
	spec := kafkaio.TopicSpec{
		Name:        s.cfg.LocationTopic,
		Partitions:  int32(s.cfg.LocationPartitions),
		Replication: int16(s.cfg.LocationReplication),
		Configs:     map[string]*string{"cleanup.policy": &compact},
	}
	if err := retry(ctx, s.log, "create the location topic", func(ctx context.Context) error {
		return kafkaio.EnsureTopics(ctx, cl, spec)
	}); err != nil {
		return nil // cancelled
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.bootstrap(ctx)
	}()
	s.publish(ctx, cl, pub)
	<-done
	return nil
}

// bootstrap reads the location topic from its start up to the end offsets
// it has now, applying each position to the store.
func (s *Service) bootstrap(ctx context.Context) {
	start := time.Now()
	cl, err := kgo.NewClient(append(append([]kgo.Opt{}, s.bootOpts...),
		kgo.ClientID(s.cfg.Kafka.ClientID+"-bootstrap"),
		kgo.ConsumeTopics(s.cfg.LocationTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.KeepControlRecords(),
	)...)
	if err != nil { // options were checked in New; only a bug gets here
		s.log.Error("location bootstrap client", "err", err)
		return
	}
	defer cl.Close()
	var track *catchUp
	if err := retry(ctx, s.log, "list the location offsets", func(ctx context.Context) error {
		track, err = listCatchUp(ctx, kadm.NewClient(cl), s.cfg.LocationTopic, func(ctx context.Context, adm *kadm.Client) (kadm.ListedOffsets, error) {
			return adm.ListStartOffsets(ctx, s.cfg.LocationTopic)
		})
		return err
	}); err != nil {
		return
	}
	n := 0
	for track.behind() > 0 {
		fetches := cl.PollRecords(ctx, 10_000)
		if ctx.Err() != nil {
			return
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				s.log.Warn("location fetch failed; retrying", "topic", topic, "partition", p, "err", err)
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			if !r.Attrs.IsControl() {
				s.applyPosition(r)
				n++
			}
			track.advance(r.Partition, r.Offset)
		})
	}
	s.bootstrapped.Store(true)
	s.m.bootstrapped.Set(1)
	s.log.Info("location bootstrap done", "records", n, "vehicles", s.store.Len(), "took", time.Since(start).Round(time.Millisecond))
}

func (s *Service) applyPosition(r *kgo.Record) {
	if r.Value == nil {
		s.m.records.WithLabelValues("location", "tombstone").Inc()
		return
	}
	var p pb.Position
	if err := proto.Unmarshal(r.Value, &p); err != nil || p.GetVehicleId() == "" {
		s.m.records.WithLabelValues("location", "undecodable").Inc()
		s.log.Debug("undecodable location record", "partition", r.Partition, "offset", r.Offset, "err", err)
		return
	}
	s.m.records.WithLabelValues("location", "ok").Inc()
	s.m.observe(s.store.ApplyPosition(fleetstate.Position{
		ID: p.GetVehicleId(),
		Fix: fleetstate.Fix{
			Time: p.GetTimeUnixNano(), Lat: p.GetLat(), Lon: p.GetLon(), Alt: p.GetAltM(),
			Speed: p.GetSpeedMS(), Heading: p.GetHeadingDeg(), Accuracy: p.GetAccuracyM(),
		},
		Status: p.GetStatus(),
		Epoch:  p.GetEpoch(),
		Seq:    p.GetSeq(),
	}))
}

// publish produces, once per publish interval, the latest position of each
// vehicle whose state telemetry changed since the last time (sub delivers
// those changes; positions read back from the topic are not republished).
// On cancellation it publishes what is pending and waits up to 5s for Kafka
// to take it.
func (s *Service) publish(ctx context.Context, cl *kgo.Client, sub *fleetstate.Subscription) {
	tick := time.NewTicker(s.cfg.PublishInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			s.produce(cl, sub.Take())
		case <-ctx.Done():
			s.produce(cl, sub.Take())
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := cl.Flush(fctx); err != nil {
				s.log.Warn("positions not flushed to the location topic", "err", err)
			}
			return
		}
	}
}

func (s *Service) produce(cl *kgo.Client, vs []fleetstate.Vehicle) {
	for _, v := range vs {
		val, err := proto.Marshal(PositionProto(v))
		if err != nil {
			s.m.published.WithLabelValues("error").Inc()
			continue
		}
		rec := &kgo.Record{Topic: s.cfg.LocationTopic, Key: []byte(v.ID), Value: val}
		// TryProduce rather than Produce: while Kafka is away the buffer
		// fills and the newest positions are dropped (and counted) instead of
		// blocking the publisher; the next change of a vehicle republishes it.
		cl.TryProduce(context.Background(), rec, func(_ *kgo.Record, err error) {
			if err != nil {
				s.m.published.WithLabelValues("error").Inc()
				s.log.Debug("position not published", "vehicle", v.ID, "err", err)
				return
			}
			s.m.published.WithLabelValues("ok").Inc()
		})
	}
}

// PositionProto converts a vehicle's state to the value of the location
// topic. Unknown optional fields are NaN.
func PositionProto(v fleetstate.Vehicle) *pb.Position {
	return &pb.Position{
		VehicleId:    v.ID,
		TimeUnixNano: v.Fix.Time,
		Lat:          v.Fix.Lat,
		Lon:          v.Fix.Lon,
		AltM:         finiteOrNaN(v.Fix.Alt),
		SpeedMS:      finiteOrNaN(v.Fix.Speed),
		HeadingDeg:   finiteOrNaN(v.Fix.Heading),
		AccuracyM:    finiteOrNaN(v.Fix.Accuracy),
		Status:       v.Status,
		Epoch:        v.Epoch,
		Seq:          v.Seq,
	}
}

func finiteOrNaN(f float64) float64 {
	if math.IsInf(f, 0) {
		return math.NaN()
	}
	return f
}

// catchUp tracks, per partition, the end offset to reach. Partitions already
// at their end are not tracked. advance runs on one goroutine; behind may
// be called from any.
type catchUp struct {
	target map[int32]int64
	left   atomic.Int64
}

// listCatchUp lists the end offsets of topic and, with from, the offsets
// consumption starts at. A missing topic has nothing to catch up.
func listCatchUp(ctx context.Context, adm *kadm.Client, topic string, from func(context.Context, *kadm.Client) (kadm.ListedOffsets, error)) (*catchUp, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	starts, err := from(ctx, adm)
	if err != nil {
		return nil, err
	}
	c := &catchUp{target: make(map[int32]int64)}
	var firstErr error
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			if !errors.Is(o.Err, kerr.UnknownTopicOrPartition) && firstErr == nil {
				firstErr = fmt.Errorf("partition %d: %w", o.Partition, o.Err)
			}
			return
		}
		if st, ok := starts.Lookup(topic, o.Partition); ok && st.Err == nil && st.Offset >= o.Offset {
			return
		}
		c.target[o.Partition] = o.Offset
	})
	if firstErr != nil {
		return nil, firstErr
	}
	c.left.Store(int64(len(c.target)))
	return c, nil
}

func (c *catchUp) advance(partition int32, offset int64) {
	if end, ok := c.target[partition]; ok && offset+1 >= end {
		delete(c.target, partition)
		c.left.Store(int64(len(c.target)))
	}
}

func (c *catchUp) behind() int { return int(c.left.Load()) }

// retry calls fn until it succeeds or ctx is done, backing off from 250ms to
// 10s and logging each failure. It returns ctx's error when cancelled.
func retry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	backoff := 250 * time.Millisecond
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("could not "+what+"; retrying", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}
