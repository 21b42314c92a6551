// Package sink writes the telemetry topic to Parquet files on S3, every
// reading exactly once, with a consumer group spreading the partitions over
// replicas.
//
// Each assigned partition gets a parquetlog.Writer, which does the work and
// holds the guarantees (read its package documentation for the windows,
// the fenced checkpoint and why a stale writer is harmless). The sink:
//
//   - claims a partition's checkpoint as the group assigns it, and starts
//     fetching at the checkpoint's offset (the group's committed offset is
//     only used for a partition that has no checkpoint yet);
//   - decodes each record (verifying its checksum; resolving its signal
//     catalog) and hands it to the partition's writer;
//   - every second, lets writers of caught-up partitions close quiet
//     windows, and commits to Kafka the offsets the checkpoints have
//     reached (for lag monitoring and tools: the checkpoints are the truth);
//   - drops a partition's writer when the group revokes or loses the
//     partition, or when the writer fails (fenced by another member, S3 out
//     of reach): its open window is discarded, never written half, and is
//     read again from the checkpoint — by this member after a backoff if the
//     partition is still assigned to it, or by its new owner.
//
// On shutdown the open windows are discarded (their records are read again
// after restart) unless --flush-on-stop asks to write them where they stand.
//
// Metrics (namespace fleet_sink): those of parquetlog.Metrics, and
//
//	fleet_sink_partitions                       partitions assigned, by state: writing, waiting (to claim again)
//	fleet_sink_consumer_lag{partition}          high watermark minus the offset committed to Parquet
//	fleet_sink_writer_errors_total{kind}        writers dropped: fenced, conflict, s3, decode, claim
//
// plus the franz-go client metrics under fleet_kafka_*.
package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/gotune"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetlog"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Deps are the sink's dependencies.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// OwnProcess lets the sink set the Go runtime's soft memory limit
	// (Config.MemoryLimit) as its partitions come and go: the binary sets
	// it; a sink embedded with other services leaves the runtime alone.
	OwnProcess bool
}

// Sink is the Kafka-to-Parquet writer. A Sink runs once.
type Sink struct {
	cfg      Config
	logger   *slog.Logger
	m        *metrics
	lm       *parquetlog.Metrics
	store    *objstore.Store
	kafka    *kgo.Client
	admin    *admin.Server
	catalogs *catalogstore.Store
	// ownProcess and memLimit: see tuneMemory.
	ownProcess bool
	memLimit   int64

	mu    sync.Mutex // guards parts and batch; rebalance callbacks run on other goroutines
	parts map[int32]*partition
	batch wire.Batch // decoded records go here, one at a time
}

// partition is one assigned Kafka partition.
type partition struct {
	id int32
	w  *parquetlog.Writer // nil while waiting to claim (again)
	// start is where to read from when the partition has no checkpoint:
	// the group's committed offset, or -1 for the log's start.
	start int64
	// expect is the offset the first record after a claim must have;
	// checked once, then -1.
	expect    int64
	hwm       int64 // the partition's high watermark, as of the last fetch
	next      int64 // the offset after the last record fetched (markers included)
	committed int64 // last offset committed to the group
	retryAt   time.Time
	backoff   time.Duration
}

// Decode limits: generous, because a record the sink cannot decode is a
// record it cannot write. The bridge applies the tight limits at the door.
var decodeLimits = wire.Limits{MaxBatchBytes: 64 << 20, MaxBodyBytes: 256 << 20, MaxReadings: 16 << 20}

// New builds the sink and binds its admin port. Nothing connects until Run.
func New(ctx context.Context, cfg Config, deps Deps) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Sink{
		cfg: cfg, logger: deps.Logger, m: newMetrics(deps.Registerer), ownProcess: deps.OwnProcess,
		lm:    parquetlog.NewMetrics(deps.Registerer, "fleet_sink"),
		parts: map[int32]*partition{},
	}
	st, err := objstore.New(ctx, cfg.S3, objstore.Deps{Logger: deps.Logger})
	if err != nil {
		return nil, err
	}
	s.store = st
	kopts, err := cfg.Kafka.Opts(deps.Logger, deps.Registerer)
	if err != nil {
		return nil, err
	}
	kopts = append(kopts,
		kgo.ConsumerGroup(cfg.Group),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.RebalanceTimeout(cfg.RebalanceTimeout),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Transaction markers come through (and are skipped in write), so
		// the sink knows when it has read a transactional topic to its
		// end and a checkpoint at a marker's offset is where reading
		// resumes.
		kgo.KeepControlRecords(),
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

// Run checks that it can write the bucket, then consumes until ctx is
// cancelled; then it discards (or, with FlushOnStop, writes) the open
// windows, commits, and leaves the group.
func (s *Sink) Run(ctx context.Context) error {
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	g, gctx := errgroup.WithContext(adminCtx)
	g.Go(func() error { return s.admin.Run(gctx) })
	defer func() {
		stopAdmin()
		_ = g.Wait()
		s.catalogs.Close()
	}()

	probe := "_sink/write-check/" + s.writerName() + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	checkCtx, cancel := context.WithTimeout(ctx, time.Minute)
	err := s.store.CheckWritable(checkCtx, probe)
	cancel()
	if err != nil {
		s.kafka.Close()
		if ctx.Err() != nil {
			return nil // stopped before it started
		}
		return fmt.Errorf("sink: %w", err)
	}
	s.logger.Info("parquet sink starting", "topic", s.cfg.Topic, "group", s.cfg.Group, "s3", s.store.URI(""), "admin", s.admin.URL())

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		pollCtx, cancel := context.WithTimeout(ctx, time.Second)
		fetches := s.kafka.PollRecords(pollCtx, 10_000)
		cancel()
		if fetches.IsClientClosed() {
			break
		}
		s.mu.Lock()
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			if fp.Err != nil && !errors.Is(fp.Err, context.DeadlineExceeded) && !errors.Is(fp.Err, context.Canceled) {
				s.logger.Warn("fetch error", "partition", fp.Partition, "err", fp.Err)
			}
			if p := s.parts[fp.Partition]; p != nil && fp.Topic == s.cfg.Topic {
				p.hwm = max(p.hwm, fp.HighWatermark)
				s.write(ctx, p, fp.Records)
			}
		})
		select {
		case <-tick.C:
			s.maintain(ctx, time.Now())
		default:
		}
		s.mu.Unlock()
		s.kafka.AllowRebalance()
	}
	return s.shutdown()
}

// tuneMemory sets the Go runtime's soft memory limit for the partitions
// this member owns (Config.MemoryLimit), unless the process is not the
// sink's own or GOMEMLIMIT is set.
func (s *Sink) tuneMemory(partitions int) {
	if !s.ownProcess || s.cfg.MemoryLimit < 0 {
		return
	}
	limit := s.cfg.MemoryLimit
	if limit == 0 {
		limit = MemoryLimitFor(partitions, s.cfg.RowGroupRows)
	}
	if limit != s.memLimit && gotune.SetMemoryLimit(limit) {
		s.memLimit = limit
		s.logger.Debug("Go memory limit set", "bytes", limit, "partitions", partitions)
	}
}

func (s *Sink) writerName() string {
	if s.cfg.InstanceID != "" {
		return s.cfg.InstanceID
	}
	return s.cfg.Kafka.ClientID
}

// write hands a partition's fetched records to its writer. Called with
// s.mu held.
func (s *Sink) write(ctx context.Context, p *partition, recs []*kgo.Record) {
	for _, r := range recs {
		if p.w == nil {
			return // waiting to claim again: the records are read again then
		}
		if p.expect >= 0 {
			if r.Offset < p.expect {
				continue // fetched before the seek
			}
			if r.Offset > p.expect && !s.recordsGone(ctx, p) {
				// Not where the seek said: a fetch from before it. Seek again.
				s.logger.Warn("first record after a claim is past the checkpoint; seeking again", "partition", p.id, "want", p.expect, "got", r.Offset)
				s.drop(p, errors.New("unexpected first offset"), "seek")
				return
			}
			p.expect = -1
		}
		p.next = r.Offset + 1
		if r.Attrs.IsControl() {
			continue // a transaction's commit or abort marker
		}
		// One Batch, reused: a writer keeps nothing of it after Add.
		err := s.catalogs.DecodeInto(ctx, r.Value, decodeLimits, &s.batch)
		rec := parquetlog.Record{Offset: r.Offset, Timestamp: r.Timestamp, Batch: &s.batch}
		if err != nil {
			if !wire.IsInvalid(err) {
				// The catalog topic is out of reach and ctx ended: stop here.
				s.drop(p, fmt.Errorf("decode offset %d: %w", r.Offset, err), "decode")
				return
			}
			rec.Batch, rec.Invalid = nil, err
		}
		// A window's commit runs to its end even if Run is being stopped:
		// only the S3 retries bound it.
		if err := p.w.Add(context.WithoutCancel(ctx), rec); err != nil {
			s.drop(p, err, "")
			return
		}
	}
}

// recordsGone reports whether the records between p.expect and the first
// one fetched have left Kafka (retention): then the writer starts at the
// first one left. Otherwise the fetch was from before a seek.
func (s *Sink) recordsGone(ctx context.Context, p *partition) bool {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	starts, err := kadm.NewClient(s.kafka).ListStartOffsets(lctx, s.cfg.Topic)
	if err != nil {
		return false
	}
	o, ok := starts.Lookup(s.cfg.Topic, p.id)
	return ok && o.Err == nil && o.Offset > p.expect
}

// drop discards a partition's writer after an error; the partition is
// claimed again after a backoff if it is still assigned. kind labels the
// metric ("" classifies err). Called with s.mu held.
func (s *Sink) drop(p *partition, err error, kind string) {
	if p.w != nil {
		p.w.Abandon(context.Background())
		p.w = nil
	}
	s.kafka.PauseFetchPartitions(map[string][]int32{s.cfg.Topic: {p.id}})
	if kind == "" {
		switch {
		case errors.Is(err, parquetlog.ErrFenced):
			kind = "fenced"
		case errors.Is(err, parquetlog.ErrConflict):
			kind = "conflict"
		default:
			kind = "s3"
		}
	}
	p.backoff = min(max(2*p.backoff, time.Second), 30*time.Second)
	switch kind {
	case "seek":
		p.backoff = 0
	case "conflict":
		p.backoff = 5 * time.Minute
	}
	p.retryAt = time.Now().Add(p.backoff)
	s.m.writerErrors.WithLabelValues(kind).Inc()
	lvl := slog.LevelWarn
	if kind == "conflict" {
		lvl = slog.LevelError
	}
	s.logger.Log(context.Background(), lvl, "partition writer stopped; its open window is discarded and read again",
		"partition", p.id, "kind", kind, "err", err, "retry_in", p.backoff)
}

// maintain runs every second: quiet windows, claims to retry, Kafka
// commits and lag. Called with s.mu held.
func (s *Sink) maintain(ctx context.Context, now time.Time) {
	commits := map[int32]kgo.EpochOffset{}
	writing := 0
	for _, id := range slices.Sorted(maps.Keys(s.parts)) {
		p := s.parts[id]
		if p.w == nil && !now.Before(p.retryAt) {
			s.claimAgain(ctx, p)
		}
		if p.w == nil {
			continue
		}
		writing++
		if _, err := p.w.Tick(context.WithoutCancel(ctx), now, p.hwm >= 0 && p.next >= p.hwm); err != nil {
			s.drop(p, err, "")
			continue
		}
		if c := p.w.Committed(); c > p.committed {
			commits[id] = kgo.EpochOffset{Epoch: -1, Offset: c}
			p.committed = c
		}
		if c := p.w.Committed(); c >= 0 && p.hwm >= c {
			s.m.lag.WithLabelValues(strconv.Itoa(int(id))).Set(float64(p.hwm - c))
		}
	}
	s.m.partitions.WithLabelValues("writing").Set(float64(writing))
	s.tuneMemory(len(s.parts))
	s.m.partitions.WithLabelValues("waiting").Set(float64(len(s.parts) - writing))
	if len(commits) > 0 {
		s.kafka.CommitOffsets(context.WithoutCancel(ctx), map[string]map[int32]kgo.EpochOffset{s.cfg.Topic: commits}, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
			if err != nil && ctx.Err() == nil {
				s.logger.Debug("offset commit failed (the S3 checkpoints hold the position)", "err", err)
			}
		})
	}
}

// claimAgain claims a partition whose writer was dropped and seeks to its
// checkpoint. Called with s.mu held.
func (s *Sink) claimAgain(ctx context.Context, p *partition) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	w, err := parquetlog.Claim(cctx, s.cfg.writerConfig(p.id, p.start), s.writerDeps())
	cancel()
	if err != nil {
		s.drop(p, err, "claim")
		return
	}
	p.w = w
	next := w.Next()
	if next < 0 {
		next = max(p.start, 0) // an offset before the log's start resets to it
	}
	p.expect, p.next = w.Next(), -1
	s.kafka.SetOffsets(map[string]map[int32]kgo.EpochOffset{s.cfg.Topic: {p.id: {Epoch: -1, Offset: next}}})
	s.kafka.ResumeFetchPartitions(map[string][]int32{s.cfg.Topic: {p.id}})
	s.logger.Info("partition claimed again", "partition", p.id, "offset", next, "generation", w.Generation())
}

func (s *Sink) writerDeps() parquetlog.Deps {
	return parquetlog.Deps{Store: s.store, Logger: s.logger, Metrics: s.lm}
}

// onAssigned claims newly assigned partitions (concurrently) and starts
// each at its checkpoint's offset.
func (s *Sink) onAssigned(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := offsets[s.cfg.Topic]
	if len(parts) == 0 {
		return offsets, nil
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, id := range slices.Sorted(maps.Keys(parts)) {
		start := parts[id].EpochOffset().Offset
		if start < 0 {
			start = -1
		}
		g.Go(func() error {
			p := &partition{id: id, start: start, expect: -1, hwm: -1, next: -1, committed: -1}
			cctx, cancel := context.WithTimeout(gctx, time.Minute)
			w, err := parquetlog.Claim(cctx, s.cfg.writerConfig(id, start), s.writerDeps())
			cancel()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				// Fetch from where the group says; the records are dropped
				// and the partition claimed again (and sought) shortly.
				s.logger.Warn("could not claim an assigned partition; retrying", "partition", id, "err", err)
				s.m.writerErrors.WithLabelValues("claim").Inc()
				p.retryAt = time.Now().Add(time.Second)
			} else {
				p.w = w
				if n := w.Next(); n >= 0 {
					parts[id] = kgo.NewOffset().At(n).WithEpoch(-1)
				}
				s.logger.Info("partition assigned", "partition", id, "offset", w.Next(), "generation", w.Generation())
			}
			s.mu.Lock()
			if old := s.parts[id]; old != nil && old.w != nil {
				old.w.Abandon(context.Background())
			}
			s.parts[id] = p
			s.mu.Unlock()
			return nil
		})
	}
	_ = g.Wait()
	return offsets, nil
}

// onRevoked drops revoked partitions' writers: their open windows are read
// again by the new owner from the checkpoints.
func (s *Sink) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	s.release(revoked[s.cfg.Topic], "revoked")
}

// onLost drops lost partitions' writers (this member's session ended:
// another member owns them now and has fenced these writers).
func (s *Sink) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	s.release(lost[s.cfg.Topic], "lost")
}

func (s *Sink) release(ids []int32, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A partition paused after an error must fetch again when it comes back.
	s.kafka.ResumeFetchPartitions(map[string][]int32{s.cfg.Topic: ids})
	for _, id := range ids {
		if p := s.parts[id]; p != nil {
			if p.w != nil {
				p.w.Abandon(context.Background())
			}
			delete(s.parts, id)
			s.m.lag.DeleteLabelValues(strconv.Itoa(int(id)))
			s.logger.Info("partition "+why, "partition", id)
		}
	}
}

// shutdown ends every writer (writing the open windows with FlushOnStop),
// commits the reached offsets and leaves the group.
func (s *Sink) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	s.mu.Lock()
	var errs error
	commits := map[int32]kgo.EpochOffset{}
	for _, id := range slices.Sorted(maps.Keys(s.parts)) {
		p := s.parts[id]
		if p.w == nil {
			continue
		}
		if s.cfg.FlushOnStop {
			if err := p.w.Cut(ctx, "stop"); err != nil {
				errs = errors.Join(errs, fmt.Errorf("partition %d: %w", id, err))
			}
		}
		if c := p.w.Committed(); c >= 0 {
			commits[id] = kgo.EpochOffset{Epoch: -1, Offset: c}
		}
		p.w.Abandon(ctx)
		p.w = nil
	}
	s.mu.Unlock()
	if len(commits) > 0 {
		s.kafka.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{s.cfg.Topic: commits},
			func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
				if err != nil {
					s.logger.Debug("final offset commit failed (the S3 checkpoints hold the position)", "err", err)
				}
			})
	}
	s.kafka.Close()
	if errs != nil {
		return fmt.Errorf("sink: final write: %w (the records stay in Kafka and are written after restart)", errs)
	}
	s.logger.Info("parquet sink stopped")
	return nil
}
