// Package replay re-reads a chosen slice of the telemetry topic
// (fleet.telemetry.v1) and sends every record in it to a Target: JSON
// lines (a file or stdout), another Kafka topic, or a Parquet backfill.
//
// A slice is a time range (--from/--to, Kafka record timestamps) or offset
// ranges over any partitions (--offsets), optionally narrowed to one
// vehicle (its partition, computed with Kafka's murmur2 partitioner, and
// the records keyed by its ID) and to some signals. Before reading, the
// replay fixes a Plan: per partition, the offsets [start, end), where end is
// never past the high watermark listed at start-up, so it never waits for
// new data. It reads the partitions one after the other, ascending, each
// from start to end, with a client that consumes the partition directly: it
// joins no consumer group and commits no offsets, so the live consumers are
// untouched. The same slice therefore always gives the same records in the
// same order, and each target turns them into the same output.
//
// Targets are implementations of one small interface, Target, picked by
// name from a registry (targets); each --to-* flag names one.
//
// # Exactly once, and resuming
//
// With --resume NAME the replay keeps its state, the whole plan and the
// position up to which the target's output is durable, as the latest
// record keyed NAME in a log-compacted Kafka topic (--state-topic). A
// replay started again with the same name continues from there: after
// Ctrl-C, a crash or kill -9, every record reaches the target once. Each
// target makes that hold in its own way (see Target.Commit): a file is
// fsynced before its length is saved and truncated back to it on resume; a
// Parquet backfill is written as files whose names and contents depend only
// on the records, so a resume rewrites the same objects; a topic is written
// in Kafka transactions that commit the state record with the records.
// Kafka holds the state rather than a local file because only a record in
// the same cluster can commit atomically with a topic target's output, and
// because a backfill started on one machine can then be resumed on
// another; a topic rather than a consumer group because a group's offsets
// hold no plan, and because a replay must never look like, or be, a
// consumer group that lag alerts and reset tools would act on.
//
// # JSON lines
//
// The JSON target writes one object per line, per reading:
//
//	{"vehicle_id":"veh-1","epoch":"00000000deadbeef","seq":42,"partition":3,"offset":1201,
//	 "ts":"2025-06-01T08:00:00.1Z","signal":"speed","unit":"km/h","type":"double","value":12.5}
//
// and per location fix:
//
//	{...same first fields...,"type":"location","lat":37.98,"lon":23.72,"alt":70.5,"speed":8.25,"heading":181.5,"accuracy":3.2}
//
// ts is the reading's (or fix's) own time from the car, RFC 3339 in UTC with
// up to nanosecond digits; epoch is the batch's 64-bit spool epoch as 16 hex
// digits, as logs print batch identities (a JSON number would lose precision
// in many tools); type is double, int, bool or string for readings; a
// non-finite double value is the string "NaN", "+Inf" or "-Inf"; absent fix
// fields are left out. Within a record, readings come first, then fixes,
// each in decoded order.
//
// A record that does not decode (or whose key is not its batch's vehicle) is
// counted, logged and skipped, or ends the replay with --fail-on-bad. The
// topic target forwards records without decoding them.
//
// # Progress and metrics
//
// A bar on a terminal, log lines every --progress-interval otherwise, a log
// line per partition and a summary. With --listen, the counts are served as
// Prometheus metrics while the replay runs (for long backfills):
//
//	fleet_replay_records_total, fleet_replay_bytes_total,
//	fleet_replay_written_records_total, fleet_replay_readings_total,
//	fleet_replay_fixes_total, fleet_replay_bad_records_total,
//	fleet_replay_skipped_records_total, fleet_replay_partitions_done_total
//
// plus the franz-go client metrics under fleet_kafka_*.
package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// ErrStopped is returned (wrapped) by Run when it was stopped before the end
// of the slice; what it wrote up to then is committed.
var ErrStopped = errors.New("replay stopped before the end of the slice")

// Deps are the replay's dependencies.
type Deps struct {
	Logger *slog.Logger
	// Stdout receives --to-jsonl - and the --dry-run plan.
	Stdout io.Writer
	// Stderr receives the progress bar and the command that resumes a
	// stopped replay; nil discards them.
	Stderr io.Writer
	// Args is the command line without the program name, quoted in the
	// command that resumes a stopped replay.
	Args []string
	// Registerer and Gatherer back /metrics when Config.Listen is set;
	// nil gets a private registry.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Stats counts what a replay did.
type Stats struct {
	Records    int64 `json:"records"`    // offsets read in the planned ranges
	Bytes      int64 `json:"bytes"`      // key and value bytes of the records read
	Skipped    int64 `json:"skipped"`    // records of other vehicles (--vehicle)
	Bad        int64 `json:"bad"`        // records that did not decode, skipped
	Written    int64 `json:"written"`    // records sent to the target
	Readings   int64 `json:"readings"`   // readings written
	Fixes      int64 `json:"fixes"`      // location fixes written
	Partitions int64 `json:"partitions"` // ranges finished
}

type counters struct {
	records, bytes, skipped, bad, written, readings, fixes, partitions atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Records: c.records.Load(), Bytes: c.bytes.Load(), Skipped: c.skipped.Load(), Bad: c.bad.Load(),
		Written: c.written.Load(), Readings: c.readings.Load(), Fixes: c.fixes.Load(), Partitions: c.partitions.Load(),
	}
}

func (c *counters) set(s Stats) {
	c.records.Store(s.Records)
	c.bytes.Store(s.Bytes)
	c.skipped.Store(s.Skipped)
	c.bad.Store(s.Bad)
	c.written.Store(s.Written)
	c.readings.Store(s.Readings)
	c.fixes.Store(s.Fixes)
	c.partitions.Store(s.Partitions)
}

// Replayer runs one replay. Run it once; Stats is safe to call at any time.
type Replayer struct {
	cfg    Config
	logger *slog.Logger
	stdout io.Writer
	stderr io.Writer
	args   []string
	opts   []kgo.Opt
	admin  *admin.Server         // nil without --listen
	reg    prometheus.Registerer // nil without --listen

	// wrapTarget, when set, wraps the target Run opens (tests).
	wrapTarget func(Target) Target

	c counters
}

// New checks cfg and prepares a replay; it does not contact Kafka.
func New(cfg Config, deps Deps) (*Replayer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if deps.Stdout == nil {
		return nil, errors.New("replay: Deps.Stdout is nil")
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	stderr := deps.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	var reg prometheus.Registerer
	if cfg.Listen != "" {
		reg = deps.Registerer
		if reg == nil || deps.Gatherer == nil {
			r := prometheus.NewRegistry()
			reg, deps.Gatherer = r, r
		}
	}
	opts, err := cfg.Kafka.Opts(logger, reg)
	if err != nil {
		return nil, err
	}
	r := &Replayer{cfg: cfg, logger: logger, stdout: deps.Stdout, stderr: stderr, args: deps.Args, opts: opts, reg: reg}
	if cfg.Listen != "" {
		r.registerMetrics(reg)
		if r.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: logger, Gatherer: deps.Gatherer}); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Stats returns the counts so far.
func (r *Replayer) Stats() Stats { return r.c.snapshot() }

// AdminURL is where /metrics is served while Run runs, or "" without --listen.
func (r *Replayer) AdminURL() string {
	if r.admin == nil {
		return ""
	}
	return r.admin.URL()
}

// Plan lists what Run would read, without reading any record.
func (r *Replayer) Plan(ctx context.Context) (Plan, error) {
	cl, err := r.client()
	if err != nil {
		return Plan{}, err
	}
	defer cl.Close()
	return plan(ctx, r.cfg, kadm.NewClient(cl), r.logger)
}

// client is the Kafka client of a replay: one for planning and reading
// every range (the metrics hook belongs to one client), and for saving
// state when the target is not transactional. It consumes partitions
// directly, as readRange adds them: no group, nothing committed.
func (r *Replayer) client() (*kgo.Client, error) {
	opts := append(slices.Clip(r.opts),
		// Control records (transaction markers) take offsets too; seeing
		// them lets the loop reach the end offset when a marker is last.
		kgo.KeepControlRecords(),
		// If retention deletes records under us, go on from the new log
		// start rather than fail.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Ranges are read one partition at a time: fetch big.
		kgo.FetchMaxPartitionBytes(32<<20),
		kgo.FetchMaxBytes(64<<20),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return cl, nil
}

// session is the state of one Run.
type session struct {
	cfg      Config // with a resumed replay's slice and target
	kind     Kind
	plan     Plan
	next     []int64 // per range, where reading starts
	target   Target
	catalogs *catalogstore.Store
	store    *stateStore // nil without --resume
	state    *State      // what store saves
	durable  Position    // how far the target's output is durable
	read     Position    // the position after the last record handled
	commitAt time.Time   // when the next periodic commit is due
}

// Run plans the slice (or loads the plan of the replay it resumes), then
// reads it into the target; with --dry-run it prints the plan on stdout and
// reads nothing. It returns when the slice is done or on the first error.
// When ctx is cancelled it commits what the target holds, prints the
// command that continues on Stderr, and returns an error wrapping
// ErrStopped. The target is always closed before Run returns.
func (r *Replayer) Run(ctx context.Context) (err error) {
	if r.admin != nil {
		actx, stop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); _ = r.admin.Run(actx) }()
		defer func() { stop(); <-done }()
	}
	cl, err := r.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	ru := &session{cfg: r.cfg}
	var producer *kgo.Client
	defer func() {
		if producer != nil {
			producer.Close()
		}
	}()
	if err := r.prepare(ctx, cl, ru, &producer); err != nil || ru.plan.Ranges == nil {
		return err
	}
	if r.cfg.DryRun {
		return r.dryRun(ru)
	}
	return r.replay(ctx, cl, producer, ru)
}

// prepare loads the state of a replay being resumed (fencing its producer
// first for a transactional target) or plans a new one. It leaves
// ru.plan.Ranges nil when there is nothing to do.
func (r *Replayer) prepare(ctx context.Context, cl *kgo.Client, ru *session, producer **kgo.Client) error {
	cfg := r.cfg
	kindName, _ := cfg.targetKind()
	if cfg.Resume != "" {
		ru.store = &stateStore{topic: cfg.StateTopic, name: cfg.Resume, cl: cl}
		st, err := ru.store.load(ctx, r.opts)
		if err != nil {
			return err
		}
		if st != nil {
			kindName = st.Spec.Target
		}
		if targets()[kindName].Transactional && !cfg.DryRun {
			// Fence the earlier run: initialising its transactional ID
			// aborts its open transaction, or waits for its commit to
			// finish. Only then is the stored state final.
			if *producer, err = r.producer(ctx, transactionalID(cfg.Resume), true); err != nil {
				return err
			}
			ru.store.cl = *producer
			if st, err = ru.store.load(ctx, r.opts); err != nil {
				return err
			}
		}
		if st != nil {
			if err := st.Spec.mismatch(cfg); err != nil {
				return err
			}
			if st.Done {
				fmt.Fprintf(r.stderr, "replay %s is already complete (%d records, %d written); nothing to do\n", cfg.Resume, st.Stats.Records, st.Stats.Written)
				return nil
			}
			st.Spec.apply(&ru.cfg)
			ru.state, ru.plan, ru.next = st, st.Plan, slices.Clone(st.Next)
			r.c.set(st.Stats)
			r.c.records.Store(doneRecords(st.Plan, st.Next))
			r.logger.Info("resuming replay", "name", cfg.Resume, "started", st.Started, "records_left", st.Plan.Records()-doneRecords(st.Plan, st.Next))
		} else if !cfg.sliceGiven() {
			return cli.FieldError("resume", "no replay named %q in %s: give a slice (--from/--to or --offsets) to start one", cfg.Resume, cfg.StateTopic)
		}
	}
	ru.kind = targets()[kindName]
	if ru.state == nil {
		p, err := plan(ctx, ru.cfg, kadm.NewClient(cl), r.logger)
		if err != nil {
			return err
		}
		if p.Records() == 0 && !cfg.AllowEmpty && !cfg.DryRun {
			return emptySliceError(ru.cfg, p)
		}
		ru.plan = p
		for _, rg := range p.Ranges {
			ru.next = append(ru.next, rg.Start)
		}
		if ru.store != nil {
			ru.state = &State{Name: cfg.Resume, Version: stateVersion, Started: time.Now().UTC(), Spec: specOf(ru.cfg), Plan: p, Next: slices.Clone(ru.next)}
		}
	}
	if ru.plan.Ranges == nil {
		ru.plan.Ranges = []Range{} // planned, if empty
	}
	if ru.kind.Transactional && *producer == nil && !cfg.DryRun {
		var err error
		if *producer, err = r.producer(ctx, transactionalID(fmt.Sprintf("%d", time.Now().UnixNano())), false); err != nil {
			return err
		}
	}
	return nil
}

// producer builds a transactional producer; fence initialises its ID at
// once (fencing any earlier producer of the ID).
func (r *Replayer) producer(ctx context.Context, txnID string, fence bool) (*kgo.Client, error) {
	cl, err := kgo.NewClient(append(slices.Clip(r.opts), producerOpts(txnID, r.cfg)...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	if fence {
		if _, _, err := cl.ProducerID(ctx); err != nil {
			cl.Close()
			return nil, fmt.Errorf("kafka: initialising transactional ID %s: %w", txnID, err)
		}
	}
	return cl, nil
}

func (r *Replayer) dryRun(ru *session) error {
	if _, err := ru.plan.WriteTo(r.stdout); err != nil {
		return err
	}
	if ru.store != nil && ru.cfg.Resume != "" && ru.state != nil && !ru.state.Started.IsZero() && doneRecords(ru.plan, ru.next) > 0 {
		_, err := fmt.Fprintf(r.stdout, "replay %s has read %d of these records; it resumes at %s\n",
			ru.cfg.Resume, doneRecords(ru.plan, ru.next), remainingOffsets(ru.plan, positionOf(ru.plan, ru.next)))
		return err
	}
	return nil
}

// doneRecords counts the offsets before next in every range.
func doneRecords(p Plan, next []int64) int64 {
	var n int64
	for i, rg := range p.Ranges {
		n += next[i] - rg.Start
	}
	return n
}

// positionOf is the position of the first range not done.
func positionOf(p Plan, next []int64) Position {
	for i, rg := range p.Ranges {
		if next[i] < rg.End {
			return Position{Range: i, Offset: next[i]}
		}
	}
	if len(p.Ranges) == 0 {
		return Position{}
	}
	last := len(p.Ranges) - 1
	return Position{Range: last, Offset: p.Ranges[last].End}
}

// emptySliceError says that the slice holds nothing, and what the topic
// does hold.
func emptySliceError(cfg Config, p Plan) error {
	var held int64
	for _, rg := range p.Ranges {
		held += rg.HighWatermark - rg.LogStart
	}
	flag := "offsets"
	if cfg.timeMode() {
		flag = "from"
	}
	return cli.FieldError(flag, "the slice (%s) holds no records on %s; the partitions read hold %d records in all (--allow-empty makes an empty slice a success)", p.Slice, p.Topic, held)
}
