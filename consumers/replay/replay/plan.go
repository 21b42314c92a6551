package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// Range is the slice of one partition a replay reads: offsets [Start, End).
type Range struct {
	Partition     int32
	Start, End    int64
	LogStart      int64 // the partition's log start offset when planned
	HighWatermark int64 // the partition's high watermark when planned
}

// Records is the number of offsets in the range: the records a replay reads
// (for --vehicle, the vehicle's records are a subset of them).
func (r Range) Records() int64 { return r.End - r.Start }

// Plan is what a replay reads, fixed before any record is read.
type Plan struct {
	Topic      string
	Partitions int32   // the topic's partition count
	Slice      string  // the slice in words
	Vehicle    string  // set when only one vehicle's records are written
	Ranges     []Range // ascending by partition
}

// Records sums the records of every range.
func (p Plan) Records() int64 {
	var n int64
	for _, r := range p.Ranges {
		n += r.Records()
	}
	return n
}

// WriteTo prints the plan as the --dry-run output.
func (p Plan) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	fmt.Fprintf(cw, "replay plan: topic %s (%d partitions), %s\n", p.Topic, p.Partitions, p.Slice)
	tw := tabwriter.NewWriter(cw, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "partition\tstart offset\tend offset\trecords\tlog start\thigh watermark\t")
	for _, r := range p.Ranges {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t\n", r.Partition, r.Start, r.End, r.Records(), r.LogStart, r.HighWatermark)
	}
	tw.Flush()
	fmt.Fprintf(cw, "records to read: %d", p.Records())
	if p.Vehicle != "" {
		// A --vehicle plan reads its partition's records but writes only the
		// vehicle's; the count is an upper bound then.
		fmt.Fprint(cw, " (an upper bound when --vehicle filters)")
	}
	_, err := fmt.Fprintln(cw)
	if err == nil {
		err = cw.err
	}
	return cw.n, err
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// PartitionFor returns the partition Kafka's default partitioner (murmur2 of
// the key, sign bit cleared, modulo the partition count) puts a vehicle's
// records in, which is where the bridge produces them.
func PartitionFor(vehicleID string, partitions int) int32 {
	p := kgo.StickyKeyPartitioner(nil).ForTopic("")
	return int32(p.Partition(&kgo.Record{Key: []byte(vehicleID)}, partitions))
}

// millisCeil is the first whole Kafka millisecond at or after t: a record
// (millisecond timestamps) is at or after t exactly when it is at or after
// this millisecond.
func millisCeil(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// plan asks the cluster where the slice starts and ends. High watermarks are
// listed first, so the plan never reaches past what the topic held then.
func plan(ctx context.Context, cfg Config, adm *kadm.Client, logger *slog.Logger) (Plan, error) {
	p := Plan{Topic: cfg.Topic, Slice: cfg.describe(), Vehicle: cfg.Vehicle}
	details, err := adm.ListTopics(ctx, cfg.Topic)
	if err != nil {
		return p, fmt.Errorf("kafka: metadata of %s: %w", cfg.Topic, err)
	}
	td, ok := details[cfg.Topic]
	if !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return p, cli.FieldError("topic", "topic %q does not exist", cfg.Topic)
	}
	if td.Err != nil {
		return p, fmt.Errorf("kafka: metadata of %s: %w", cfg.Topic, td.Err)
	}
	n := len(td.Partitions)
	if n == 0 {
		return p, fmt.Errorf("kafka: topic %s has no partitions", cfg.Topic)
	}
	p.Partitions = int32(n)

	var parts []int32
	switch {
	case cfg.Vehicle != "":
		vp := PartitionFor(cfg.Vehicle, n)
		if cfg.Partition != Unset && int32(cfg.Partition) != vp {
			return p, cli.FieldError("partition", "vehicle %s is on partition %d of %s, not %d", cfg.Vehicle, vp, cfg.Topic, cfg.Partition)
		}
		p.Slice += fmt.Sprintf(" (partition %d)", vp)
		parts = []int32{vp}
	case cfg.Partition != Unset:
		if cfg.Partition >= n {
			return p, cli.FieldError("partition", "%d does not exist: %s has partitions 0 to %d", cfg.Partition, cfg.Topic, n-1)
		}
		parts = []int32{int32(cfg.Partition)}
	default:
		for i := range n {
			parts = append(parts, int32(i))
		}
	}

	ends, err := listed(adm.ListEndOffsets(ctx, cfg.Topic))
	if err != nil {
		return p, fmt.Errorf("kafka: high watermarks of %s: %w", cfg.Topic, err)
	}
	starts, err := listed(adm.ListStartOffsets(ctx, cfg.Topic))
	if err != nil {
		return p, fmt.Errorf("kafka: log start offsets of %s: %w", cfg.Topic, err)
	}
	var afterFrom, afterTo kadm.ListedOffsets
	if cfg.timeMode() {
		from, to, err := cfg.timeRange()
		if err != nil {
			return p, err
		}
		if !from.IsZero() {
			if afterFrom, err = listed(adm.ListOffsetsAfterMilli(ctx, millisCeil(from), cfg.Topic)); err != nil {
				return p, fmt.Errorf("kafka: offsets at --from: %w", err)
			}
		}
		if !to.IsZero() {
			if afterTo, err = listed(adm.ListOffsetsAfterMilli(ctx, millisCeil(to), cfg.Topic)); err != nil {
				return p, fmt.Errorf("kafka: offsets at --to: %w", err)
			}
		}
	}

	for _, part := range parts {
		hw, ok1 := ends.Lookup(cfg.Topic, part)
		ls, ok2 := starts.Lookup(cfg.Topic, part)
		if !ok1 || !ok2 {
			return p, fmt.Errorf("kafka: no offsets listed for %s partition %d", cfg.Topic, part)
		}
		r := Range{Partition: part, LogStart: ls.Offset, HighWatermark: hw.Offset, Start: ls.Offset, End: hw.Offset}
		if o, ok := afterFrom.Lookup(cfg.Topic, part); ok {
			r.Start = o.Offset
		}
		if o, ok := afterTo.Lookup(cfg.Topic, part); ok {
			r.End = min(r.End, o.Offset)
		}
		if cfg.StartOffset != Unset {
			r.Start = cfg.StartOffset
			if r.Start < r.LogStart {
				logger.Warn("--start-offset is before the log start (older records were deleted); starting at the log start",
					"partition", part, "start_offset", cfg.StartOffset, "log_start", r.LogStart)
				r.Start = r.LogStart
			}
		}
		if cfg.EndOffset != Unset {
			r.End = cfg.EndOffset
			if r.End > r.HighWatermark {
				logger.Warn("--end-offset is past the high watermark; stopping at the high watermark (replay never waits for new data)",
					"partition", part, "end_offset", cfg.EndOffset, "high_watermark", r.HighWatermark)
				r.End = r.HighWatermark
			}
		}
		if r.Start > r.End {
			if cfg.StartOffset != Unset {
				logger.Warn("--start-offset is past the end of the range; nothing to read",
					"partition", part, "start_offset", cfg.StartOffset, "end", r.End)
			}
			r.Start = r.End
		}
		p.Ranges = append(p.Ranges, r)
	}
	sort.Slice(p.Ranges, func(i, j int) bool { return p.Ranges[i].Partition < p.Ranges[j].Partition })
	return p, nil
}

// listed returns the offsets, or the first error of a listing.
func listed(l kadm.ListedOffsets, err error) (kadm.ListedOffsets, error) {
	if err != nil {
		return nil, err
	}
	if err := l.Error(); err != nil {
		return nil, err
	}
	return l, nil
}
