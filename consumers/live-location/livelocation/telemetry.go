package livelocation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// ownership is the set of telemetry partitions this replica owns in the
// consumer group, and how to find a vehicle's partition: the Kafka default
// (murmur2) partitioning of its ID, as the bridge produces.
type ownership struct {
	mu          sync.Mutex
	parts       map[int32]bool
	nparts      int
	partitioner kgo.TopicPartitioner
}

func newOwnership() *ownership {
	return &ownership{parts: map[int32]bool{}, partitioner: kgo.StickyKeyPartitioner(nil).ForTopic("")}
}

// owns reports whether the vehicle's partition is this replica's.
func (o *ownership) owns(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.nparts == 0 || len(o.parts) == 0 {
		return false
	}
	return o.parts[int32(o.partitioner.Partition(&kgo.Record{Key: []byte(id)}, o.nparts))]
}

func (o *ownership) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.parts)
}

// catchUp tracks, per partition, the end offset to reach and the offset
// consumption is at. It is safe for concurrent use.
type catchUp struct {
	mu      sync.Mutex
	target  map[int32]int64
	next    map[int32]int64 // offset after the last record consumed
	started bool            // the first assignment (or listing) happened
}

func newCatchUp() *catchUp {
	return &catchUp{target: map[int32]int64{}, next: map[int32]int64{}}
}

// add sets partition p's target: end, unless consumption is already at or
// past it (from start or from records seen).
func (c *catchUp) add(p int32, start, end int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if max(start, c.next[p]) < end {
		c.target[p] = end
	}
}

func (c *catchUp) start() {
	c.mu.Lock()
	c.started = true
	c.mu.Unlock()
}

func (c *catchUp) advance(p int32, offset int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next[p] = offset + 1
	if end, ok := c.target[p]; ok && offset+1 >= end {
		delete(c.target, p)
	}
}

func (c *catchUp) drop(p int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.target, p)
	delete(c.next, p)
}

// behind returns how many partitions are still catching up; -1 before the
// first assignment.
func (c *catchUp) behind() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started {
		return -1
	}
	return len(c.target)
}

// groupOpts are the consumer group options of the telemetry client.
func (s *Service) groupOpts(startMilli int64) []kgo.Opt {
	return []kgo.Opt{
		kgo.ConsumerGroup(s.cfg.Group),
		kgo.ConsumeTopics(s.cfg.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AfterMilli(startMilli)),
		kgo.KeepControlRecords(),
		kgo.BlockRebalanceOnPoll(), // callbacks run between polls, never mid-batch
		kgo.OnPartitionsAssigned(func(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
			s.assigned(ctx, cl, m[s.cfg.Topic], startMilli)
		}),
		kgo.OnPartitionsRevoked(func(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
			s.revoked(ctx, cl, m[s.cfg.Topic], true)
		}),
		kgo.OnPartitionsLost(func(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
			s.revoked(ctx, cl, m[s.cfg.Topic], false)
		}),
	}
}

// assigned takes ownership of partitions: it learns the topic's partition
// count and where consumption of each starts and ends, for readiness.
func (s *Service) assigned(ctx context.Context, cl *kgo.Client, parts []int32, startMilli int64) {
	adm := kadm.NewClient(cl)
	var (
		nparts    int
		ends      kadm.ListedOffsets
		committed kadm.OffsetResponses
		after     kadm.ListedOffsets
	)
	err := retry(ctx, s.log, "look up the assigned partitions", func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		td, err := adm.ListTopics(ctx, s.cfg.Topic)
		if err != nil {
			return err
		}
		t, ok := td[s.cfg.Topic]
		if !ok || t.Err != nil {
			return fmt.Errorf("metadata of %s: %v", s.cfg.Topic, t.Err)
		}
		nparts = len(t.Partitions)
		if ends, err = adm.ListEndOffsets(ctx, s.cfg.Topic); err != nil {
			return err
		}
		if committed, err = adm.FetchOffsets(ctx, s.cfg.Group); err != nil {
			return err
		}
		after, err = adm.ListOffsetsAfterMilli(ctx, startMilli, s.cfg.Topic)
		return err
	})
	if err != nil {
		return // the client is closing
	}
	s.own.mu.Lock()
	s.own.nparts = nparts
	for _, p := range parts {
		s.own.parts[p] = true
	}
	s.own.mu.Unlock()
	s.m.ownedPartitions.Set(float64(s.own.count()))
	for _, p := range parts {
		end, ok := ends.Lookup(s.cfg.Topic, p)
		if !ok || end.Err != nil {
			continue
		}
		start := int64(-1)
		if c, ok := committed.Lookup(s.cfg.Topic, p); ok && c.Err == nil && c.At >= 0 {
			start = c.At
		} else if a, ok := after.Lookup(s.cfg.Topic, p); ok && a.Err == nil {
			start = a.Offset
		}
		s.telemetryCatchUp.add(p, start, end.Offset)
	}
	s.telemetryCatchUp.start()
	s.log.Info("telemetry partitions assigned", "partitions", parts, "owned", s.own.count(), "of", nparts)
	s.noteCatchUp()
}

// revoked gives partitions up: first the positions telemetry changed are
// published (this replica owned them when they changed), then, unless the
// partitions were lost, the offsets are committed, so the next owner starts
// where this one stopped.
func (s *Service) revoked(ctx context.Context, cl *kgo.Client, parts []int32, commit bool) {
	s.publishChanged(cl)
	if commit {
		if err := cl.CommitUncommittedOffsets(ctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("commit on revoke failed", "err", err)
		}
	}
	s.own.mu.Lock()
	for _, p := range parts {
		delete(s.own.parts, p)
	}
	s.own.mu.Unlock()
	for _, p := range parts {
		s.telemetryCatchUp.drop(p)
	}
	s.m.ownedPartitions.Set(float64(s.own.count()))
	if len(parts) > 0 {
		s.log.Info("telemetry partitions given up", "partitions", parts, "lost", !commit)
	}
}

// consume reads this replica's telemetry partitions into the store until
// ctx is done.
func (s *Service) consume(ctx context.Context, cl *kgo.Client) error {
	lag := map[int32]int64{}
	for {
		fetches := cl.PollRecords(ctx, 10_000)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			cl.AllowRebalance()
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, kerr.UnknownTopicOrPartition) {
				s.log.Warn("fetch failed; retrying", "topic", topic, "partition", p, "err", err)
			}
		})
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			for _, r := range fp.Records {
				if !r.Attrs.IsControl() {
					s.applyTelemetry(ctx, r)
				}
				s.telemetryCatchUp.advance(r.Partition, r.Offset)
			}
			if n := len(fp.Records); n > 0 {
				lag[fp.Partition] = max(fp.HighWatermark-fp.Records[n-1].Offset-1, 0)
			}
		})
		total := int64(0)
		for p, l := range lag {
			if !s.ownsPartition(p) {
				delete(lag, p)
				continue
			}
			total += l
		}
		s.m.telemetryLag.Set(float64(total))
		s.noteCatchUp()
		cl.AllowRebalance()
	}
}

func (s *Service) ownsPartition(p int32) bool {
	s.own.mu.Lock()
	defer s.own.mu.Unlock()
	return s.own.parts[p]
}

func (s *Service) noteCatchUp() {
	n := s.telemetryCatchUp.behind()
	s.m.telemetryBehind.Set(float64(n))
	if n == 0 && !s.caughtUp.Load() {
		s.caughtUp.Store(true)
		s.m.caughtUp.Set(1)
		s.log.Info("telemetry caught up", "vehicles", s.store.Len(), "owned_partitions", s.own.count(), "took", time.Since(s.started).Round(time.Millisecond))
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
	s.m.observe("telemetry", s.store.ApplyBatch(b))
}

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
