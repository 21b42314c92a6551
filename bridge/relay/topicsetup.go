package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
)

// topicSpecs are the topics the bridge creates when they are missing.
func (b *Bridge) topicSpecs() []kafkaio.TopicSpec {
	c := b.cfg
	str := func(v int64) *string { s := strconv.FormatInt(v, 10); return &s }
	common := func(retention time.Duration) map[string]*string {
		m := map[string]*string{
			"max.message.bytes": str(int64(c.RecordLimit())),
			"retention.ms":      str(retention.Milliseconds()),
		}
		if isr := c.minInsync(); isr > 0 {
			m["min.insync.replicas"] = str(int64(isr))
		}
		return m
	}
	catalog := common(0)
	delete(catalog, "retention.ms")
	compact := "compact"
	catalog["cleanup.policy"] = &compact
	return []kafkaio.TopicSpec{
		{Name: c.Topic, Partitions: int32(c.Partitions), Replication: int16(c.Replication), Configs: common(c.Retention)},
		{Name: c.DLQTopic, Partitions: int32(c.Partitions), Replication: int16(c.Replication), Configs: common(c.DLQRetention)},
		// Catalogs are few and small: one partition, kept forever by key.
		{Name: c.CatalogTopic, Partitions: 1, Replication: int16(c.Replication), Configs: catalog},
	}
}

// minInsync is the min.insync.replicas to create topics with, 0 for the
// broker's default.
func (c Config) minInsync() int {
	switch {
	case c.MinInsyncReplicas > 0:
		return c.MinInsyncReplicas
	case c.MinInsyncReplicas == 0 && c.Replication > 0:
		return min(2, c.Replication)
	}
	return 0
}

func (b *Bridge) createTopics(ctx context.Context) error {
	for delay := 500 * time.Millisecond; ; delay = min(delay*2, 10*time.Second) {
		err := kafkaio.EnsureTopics(ctx, b.setup, b.topicSpecs()...)
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

// checkTopics warns, at start, about existing topics that cannot do their
// job: a telemetry or DLQ topic whose max.message.bytes is below the
// largest record the bridge produces (such batches go to the DLQ, or are
// cut there), and a catalog topic that is not compacted. The topics may
// have been made by hand, by an older bridge, or by a broker that creates
// topics on first use. It returns the largest record batch the producer
// may build (the smallest limit found), and fails only if ctx ends.
func (b *Bridge) checkTopics(ctx context.Context) (int, error) {
	batchMax := b.cfg.RecordLimit()
	if b.cfg.CreateTopics { // topics seeded by hand (the embedded stack's) are the operator's call
		if err := kafkaio.CheckCompacted(ctx, b.setup, b.cfg.CatalogTopic); err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			b.logger.Error("catalog topic misconfigured: batches referring to expired catalogs become undecodable", "err", err)
		}
	}
	for _, topic := range []string{b.cfg.Topic, b.cfg.DLQTopic} {
		limit, err := maxMessageBytes(ctx, kadm.NewClient(b.setup), topic)
		if err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			b.logger.Warn("cannot read the topic's settings", "topic", topic, "err", err)
			continue
		}
		// franz-go counts a batch's size a little more leniently than
		// Kafka does: keep clear of the limit.
		batchMax = min(batchMax, limit-512)
		if topic == b.cfg.Topic {
			b.topicLimit.Store(int64(limit))
			b.limitRead.Store(time.Now().UnixNano())
		}
		if limit < b.cfg.RecordLimit() {
			b.logger.Error("topic cannot hold the largest accepted batch: raise its max.message.bytes or lower --max-batch-bytes",
				"topic", topic, "max.message.bytes", limit, "needed", b.cfg.RecordLimit(), "max-batch-bytes", b.cfg.MaxBatchBytes)
		}
	}
	return max(batchMax, 1024), nil
}

// maxMessageBytes is a topic's max.message.bytes, asking again for a few
// seconds while a new topic is not known yet to the broker asked.
func maxMessageBytes(ctx context.Context, adm *kadm.Client, topic string) (int, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		rcs, err := adm.DescribeTopicConfigs(ctx, topic)
		var rc kadm.ResourceConfig
		if err == nil {
			rc, err = rcs.On(topic, nil)
		}
		if err == nil {
			err = rc.Err
		}
		if err == nil {
			for _, c := range rc.Configs {
				if c.Key == "max.message.bytes" && c.Value != nil {
					return strconv.Atoi(*c.Value)
				}
			}
			return 0, errors.New("max.message.bytes not reported")
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("describe %s: %w", topic, err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// refreshLimit reads the telemetry topic's max.message.bytes again, at
// most every 10 seconds (Kafka refused a record batch: the topic's
// setting may have changed).
func (b *Bridge) refreshLimit() {
	last := b.limitRead.Load()
	now := time.Now().UnixNano()
	if now-last < int64(10*time.Second) || !b.limitRead.CompareAndSwap(last, now) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(b.produceCtx, 10*time.Second)
		defer cancel()
		if limit, err := maxMessageBytes(ctx, kadm.NewClient(b.setup), b.cfg.Topic); err == nil {
			b.topicLimit.Store(int64(limit))
		}
	}()
}

// recordSize is what a record takes in a record batch of its own, with
// room for the batch's framing.
func recordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value) + 128
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 4
	}
	return n
}
