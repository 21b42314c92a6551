// Package sink writes the telemetry topic to Parquet files on S3, every
// reading exactly once.
//
// Records are consumed in a Kafka consumer group and decoded; each batch's
// readings go to the long `readings` table and its fixes to the wide
// `locations` table, partitioned Hive-style by the readings' UTC date and
// hour. Per Kafka partition the sink buffers rows until a limit (rows,
// bytes, age) is hit, then writes one file per (table, hour) named
// {topic}+{partition}+{first offset}.parquet.
//
// Exactly once: a per-partition checkpoint on S3 holds the next offset to
// read, the files a write in progress may leave behind, and a filter of the
// batch identities already written. A write first records its files in the
// checkpoint, then uploads them, then records the new offset and filter,
// and only then commits the offset to Kafka. On (re)assignment the sink
// resumes from the checkpoint: a crash at any point rewrites the same file
// names (overwriting), deletes files of an interrupted write that it did
// not rewrite, and drops batches the filter has seen, such as the copies an
// agent's re-send or a bridge's retry put in Kafka.
//
// Metrics (namespace fleet_sink):
//
//	fleet_sink_records_total{result="ok|duplicate|invalid"}  Kafka records consumed
//	fleet_sink_rows_total{table}                            rows written to files
//	fleet_sink_files_total{table}                           files written
//	fleet_sink_bytes_total                                  Parquet bytes uploaded
//	fleet_sink_flush_seconds                                time to write a partition's files
//	fleet_sink_flush_errors_total                           failed writes (retried)
//	fleet_sink_buffered_rows                                rows waiting to be written
//
// plus the franz-go client metrics under fleet_kafka_*.
package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// ObjectStore is the part of S3 the sink uses.
type ObjectStore interface {
	Put(ctx context.Context, key string, body io.Reader, size int64, contentType string) error
	Get(ctx context.Context, key string) ([]byte, error) // wraps objstore.ErrNotFound when missing
	Delete(ctx context.Context, key string) error
}

// Deps are the sink's dependencies.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Store overrides the S3 store built from Config.S3 (tests, embedded stack).
	Store ObjectStore
}

// Sink is the Kafka-to-Parquet writer. A Sink runs once.
type Sink struct {
	cfg    Config
	logger *slog.Logger
	m      *metrics
	store  ObjectStore
	kafka  *kgo.Client
	admin  *admin.Server
	opts   []parquet.WriterOption
	// catalogs resolves the signal catalogs batches refer to.
	catalogs *catalogstore.Store

	mu    sync.Mutex // guards parts; rebalance callbacks run on other goroutines
	parts map[int32]*partition
}

// partition is the sink's state for one assigned Kafka partition.
type partition struct {
	id      int32
	seen    *seenFilter // as of nextCommitted
	stale   []string    // files an interrupted write may have left, to delete
	bufs    map[hourKey]*hourBuf
	bufIDs  map[wire.Identity]struct{}
	first   int64 // first offset in the buffer, -1 when nothing is buffered
	next    int64 // offset after the last record buffered
	rows    int
	size    int
	opened  time.Time
	flushed int64 // next offset of the last checkpoint written
	// halted is set when shutdown interrupted the decoding of a record:
	// nothing after it is buffered.
	halted bool
}

// New builds the sink and binds its admin port. Nothing connects until Run.
func New(ctx context.Context, cfg Config, deps Deps) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c, _ := codec(cfg.Compression)
	s := &Sink{
		cfg: cfg, logger: deps.Logger, m: newMetrics(deps.Registerer), store: deps.Store,
		parts: map[int32]*partition{},
		opts: []parquet.WriterOption{
			parquet.Compression(c),
			parquet.MaxRowsPerRowGroup(int64(cfg.RowGroupRows)),
			parquet.CreatedBy("fleetpipe parquet-sink", "0.1.0", ""),
		},
	}
	if s.store == nil {
		st, err := objstore.New(ctx, cfg.S3, objstore.Deps{Logger: deps.Logger})
		if err != nil {
			return nil, err
		}
		s.store = st
	}
	kopts, err := cfg.Kafka.Opts(deps.Logger, deps.Registerer)
	if err != nil {
		return nil, err
	}
	kopts = append(kopts,
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.AdjustFetchOffsetsFn(s.onAssigned),
		kgo.OnPartitionsRevoked(s.onRevoked),
		kgo.OnPartitionsLost(s.onLost),
	)
	if cfg.InstanceID != "" {
		kopts = append(kopts, kgo.InstanceID(cfg.InstanceID))
	}
	if s.catalogs, err = catalogstore.New(cfg.Kafka, cfg.CatalogTopic, deps.Logger); err != nil {
		return nil, err
	}
	if s.kafka, err = kgo.NewClient(kopts...); err != nil {
		s.catalogs.Close()
		return nil, fmt.Errorf("sink: kafka client: %w", err)
	}
	s.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: deps.Logger, Gatherer: deps.Gatherer})
	if err != nil {
		s.kafka.Close()
		s.catalogs.Close()
		return nil, err
	}
	s.admin.AddReadyCheck("kafka", func(ctx context.Context) error { return s.kafka.Ping(ctx) })
	return s, nil
}

// AdminURL is the URL of the metrics and health endpoints.
func (s *Sink) AdminURL() string { return s.admin.URL() }

// Run consumes until ctx is cancelled, then writes out everything buffered,
// commits, and leaves the group.
func (s *Sink) Run(ctx context.Context) error {
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	g, gctx := errgroup.WithContext(adminCtx)
	g.Go(func() error { return s.admin.Run(gctx) })
	defer func() {
		stopAdmin()
		_ = g.Wait()
		s.catalogs.Close()
	}()
	s.logger.Info("parquet sink starting", "topic", s.cfg.Topic, "group", s.cfg.Group, "admin", s.admin.URL())

	tick := min(s.cfg.MaxFileAge/4, time.Second)
	for ctx.Err() == nil {
		pollCtx, cancel := context.WithTimeout(ctx, tick)
		// Small polls keep the file limits (checked after each poll) tight.
		fetches := s.kafka.PollRecords(pollCtx, 1000)
		cancel()
		if fetches.IsClientClosed() {
			break
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				s.logger.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		s.mu.Lock()
		fetches.EachRecord(func(r *kgo.Record) { s.add(ctx, r) })
		err := s.flushDue(ctx, time.Now())
		s.mu.Unlock()
		s.kafka.AllowRebalance()
		if err != nil && ctx.Err() == nil {
			s.logger.Error("writing files failed; will retry", "err", err)
			s.m.flushErrors.Inc()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}

	// Shutdown: write out and commit what is buffered, then leave the group.
	s.logger.Info("parquet sink flushing before exit")
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.mu.Lock()
	var ferr error
	for _, p := range s.sortedParts() {
		if err := s.flush(fctx, p); err != nil {
			ferr = errors.Join(ferr, err)
		}
	}
	s.mu.Unlock()
	s.kafka.Close()
	if ferr != nil {
		return fmt.Errorf("sink: final write: %w (the data stays in Kafka and is written after restart)", ferr)
	}
	s.logger.Info("parquet sink stopped")
	return nil
}

func (s *Sink) sortedParts() []*partition {
	ids := slices.Sorted(maps.Keys(s.parts))
	out := make([]*partition, len(ids))
	for i, id := range ids {
		out[i] = s.parts[id]
	}
	return out
}

// add buffers one record. Called with s.mu held. A record that refers to a
// catalog blocks its partition until the catalog topic is readable; if ctx
// ends first, the record and the rest of its partition's fetch are left
// unbuffered, so the checkpoint stops before them and they are read again.
func (s *Sink) add(ctx context.Context, r *kgo.Record) {
	p := s.parts[r.Partition]
	if p == nil {
		// Not assigned through onAssigned (cannot happen with a group);
		// refuse rather than write without a checkpoint.
		s.logger.Error("record from an unassigned partition", "partition", r.Partition)
		return
	}
	if r.Offset < p.next || p.halted {
		return // already buffered (a re-fetch after an offset reset), or halted at shutdown
	}
	b, err := s.catalogs.Decode(ctx, r.Value, wire.Limits{})
	if err != nil && !wire.IsInvalid(err) {
		p.halted = true
		s.logger.Warn("record not decoded before shutdown; it is read again after restart", "partition", r.Partition, "offset", r.Offset, "err", err)
		return
	}
	if p.first < 0 {
		p.first = r.Offset
		p.opened = time.Now()
	}
	p.next = r.Offset + 1
	if err != nil {
		s.m.records.WithLabelValues("invalid").Inc()
		s.logger.Warn("skipping undecodable record", "partition", r.Partition, "offset", r.Offset, "err", err)
		return
	}
	if _, dup := p.bufIDs[b.Identity]; dup || p.seen.has(b.Identity) {
		s.m.records.WithLabelValues("duplicate").Inc()
		return
	}
	p.bufIDs[b.Identity] = struct{}{}
	rows, size := appendBatch(p.bufs, b)
	p.rows += rows
	p.size += size
	s.m.buffered.Add(float64(rows))
	s.m.records.WithLabelValues("ok").Inc()
}

func (s *Sink) flushDue(ctx context.Context, now time.Time) error {
	var err error
	for _, p := range s.sortedParts() {
		if p.first < 0 {
			continue
		}
		if p.rows >= s.cfg.MaxFileRows || p.size >= s.cfg.MaxFileBytes || now.Sub(p.opened) >= s.cfg.MaxFileAge {
			if e := s.flush(ctx, p); e != nil {
				err = errors.Join(err, e)
			}
		}
	}
	return err
}

// flushTimeout bounds one partition's write (upload, checkpoints, commit).
const flushTimeout = 2 * time.Minute

type file struct {
	key  string
	data []byte
	rows int
	tbl  string
}

// flush writes a partition's buffer as files, checkpoints and commits.
// On error the buffer is kept, to be written again later under the same
// names. Called with s.mu held.
func (s *Sink) flush(ctx context.Context, p *partition) error {
	if p.first < 0 {
		return nil
	}
	// Bound the whole write: a hung S3 must not hold the lock (and so the
	// group's rebalances) forever; the buffer is kept and written again.
	ctx, cancelWrite := context.WithTimeout(ctx, flushTimeout)
	defer cancelWrite()
	start := time.Now()
	var files []file
	for _, h := range slices.SortedFunc(maps.Keys(p.bufs), func(a, b hourKey) int {
		return compareHour(a, b)
	}) {
		data, err := p.bufs[h].encode(h.table, s.opts)
		if err != nil {
			return fmt.Errorf("sink: encode %s: %w", h.table, err)
		}
		n := len(p.bufs[h].readings) + len(p.bufs[h].locations)
		files = append(files, file{key: objectKey(h, s.cfg.Topic, p.id, p.first), data: data, rows: n, tbl: h.table})
	}
	keys := make([]string, len(files))
	for i, f := range files {
		keys[i] = f.key
	}

	// 1. Record the files this write may leave behind.
	if len(files) > 0 {
		intent := &checkpoint{Topic: s.cfg.Topic, Partition: p.id, NextOffset: p.first,
			Pending: union(keys, p.stale), Seen: p.seen.snapshot()}
		if err := s.putCheckpoint(ctx, intent); err != nil {
			return err
		}
	}
	// 2. Upload them.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, f := range files {
		g.Go(func() error {
			if err := s.store.Put(gctx, f.key, bytes.NewReader(f.data), int64(len(f.data)), "application/vnd.apache.parquet"); err != nil {
				return fmt.Errorf("sink: upload %s: %w", f.key, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// 3. Delete files an interrupted earlier write left and this one did not overwrite.
	for _, k := range p.stale {
		if !slices.Contains(keys, k) {
			if err := s.store.Delete(ctx, k); err != nil {
				return fmt.Errorf("sink: delete stale %s: %w", k, err)
			}
			s.logger.Info("deleted file of an interrupted write", "key", k)
		}
	}
	// 4. Record the new position and filter. The files are on S3 now:
	// finish recording them even if ctx is cancelled (a stop during this
	// step would otherwise leave the intent checkpoint and no commit behind,
	// and the next owner would redo the write).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for id := range p.bufIDs {
		p.seen.add(id)
	}
	done := &checkpoint{Topic: s.cfg.Topic, Partition: p.id, NextOffset: p.next, Seen: p.seen.snapshot()}
	if err := s.putCheckpoint(ctx, done); err != nil {
		// The seen filter already holds this buffer's batches; keeping the
		// buffer would be wrong too. The files are written, so move on; the
		// next checkpoint covers this one.
		s.logger.Warn("checkpoint after write failed; the next write records it", "partition", p.id, "err", err)
	}
	// 5. Commit to Kafka (the checkpoint is the truth; this is for tools
	// that watch consumer lag).
	s.kafka.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{
		s.cfg.Topic: {p.id: {Epoch: -1, Offset: p.next}},
	}, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			s.logger.Debug("offset commit failed (the S3 checkpoint still holds the position)", "partition", p.id, "err", err)
		}
	})

	for _, f := range files {
		s.m.rows.WithLabelValues(f.tbl).Add(float64(f.rows))
		s.m.files.WithLabelValues(f.tbl).Inc()
		s.m.bytes.Add(float64(len(f.data)))
	}
	s.m.buffered.Sub(float64(p.rows))
	s.m.flushSeconds.Observe(time.Since(start).Seconds())
	s.logger.Debug("wrote partition files", "partition", p.id, "first_offset", p.first, "next_offset", p.next,
		"files", len(files), "rows", p.rows, "took", time.Since(start))
	p.flushed = p.next
	p.stale = nil
	p.reset()
	return nil
}

func (p *partition) reset() {
	p.bufs = map[hourKey]*hourBuf{}
	p.bufIDs = map[wire.Identity]struct{}{}
	p.first, p.rows, p.size = -1, 0, 0
}

func compareHour(a, b hourKey) int {
	if a.table != b.table {
		if a.table < b.table {
			return -1
		}
		return 1
	}
	if a.date != b.date {
		if a.date < b.date {
			return -1
		}
		return 1
	}
	return a.hour - b.hour
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

func (s *Sink) putCheckpoint(ctx context.Context, c *checkpoint) error {
	data, err := c.marshal()
	if err != nil {
		return err
	}
	if err := s.store.Put(ctx, checkpointKey(c.Topic, c.Partition), bytes.NewReader(data), int64(len(data)), "application/json"); err != nil {
		return fmt.Errorf("sink: write checkpoint: %w", err)
	}
	return nil
}

// onAssigned loads the checkpoints of newly assigned partitions and starts
// each at its checkpoint's offset (the group's committed offset is only
// used for partitions that have no checkpoint yet).
func (s *Sink) onAssigned(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	for topic, parts := range offsets {
		if topic != s.cfg.Topic {
			continue
		}
		for id := range parts {
			p := &partition{id: id, seen: newSeenFilter(s.cfg.DedupEpochs), next: -1}
			p.reset()
			data, err := s.getCheckpoint(ctx, topic, id)
			switch {
			case errors.Is(err, objstore.ErrNotFound):
				s.logger.Info("partition assigned; no checkpoint yet", "partition", id)
			case err != nil:
				return nil, err // the client retries the assignment
			default:
				c, err := parseCheckpoint(data)
				if err == nil {
					err = p.seen.restore(c.Seen)
				}
				if err != nil {
					return nil, fmt.Errorf("sink: partition %d: %w", id, err)
				}
				p.stale = c.Pending
				p.next = c.NextOffset
				p.flushed = c.NextOffset
				parts[id] = kgo.NewOffset().At(c.NextOffset).WithEpoch(-1)
				s.logger.Info("partition assigned; resuming from checkpoint", "partition", id, "offset", c.NextOffset, "interrupted_files", len(c.Pending))
			}
			s.mu.Lock()
			s.parts[id] = p
			s.mu.Unlock()
		}
	}
	return offsets, nil
}

func (s *Sink) getCheckpoint(ctx context.Context, topic string, id int32) ([]byte, error) {
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		data, err := s.store.Get(ctx, checkpointKey(topic, id))
		if err == nil || errors.Is(err, objstore.ErrNotFound) {
			return data, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 500 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("sink: read checkpoint of partition %d: %w", id, last)
}

// onRevoked writes out revoked partitions before they move to another
// member, so that it resumes where this one stopped.
func (s *Sink) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range revoked[s.cfg.Topic] {
		if p := s.parts[id]; p != nil {
			if err := s.flush(ctx, p); err != nil {
				s.logger.Warn("could not write a revoked partition; its new owner re-reads it", "partition", id, "err", err)
				s.m.buffered.Sub(float64(p.rows))
			}
			delete(s.parts, id)
		}
	}
}

// onLost drops lost partitions' buffers: another member owns them now and
// re-reads from the checkpoint.
func (s *Sink) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range lost[s.cfg.Topic] {
		if p := s.parts[id]; p != nil {
			s.m.buffered.Sub(float64(p.rows))
			delete(s.parts, id)
		}
	}
}
