package replay

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Record is one replayed Kafka record with its decoded batch.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Timestamp time.Time // the record's Kafka timestamp
	Key       []byte    // the vehicle ID
	Value     []byte    // the batch bytes as the bridge produced them
	Headers   []kgo.RecordHeader
	// Batch is the decoded batch, with --signals applied; nil for targets
	// that do not decode (Kind.Decodes false), and for a bad record given
	// to a Kind.SinkRecords target (then Invalid says why it is bad).
	Batch   *wire.Batch
	Invalid error
}

// Position is a point in a Plan: every range before Range is done, and
// Range is done up to (not including) Offset.
type Position struct {
	Range  int
	Offset int64
}

// SaveFunc records that the target's output is durable up to pos, with the
// target's own state (nil for none) that a resumed replay gets back.
type SaveFunc func(ctx context.Context, pos Position, state json.RawMessage) error

// Target is where a replay sends its records. The replay calls, from one
// goroutine, OpenRange before reading each range; Write once per record
// that passes the filters, in replay order (partitions ascending, offsets
// ascending); Commit at the end of each range, every --commit-interval and
// when it stops; and Close once, also after a failure. A target must turn
// the same records into the same output, whether or not the replay was
// stopped and resumed in between.
type Target interface {
	// OpenRange prepares range i of the plan, which the replay is about
	// to read from offset from, and returns where to read it from instead:
	// from itself, unless the target keeps its own durable progress (a
	// Parquet backfill's checkpoints) and holds the range's output up to a
	// later offset (its end when it is all written).
	OpenRange(ctx context.Context, i int, from int64) (int64, error)
	Write(ctx context.Context, rec Record) error
	// Commit makes durable what the target can without changing its
	// output, then calls save (at most once) with the position up to which
	// the output is durable. pos is the position after the last record
	// read; rangeEnd says pos is the end of its range (or of the slice),
	// where every target writes out what it holds. A target whose output
	// and progress commit together (a Kafka transaction) calls save inside
	// that commit.
	Commit(ctx context.Context, pos Position, rangeEnd bool, save SaveFunc) error
	// Close releases the target. It does not make anything durable: what
	// Commit did not cover is read again by a resumed replay.
	Close() error
}

// TargetEnv is what a target is opened with.
type TargetEnv struct {
	Config Config
	Dest   string // the --to-* flag's value
	Plan   Plan
	// State is the target's state from the last save of the replay being
	// resumed, at Resumed; nil for a new replay.
	State   json.RawMessage
	Resumed *Position
	Logger  *slog.Logger
	Stdout  io.Writer
	// Kafka builds clients for the replay's cluster (source and state).
	Kafka []kgo.Opt
	// Producer is the replay's transactional producer, for kinds that are
	// Transactional, its earlier run fenced; nil for the others.
	Producer *kgo.Client
	// Registerer takes the target's metrics; nil without --listen.
	Registerer prometheus.Registerer
}

// Kind is a target implementation in the registry.
type Kind struct {
	Flag string // the flag that selects it, e.g. "to-jsonl"
	// Decodes says whether Write needs Record.Batch; a target that forwards
	// the bytes leaves the records undecoded.
	Decodes bool
	// Transactional kinds get a transactional producer (TargetEnv.Producer)
	// and commit the replay's state in their own transactions.
	Transactional bool
	// SinkRecords kinds get the records parquet-sink would write: one that
	// does not decode comes to Write with Record.Invalid set (it takes an
	// offset in the output, as in the sink's), and a batch's vehicle is not
	// checked against the record key (the sink does not check it; with
	// --vehicle, batches of other vehicles are still left out).
	SinkRecords bool
	// KeepsProgress kinds keep their own durable progress per range,
	// found again by the range's first offset (OpenRange): a replay that
	// continues one gives the ranges' first offsets, not where it stopped.
	KeepsProgress bool
	Open          func(ctx context.Context, env TargetEnv) (Target, error)
}

// Target registry names.
const (
	TargetJSONL   = "jsonl"
	TargetTopic   = "topic"
	TargetParquet = "parquet"
)

// targets is the registry of target kinds, by name.
func targets() map[string]Kind {
	return map[string]Kind{
		TargetJSONL:   {Flag: "to-jsonl", Decodes: true, Open: openJSONL},
		TargetTopic:   {Flag: "to-topic", Decodes: false, Transactional: true, Open: openTopic},
		TargetParquet: {Flag: "to-parquet", Decodes: true, SinkRecords: true, KeepsProgress: true, Open: openParquet},
	}
}
