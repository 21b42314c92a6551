package livelocation

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// locations creates the location topic if needed, then follows it from
// its start for as long as ctx lasts: every replica learns every vehicle's
// position from it (read up to the end offsets it had at start-up, the
// replica is bootstrapped), including the vehicles of partitions other
// replicas own.
func (s *Service) locations(ctx context.Context, cl *kgo.Client) error {
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
	start := time.Now()
	lc, err := kgo.NewClient(append(append([]kgo.Opt{}, s.bootOpts...),
		kgo.ClientID(s.cfg.Kafka.ClientID+"-locations"),
		kgo.ConsumeTopics(s.cfg.LocationTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.KeepControlRecords(),
	)...)
	if err != nil { // options were checked in New; only a bug gets here
		return err
	}
	defer lc.Close()
	track := newCatchUp()
	if err := retry(ctx, s.log, "list the location offsets", func(ctx context.Context) error {
		adm := kadm.NewClient(lc)
		ends, err := adm.ListEndOffsets(ctx, s.cfg.LocationTopic)
		if err != nil {
			return err
		}
		starts, err := adm.ListStartOffsets(ctx, s.cfg.LocationTopic)
		if err != nil {
			return err
		}
		ends.Each(func(o kadm.ListedOffset) {
			if o.Err != nil {
				return
			}
			st := int64(0)
			if so, ok := starts.Lookup(s.cfg.LocationTopic, o.Partition); ok && so.Err == nil {
				st = so.Offset
			}
			track.add(o.Partition, st, o.Offset)
		})
		return ends.Error()
	}); err != nil {
		return nil
	}
	track.start()
	n := 0
	for {
		if !s.bootstrapped.Load() && track.behind() == 0 {
			s.bootstrapped.Store(true)
			s.m.bootstrapped.Set(1)
			s.log.Info("location bootstrap done", "records", n, "vehicles", s.store.Len(), "took", time.Since(start).Round(time.Millisecond))
		}
		fetches := lc.PollRecords(ctx, 10_000)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
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
}

// applyPosition applies one record of the location topic: a position, or a
// tombstone of an evicted vehicle.
func (s *Service) applyPosition(r *kgo.Record) {
	if r.Value == nil {
		s.m.records.WithLabelValues("location", "tombstone").Inc()
		if s.store.Forget(string(r.Key)) {
			s.m.evicted.WithLabelValues("tombstone").Inc()
		}
		return
	}
	var p pb.Position
	if err := proto.Unmarshal(r.Value, &p); err != nil || p.GetVehicleId() == "" {
		s.m.records.WithLabelValues("location", "undecodable").Inc()
		s.log.Debug("undecodable location record", "partition", r.Partition, "offset", r.Offset, "err", err)
		return
	}
	s.m.records.WithLabelValues("location", "ok").Inc()
	s.m.observe("location", s.store.ApplyPosition(fleetstate.Position{
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
// vehicle that telemetry changed since the last time. Telemetry reaches
// this replica only from the partitions it owns, so each change is
// published by one replica. On cancellation it publishes what is pending
// and waits up to 5s for Kafka to take it.
func (s *Service) publish(ctx context.Context, cl *kgo.Client) error {
	tick := time.NewTicker(s.cfg.PublishInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			s.publishChanged(cl)
		case <-ctx.Done():
			s.publishChanged(cl)
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := cl.Flush(fctx); err != nil {
				s.log.Warn("positions not flushed to the location topic", "err", err)
			}
			return nil
		}
	}
}

func (s *Service) publishChanged(cl *kgo.Client) {
	if s.cfg.LocationTopic == "" {
		return
	}
	s.store.TakeChanged(func(v fleetstate.Vehicle) {
		val, err := proto.Marshal(PositionProto(v))
		if err != nil {
			s.m.published.WithLabelValues("position", "error").Inc()
			return
		}
		s.produce(cl, "position", &kgo.Record{Topic: s.cfg.LocationTopic, Key: []byte(v.ID), Value: val})
	})
}

// produce sends one record without blocking: while Kafka is away the
// buffer fills and the newest records are dropped (and counted) instead of
// stalling the caller; a vehicle's next change republishes it.
func (s *Service) produce(cl *kgo.Client, kind string, rec *kgo.Record) {
	cl.TryProduce(context.Background(), rec, func(r *kgo.Record, err error) {
		if err != nil {
			s.m.published.WithLabelValues(kind, "error").Inc()
			s.log.Debug("location record not published", "kind", kind, "vehicle", string(r.Key), "err", err)
			return
		}
		s.m.published.WithLabelValues(kind, "ok").Inc()
	})
}

// sweep runs the store's sweep every sweep interval: stale vehicles leave
// nearby's way, vehicles past the TTL are evicted, and the owner of an
// evicted vehicle's partition tombstones it in the location topic, so that
// compaction forgets it and no replica bootstraps it again.
func (s *Service) sweep(ctx context.Context, cl *kgo.Client) error {
	tick := time.NewTicker(s.cfg.SweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		_, removed := s.store.Sweep(func(v fleetstate.Vehicle) {
			if s.cfg.LocationTopic != "" && s.own.owns(v.ID) {
				s.produce(cl, "tombstone", &kgo.Record{Topic: s.cfg.LocationTopic, Key: []byte(v.ID)})
			}
		})
		s.m.evicted.WithLabelValues("ttl").Add(float64(removed))
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
