// Package catalogstore resolves the signal catalogs batches refer to
// (wire.Catalog), reading them from the log-compacted catalog topic the
// bridge writes (topics.KafkaCatalog, key: catalog id in hex, value: the
// serialized catalog).
//
// The store reads the topic only when asked for a catalog it does not hold:
// it then reads up to the topic's current end offsets. That is enough to be
// exact, not just likely: an agent refers to a catalog only after the cloud
// acked it, and the bridge acks a catalog only after Kafka holds it, so any
// batch in Kafka that refers to a catalog was produced after the catalog
// was. A catalog still missing after a catch-up is really unknown.
package catalogstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Store is a wire.CatalogLookup over the catalog topic. It is safe for
// concurrent use.
type Store struct {
	topic  string
	logger *slog.Logger
	cl     *kgo.Client

	mu   sync.RWMutex
	cats map[string]*wire.Catalog

	catchUp sync.Mutex      // one reader of the topic at a time
	next    map[int32]int64 // per partition, the next offset to read
}

// New builds a store reading topic through its own client, configured as
// kc says (brokers, TLS, SASL) but without metrics: kprom takes one client
// per registry, and the binary's main client has it. It does not connect
// yet.
func New(kc kafkaio.Config, topic string, logger *slog.Logger) (*Store, error) {
	opts, err := kc.Opts(logger, nil)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)...)
	if err != nil {
		return nil, fmt.Errorf("catalogs: kafka client: %w", err)
	}
	return &Store{topic: topic, logger: logger, cl: cl, cats: map[string]*wire.Catalog{}, next: map[int32]int64{}}, nil
}

// Close releases the client.
func (s *Store) Close() { s.cl.Close() }

// Catalog implements wire.CatalogLookup from what the store has read.
func (s *Store) Catalog(id []byte) (*wire.Catalog, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.cats[string(id)]
	return c, ok
}

// Len is the number of catalogs the store holds.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.cats)
}

// Decode is wire.Decode with the store's catalogs: a batch that refers to
// a catalog the store has not read yet makes it catch up with the topic
// first, retrying failed catch-ups (a topic not yet known to the broker it
// asked, say) until ctx is done. It fails with an error wrapping
// wire.ErrUnknownCatalog only when the catalog is not in the topic; an
// error from the catch-up itself means the batch could not be checked.
func (s *Store) Decode(ctx context.Context, data []byte, lim wire.Limits) (*wire.Batch, error) {
	return withCatalogs(ctx, s, data, lim, wire.Decode)
}

// DecodeInto is Decode into b, reusing its capacity (wire.DecodeInto).
func (s *Store) DecodeInto(ctx context.Context, data []byte, lim wire.Limits, b *wire.Batch) error {
	_, err := withCatalogs(ctx, s, data, lim, func(data []byte, lim wire.Limits) (struct{}, error) {
		return struct{}{}, wire.DecodeInto(data, lim, b)
	})
	return err
}

// Check is wire.Check with the store's catalogs, catching up as Decode
// does.
func (s *Store) Check(ctx context.Context, data []byte, lim wire.Limits) (wire.Summary, error) {
	return withCatalogs(ctx, s, data, lim, wire.Check)
}

func withCatalogs[T any](ctx context.Context, s *Store, data []byte, lim wire.Limits, read func([]byte, wire.Limits) (T, error)) (T, error) {
	lim.Catalogs = s
	v, err := read(data, lim)
	if !errors.Is(err, wire.ErrUnknownCatalog) {
		return v, err
	}
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		cerr := s.CatchUp(ctx)
		if cerr == nil {
			return read(data, lim)
		}
		s.logger.Warn("catalogs: cannot read the catalog topic yet; retrying", "err", cerr, "in", delay)
		select {
		case <-ctx.Done():
			var zero T
			return zero, cerr
		case <-time.After(delay):
		}
	}
}

// CatchUp reads the catalog topic up to its end offsets as of the call.
// Compaction may remove records before a partition's last one, never the
// last one itself (the active segment is not compacted, and nothing writes
// tombstones or transactions here), so reaching each end offset means
// seeing the record just before it. Bound ctx: CatchUp returns ctx's error
// if Kafka is out of reach.
func (s *Store) CatchUp(ctx context.Context) error {
	s.catchUp.Lock()
	defer s.catchUp.Unlock()
	ends, err := kadm.NewClient(s.cl).ListEndOffsets(ctx, s.topic)
	if err != nil {
		return fmt.Errorf("catalogs: end offsets of %s: %w", s.topic, err)
	}
	if err := ends.Error(); err != nil {
		return fmt.Errorf("catalogs: end offsets of %s: %w", s.topic, err)
	}
	behind := func() bool {
		for p, o := range ends[s.topic] {
			if s.next[p] < o.Offset {
				return true
			}
		}
		return false
	}
	for behind() {
		fs := s.cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("catalogs: reading %s: %w", s.topic, err)
		}
		for _, fe := range fs.Errors() {
			if errors.Is(fe.Err, context.Canceled) || errors.Is(fe.Err, context.DeadlineExceeded) {
				continue
			}
			s.logger.Warn("catalogs: fetch error", "topic", fe.Topic, "partition", fe.Partition, "err", fe.Err)
		}
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			for _, r := range p.Records {
				s.add(r)
				s.next[p.Partition] = r.Offset + 1
			}
		})
	}
	return nil
}

func (s *Store) add(r *kgo.Record) {
	cat, err := wire.ParseCatalog(r.Value, wire.Limits{})
	if err != nil {
		s.logger.Warn("catalogs: skipping an unreadable catalog", "partition", r.Partition, "offset", r.Offset, "err", err)
		return
	}
	if key := string(r.Key); key != hex.EncodeToString(cat.ID()) {
		s.logger.Warn("catalogs: skipping a catalog whose key is not its id", "partition", r.Partition, "offset", r.Offset, "key", key)
		return
	}
	s.mu.Lock()
	s.cats[string(cat.ID())] = cat
	s.mu.Unlock()
}
